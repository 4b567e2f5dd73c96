/** Shared pieces of the benchmarks: the control plane, a pod-timing watcher, audit counting, stats. */
import { createReadStream } from "node:fs";
import path from "node:path";
import { createInterface } from "node:readline";
import pino from "pino";
import { down, running, up } from "../hack/testenv/controlplane.ts";
import { createKubeClient, Informer, type Pod } from "../src/kube/index.ts";

export const testenvDir =
  process.env.DEVICELET_TESTENV_DIR ?? path.resolve(import.meta.dirname, "../.testenv");

/** Ensures a control plane; returns a function that stops it if this run started it. */
export async function controlPlane(): Promise<() => Promise<void>> {
  if (await running(testenvDir)) return async () => {};
  await up({ dir: testenvDir });
  return async () => {
    await down({ dir: testenvDir });
  };
}

export interface PodTimes {
  bound?: number;
  running?: number;
}

/**
 * Watches the pods of `namespace` (as cluster-admin) and records, per pod, when the watcher first
 * saw it bound to a node and first saw it Running with Ready=True. Both tools under comparison are
 * timed by the same watcher, so its own lag cancels out.
 */
export async function watchPodTimes(namespace: string, signal: AbortSignal) {
  const kube = createKubeClient({
    kubeconfigPath: path.join(testenvDir, "kubeconfig"),
    qps: 1000,
    burst: 2000,
    logger: pino({ level: "silent" }),
  });
  const times = new Map<string, PodTimes>();
  const informer = new Informer<Pod>({
    client: kube,
    logger: pino({ level: "silent" }),
    path: `/api/v1/namespaces/${namespace}/pods`,
  });
  const see = (pod: Pod) => {
    const name = pod.metadata?.name ?? "";
    const t = times.get(name) ?? {};
    const now = performance.now();
    if (t.bound === undefined && pod.spec?.nodeName) t.bound = now;
    const ready = pod.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True");
    if (t.running === undefined && pod.status?.phase === "Running" && ready) t.running = now;
    times.set(name, t);
  };
  informer.onAdd(see);
  informer.onUpdate(see);
  void informer.start(signal);
  await informer.ready;
  return {
    times,
    runningCount: () => [...times.values()].filter((t) => t.running !== undefined).length,
  };
}

export async function waitUntil(what: string, check: () => boolean | Promise<boolean>, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export const percentile = (values: number[], p: number) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? Number.NaN;
};

/** API requests `username` made between two wall-clock times, by verb, from the harness audit log. */
export async function auditRequests(username: string, fromMs: number, toMs: number) {
  const byVerb: Record<string, number> = {};
  let total = 0;
  const lines = createInterface({ input: createReadStream(path.join(testenvDir, "audit.log")) });
  for await (const line of lines) {
    if (!line.includes(`"username":"${username}"`)) continue;
    const e = JSON.parse(line) as {
      stage: string;
      verb: string;
      requestReceivedTimestamp: string;
      user: { username: string };
    };
    if (e.stage !== "ResponseComplete" || e.user.username !== username) continue;
    const t = Date.parse(e.requestReceivedTimestamp);
    if (t < fromMs || t > toMs) continue;
    byVerb[e.verb] = (byVerb[e.verb] ?? 0) + 1;
    total++;
  }
  return { total, byVerb };
}

/** Peak resident memory of a process, from /proc (VmHWM), in MiB. */
export async function peakRssMiB(pid: number): Promise<number> {
  const { readFile } = await import("node:fs/promises");
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  const kb = Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? Number.NaN);
  return Math.round((kb / 1024) * 10) / 10;
}
