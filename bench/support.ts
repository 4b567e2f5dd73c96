/** Shared pieces of the benchmarks: the control plane, a pod-timing watcher, audit counting, stats. */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { createReadStream, mkdtempSync, openSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import pino from "pino";
import { stringify } from "yaml";
import { down, readState, running, up } from "../src/testing/controlplane/controlplane.ts";
import { createKubeClient, Informer, type Pod } from "../src/kube/index.ts";

const repoRoot = path.resolve(import.meta.dirname, "..");

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

export async function waitUntil(
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs: number,
  intervalMs = 100,
) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
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

/** Synchronous kubectl as cluster-admin of the benchmark's control plane. */
export function kubectl(args: string[], input?: string): string {
  const state = readState(testenvDir);
  if (!state) throw new Error("no control plane");
  return execFileSync(
    path.join(state.binDir, "kubectl"),
    [`--kubeconfig=${path.join(testenvDir, "kubeconfig")}`, ...args],
    {
      input,
      encoding: "utf8",
      maxBuffer: 256 * 1024 * 1024,
    },
  );
}

/** A Deployment of `replicas` one-container pods pinned to nodes by `nodeSelector`. */
export function burstDeployment(o: {
  namespace: string;
  replicas: number;
  nodeSelector: Record<string, string>;
  tolerationKey: string;
  env?: Record<string, string>;
  name?: string;
}): string {
  return stringify({
    apiVersion: "apps/v1",
    kind: "Deployment",
    metadata: { name: o.name ?? "burst", namespace: o.namespace },
    spec: {
      replicas: o.replicas,
      // Recreate: a change replaces every pod at once, as a fleet-wide config push does.
      strategy: { type: "Recreate" },
      selector: { matchLabels: { app: o.name ?? "burst" } },
      template: {
        metadata: { labels: { app: o.name ?? "burst" } },
        spec: {
          nodeSelector: o.nodeSelector,
          tolerations: [{ key: o.tolerationKey, operator: "Exists", effect: "NoSchedule" }],
          terminationGracePeriodSeconds: 1,
          containers: [
            {
              name: "app",
              image: "example/sensor:1.0",
              command: ["/bin/sensor"],
              env: Object.entries(o.env ?? {}).map(([name, value]) => ({ name, value })),
            },
          ],
        },
      },
    },
  });
}

export interface BurstResult {
  allRunningSeconds: number;
  p50Ms: number;
  p99Ms: number;
  apiRequestsPerPod: number;
  apiRequestsByVerb: Record<string, number>;
}

/**
 * Creates `namespace`, applies `manifest`, and times until `pods` pods are Running and Ready as one
 * watcher sees them; API requests by `username` come from the audit log over the same window.
 */
export async function measureBurst(o: {
  username: string;
  namespace: string;
  manifest: string;
  pods: number;
}): Promise<BurstResult> {
  const controller = new AbortController();
  kubectl(["create", "namespace", o.namespace]);
  const watcher = await watchPodTimes(o.namespace, controller.signal);
  const startWall = Date.now();
  const start = performance.now();
  kubectl(["apply", "-f", "-"], o.manifest);
  await waitUntil(`${o.pods} pods Running`, () => watcher.runningCount() >= o.pods, 15 * 60_000);
  const end = performance.now();
  const endWall = Date.now();
  controller.abort();
  const latencies = [...watcher.times.values()].flatMap((t) =>
    t.bound !== undefined && t.running !== undefined ? [t.running - t.bound] : [],
  );
  // The audit log is written in batches of about a second.
  await new Promise((r) => setTimeout(r, 2_500));
  const api = await auditRequests(o.username, startWall - 1_000, endWall + 500);
  return {
    allRunningSeconds: Math.round((end - start) / 10) / 100,
    p50Ms: Math.round(percentile(latencies, 50)),
    p99Ms: Math.round(percentile(latencies, 99)),
    apiRequestsPerPod: Math.round((api.total / o.pods) * 100) / 100,
    apiRequestsByVerb: api.byVerb,
  };
}

/** Starts `devicelet run` with `config` (written to a temporary folder) as a child process. */
export function spawnDevicelet(config: object): { child: ChildProcess; logFile: string } {
  const dir = mkdtempSync(path.join(os.tmpdir(), "devicelet-bench-"));
  const configFile = path.join(dir, "config.yaml");
  // Benchmarks measure pods and nodes: no kubelet API, health on a free loopback port, unless asked.
  writeFileSync(
    configFile,
    stringify({
      kubelet: { serve: false },
      health: { port: 0, bindAddress: "127.0.0.1" },
      metrics: { port: 0, bindAddress: "127.0.0.1" },
      ...config,
    }),
  );
  const logFile = path.join(dir, "devicelet.log");
  const out = openSync(logFile, "a");
  const child = spawn(
    process.execPath,
    [path.join(repoRoot, "bin/devicelet.js"), "run", "--config", configFile],
    {
      stdio: ["ignore", out, out],
    },
  );
  return { child, logFile };
}

/** Waits until at least `count` nodes carry `selector`. */
export async function waitForNodes(selector: string, count: number, timeoutMs = 300_000) {
  await waitUntil(
    `${count} nodes ${selector}`,
    () =>
      kubectl(["get", "nodes", "-l", selector, "-o", "name"]).trim().split("\n").filter(Boolean).length >=
      count,
    timeoutMs,
  );
}
