/** Shared pieces of the benchmarks: the control plane, a pod-timing watcher, audit counting, stats. */
import { execFile, execFileSync, spawn, type ChildProcess } from "node:child_process";
import {
  copyFileSync,
  createReadStream,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  rmdirSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { stringify } from "yaml";
import { down, readState, running, up } from "../src/testing/controlplane/controlplane.ts";
import { Worker } from "node:worker_threads";
import type { PodTimesMessage, PodTimesWorkerData } from "./pod-times.worker.ts";
import { onInterrupt } from "./interrupt.ts";
import { cpuSeconds } from "./usage.ts";
import { BenchApi, inPool } from "./api.ts";
import { testenvDir } from "./testenv.ts";

const repoRoot = path.resolve(import.meta.dirname, "..");

export { testenvDir };

/**
 * Ensures a control plane; returns a function that stops it if this run started it. One this run
 * started is also stopped when the bench is told to stop (bench/interrupt.ts), from its first
 * daemon on: `up` records each as it starts it.
 */
export async function controlPlane(): Promise<() => Promise<void>> {
  if (await running(testenvDir)) return async () => {};
  const forget = onInterrupt("the control plane", () => down({ dir: testenvDir }));
  try {
    await up({ dir: testenvDir });
  } catch (err) {
    forget();
    throw err;
  }
  return async () => {
    forget();
    await down({ dir: testenvDir });
  };
}

export interface PodTimes {
  bound?: number;
  running?: number;
}

/** Now, in epoch milliseconds with sub-millisecond precision: comparable with the watcher thread's times. */
export const epochNow = () => performance.timeOrigin + performance.now();

/**
 * Watches the pods of `namespace` (as cluster-admin) and records, per pod, when the watcher first
 * saw it bound to a node and first saw it Running with Ready=True ({@link epochNow} times). Both
 * tools under comparison are timed by the same watcher, so its own lag cancels out; it runs on a
 * worker thread (pod-times.worker.ts), so the simulated devices' work in this process does not
 * delay what it sees.
 */
export async function watchPodTimes(namespace: string, signal: AbortSignal) {
  const data: PodTimesWorkerData = { kubeconfigPath: path.join(testenvDir, "kubeconfig"), namespace };
  const worker = new Worker(new URL("./pod-times.worker.ts", import.meta.url), { workerData: data });
  const times = new Map<string, PodTimes>();
  let runningCount = 0;
  const ready = new Promise<void>((resolve, reject) => {
    worker.on("message", (message: PodTimesMessage) => {
      if (message === "ready") {
        resolve();
        return;
      }
      const t = times.get(message.pod) ?? {};
      if (message.bound !== undefined) t.bound = message.bound;
      if (message.running !== undefined) {
        t.running = message.running;
        runningCount++;
      }
      times.set(message.pod, t);
    });
    worker.once("error", reject);
  });
  signal.addEventListener("abort", () => worker.postMessage("stop"), { once: true });
  await ready;
  return { times, runningCount: () => runningCount };
}

export async function waitUntil(
  what: string | (() => string),
  check: () => boolean | Promise<boolean>,
  timeoutMs: number,
  intervalMs = 100,
) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline)
      throw new Error(`timed out waiting for ${typeof what === "string" ? what : what()}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

export const percentile = (values: number[], p: number) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? Number.NaN;
};

/**
 * API requests `username` made between two wall-clock times, by verb and by request (verb and
 * resource, e.g. `patch pods/status`), from the harness audit log.
 */
export async function auditRequests(username: string, fromMs: number, toMs: number) {
  const byVerb: Record<string, number> = {};
  const byRequest: Record<string, number> = {};
  let total = 0;
  const lines = createInterface({ input: createReadStream(path.join(testenvDir, "audit.log")) });
  for await (const line of lines) {
    if (!line.includes(`"username":"${username}"`)) continue;
    const e = JSON.parse(line) as {
      stage: string;
      verb: string;
      requestReceivedTimestamp: string;
      user: { username: string };
      objectRef?: { resource?: string; subresource?: string };
    };
    if (e.stage !== "ResponseComplete" || e.user.username !== username) continue;
    const t = Date.parse(e.requestReceivedTimestamp);
    if (t < fromMs || t > toMs) continue;
    byVerb[e.verb] = (byVerb[e.verb] ?? 0) + 1;
    const ref = e.objectRef;
    const request = `${e.verb} ${ref?.resource ?? ""}${ref?.subresource ? `/${ref.subresource}` : ""}`;
    byRequest[request] = (byRequest[request] ?? 0) + 1;
    total++;
  }
  return { total, byVerb, byRequest };
}

/**
 * Per pod of `namespace`, by the API server's clock (audit log, completion times in epoch ms): when
 * the scheduler bound it, and every status write `username` made to it, oldest first.
 */
export async function auditPodTimeline(namespace: string, username: string) {
  const bound = new Map<string, number>();
  const statusWrites = new Map<string, number[]>();
  const lines = createInterface({ input: createReadStream(path.join(testenvDir, "audit.log")) });
  for await (const line of lines) {
    if (!line.includes(`"namespace":"${namespace}"`) || !line.includes('"ResponseComplete"')) continue;
    const e = JSON.parse(line) as {
      verb: string;
      stageTimestamp: string;
      user: { username: string };
      objectRef?: { resource?: string; subresource?: string; name?: string };
      responseStatus?: { code?: number };
    };
    const ref = e.objectRef;
    const code = e.responseStatus?.code ?? 0;
    if (ref?.resource !== "pods" || ref.name === undefined || code < 200 || code > 299) continue;
    const at = Date.parse(e.stageTimestamp);
    if (ref.subresource === "binding" && e.verb === "create") bound.set(ref.name, at);
    else if (ref.subresource === "status" && e.user.username === username) {
      const writes = statusWrites.get(ref.name);
      if (writes) writes.push(at);
      else statusWrites.set(ref.name, [at]);
    }
  }
  return { bound, statusWrites };
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

/**
 * kubectl as cluster-admin of the benchmark's control plane, without blocking this process: use it
 * whenever simulated devices share the process. A synchronous kubectl that ran for minutes (5,000
 * pods created one by one) stopped every simulated connection from answering the broker, which
 * then dropped them all for missing their keepalives: the devices went lost, rightly, and the
 * storm measured the bench.
 */
export function kubectlAsync(args: string[], input?: string): Promise<string> {
  const state = readState(testenvDir);
  if (!state) return Promise.reject(new Error("no control plane"));
  return new Promise((resolve, reject) => {
    const child = execFile(
      path.join(state.binDir, "kubectl"),
      [`--kubeconfig=${path.join(testenvDir, "kubeconfig")}`, ...args],
      { encoding: "utf8", maxBuffer: 256 * 1024 * 1024 },
      (err, stdout, stderr) => {
        if (err) reject(new Error(`kubectl ${args.join(" ")}: ${stderr.trim() || err.message}`));
        else resolve(stdout);
      },
    );
    child.stdin?.end(input ?? "");
  });
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
  /**
   * The same by the API server's clock (audit log): from the scheduler's binding to the status
   * write after which the watcher saw the pod Running, so the watch's delivery to the watcher is
   * left out (and to devicelet kept in). The audit log's timestamps are the API server's.
   */
  serverP50Ms: number;
  serverP99Ms: number;
  apiRequestsPerPod: number;
  /** Of those, writes (create, update, patch, delete) per pod. */
  apiWritesPerPod: number;
  apiRequestsByVerb: Record<string, number>;
  apiRequestsByRequest: Record<string, number>;
  /**
   * The slowest 1 % of starts, slowest first: when the watcher saw each bound (seconds from the
   * apply) and how long it took to Running. Tells a cold start from a stall in the middle.
   */
  slowest: { pod: string; boundAtSeconds: number; ms: number }[];
  /** When the burst's manifest was applied (ISO time), to read the slowest pods up in the audit log. */
  startedAt: string;
}

const WRITE_VERBS = new Set(["create", "update", "patch", "delete", "deletecollection"]);

/** How many of the requests counted by verb were writes. */
export const writesOf = (byVerb: Record<string, number>) =>
  Object.entries(byVerb).reduce((n, [verb, count]) => n + (WRITE_VERBS.has(verb) ? count : 0), 0);

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
  const start = epochNow();
  // Not blocking: this process runs the simulated devices too.
  await kubectlAsync(["apply", "-f", "-"], o.manifest);
  await waitUntil(`${o.pods} pods Running`, () => watcher.runningCount() >= o.pods, 15 * 60_000);
  const end = epochNow();
  const endWall = Date.now();
  controller.abort();
  const starts = [...watcher.times.entries()].flatMap(([pod, t]) =>
    t.bound !== undefined && t.running !== undefined
      ? [{ pod, bound: t.bound, ms: t.running - t.bound }]
      : [],
  );
  const latencies = starts.map((s) => s.ms);
  const slowest = starts
    .sort((a, b) => b.ms - a.ms)
    .slice(0, Math.max(1, Math.ceil(starts.length / 100)))
    .map((s) => ({
      pod: s.pod,
      boundAtSeconds: Math.round((s.bound - start) / 100) / 10,
      ms: Math.round(s.ms),
    }));
  // The audit log is written in batches of about a second.
  await new Promise((r) => setTimeout(r, 2_500));
  const api = await auditRequests(o.username, startWall - 1_000, endWall + 500);
  const timeline = await auditPodTimeline(o.namespace, o.username);
  const server = [...watcher.times.entries()].flatMap(([pod, t]) => {
    const bound = timeline.bound.get(pod);
    // The write that made it Running: the last one before the watcher saw it (plus clock slack).
    const written = (timeline.statusWrites.get(pod) ?? []).filter(
      (w) => t.running !== undefined && w <= t.running + 50,
    );
    const last = written.at(-1);
    return bound === undefined || last === undefined ? [] : [last - bound];
  });
  return {
    allRunningSeconds: Math.round((end - start) / 10) / 100,
    p50Ms: Math.round(percentile(latencies, 50)),
    p99Ms: Math.round(percentile(latencies, 99)),
    serverP50Ms: Math.round(percentile(server, 50)),
    serverP99Ms: Math.round(percentile(server, 99)),
    apiRequestsPerPod: Math.round((api.total / o.pods) * 100) / 100,
    apiWritesPerPod: Math.round((writesOf(api.byVerb) / o.pods) * 100) / 100,
    apiRequestsByVerb: api.byVerb,
    apiRequestsByRequest: api.byRequest,
    slowest,
    startedAt: new Date(startWall).toISOString(),
  };
}

/**
 * Node.js flags for every devicelet a bench starts, from `BENCH_DEVICELET_NODE_FLAGS` (space
 * separated), e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof` for a CPU profile written when it stops.
 */
const deviceletNodeFlags = (process.env.BENCH_DEVICELET_NODE_FLAGS ?? "").split(/\s+/).filter(Boolean);

/** `512Mi`, `1Gi`, `1.5Gi` or plain bytes, in bytes; throws on anything else. */
export function parseMemoryQuantity(text: string): number {
  const m = /^(\d+(?:\.\d+)?)(Ki|Mi|Gi)?$/.exec(text.trim());
  if (!m) throw new Error(`BENCH_MEMORY_LIMIT: "${text}" is not a memory size such as 512Mi or 1Gi`);
  const unit = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30 }[m[2] ?? ""] ?? 1;
  return Math.round(Number(m[1]) * unit);
}

/**
 * `BENCH_MEMORY_LIMIT` (e.g. `512Mi`, the chart's default limit): each devicelet a bench starts
 * runs in a memory cgroup of that size, as in a container with that limit. Node.js sizes V8's
 * heap from it (259 MiB of heap under 512Mi), so the bench shows whether a fleet fits the limit:
 * past it devicelet dies of "JavaScript heap out of memory", or the kernel's OOM killer ends it.
 * Needs a writable cgroup memory controller (root, cgroup v1 or v2).
 */
const memoryLimit = process.env.BENCH_MEMORY_LIMIT
  ? parseMemoryQuantity(process.env.BENCH_MEMORY_LIMIT)
  : undefined;

/** A new memory cgroup limited to `bytes`, without swap: the file to write a pid to, and its removal. */
function memoryCgroup(bytes: number): { procs: string; remove: () => void } {
  const name = `devicelet-bench-${process.pid}-${Date.now()}`;
  const v1 = "/sys/fs/cgroup/memory";
  const unified = !existsSync(v1);
  const dir = unified ? path.join("/sys/fs/cgroup", name) : path.join(v1, name);
  try {
    mkdirSync(dir);
    if (unified) {
      writeFileSync(path.join(dir, "memory.max"), String(bytes));
      if (existsSync(path.join(dir, "memory.swap.max")))
        writeFileSync(path.join(dir, "memory.swap.max"), "0");
    } else {
      writeFileSync(path.join(dir, "memory.limit_in_bytes"), String(bytes));
      if (existsSync(path.join(dir, "memory.memsw.limit_in_bytes")))
        writeFileSync(path.join(dir, "memory.memsw.limit_in_bytes"), String(bytes));
    }
  } catch (err) {
    throw new Error(
      `BENCH_MEMORY_LIMIT needs a writable cgroup memory controller; cannot set up ${dir}: ${(err as Error).message}`,
      { cause: err },
    );
  }
  return {
    procs: path.join(dir, "cgroup.procs"),
    remove: () => {
      try {
        rmdirSync(dir);
      } catch {
        // Still in use by a process that outlived the bench's own: the folder is named after it.
      }
    },
  };
}

/**
 * Builds the devicelet command into `root` as the image lays it out (`hack/image/build.sh`):
 * `bin/devicelet.js` beside the compiled `dist/`, which it runs for want of the sources beside it.
 * Returns the command's path.
 */
export function buildDeviceletBin(root: string): string {
  rmSync(root, { recursive: true, force: true });
  mkdirSync(path.join(root, "bin"), { recursive: true });
  execFileSync(
    process.execPath,
    [
      path.join(repoRoot, "node_modules/typescript/bin/tsc"),
      "-p",
      path.join(repoRoot, "tsconfig.build.json"),
      "--outDir",
      path.join(root, "dist"),
    ],
    { stdio: "inherit" },
  );
  copyFileSync(path.join(repoRoot, "bin/devicelet.js"), path.join(root, "bin/devicelet.js"));
  copyFileSync(path.join(repoRoot, "package.json"), path.join(root, "package.json"));
  // Dependencies resolve from there wherever the harness directory is (DEVICELET_TESTENV_DIR).
  symlinkSync(path.join(repoRoot, "node_modules"), path.join(root, "node_modules"));
  return path.join(root, "bin/devicelet.js");
}

let builtBin: string | undefined;

/**
 * The devicelet command every bench starts: built from the checkout once per bench process into
 * the harness directory, so a bench measures the code as last edited, in the form that ships.
 * Run from the TypeScript sources instead, Node.js loads its type stripper, and devicelet idled at
 * 146 to 162 MiB of RSS against 127 to 128 MiB compiled (one mock node, 2026-12-05).
 */
export function deviceletBin(): string {
  builtBin ??= buildDeviceletBin(path.join(testenvDir, "bench-build"));
  return builtBin;
}

/**
 * Starts `devicelet run` with `config` (written to a temporary folder) as a child process, with
 * `nodeFlags` for Node.js besides `BENCH_DEVICELET_NODE_FLAGS`, in a memory cgroup when
 * `BENCH_MEMORY_LIMIT` asks for one (the child's pid is devicelet's either way).
 */
export function spawnDevicelet(
  config: object,
  nodeFlags: readonly string[] = [],
): { child: ChildProcess; logFile: string } {
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
  const command = [
    process.execPath,
    ...deviceletNodeFlags,
    ...nodeFlags,
    deviceletBin(),
    "run",
    "--config",
    configFile,
  ];
  if (memoryLimit === undefined) {
    const [file = "", ...args] = command;
    return { child: spawn(file, args, { stdio: ["ignore", out, out] }), logFile };
  }
  // The shell joins the cgroup and then becomes devicelet (exec, same pid): Node.js reads the
  // limit as it starts.
  const cgroup = memoryCgroup(memoryLimit);
  console.log(
    `devicelet runs in a memory cgroup of ${Math.round(memoryLimit / 2 ** 20)} MiB (BENCH_MEMORY_LIMIT)`,
  );
  const child = spawn("/bin/sh", ["-c", 'echo $$ > "$0" && exec "$@"', cgroup.procs, ...command], {
    stdio: ["ignore", out, out],
  });
  child.once("exit", cgroup.remove);
  return { child, logFile };
}

/**
 * Waits until at least `count` nodes carry `selector` and are Ready: a node that exists but has
 * not said Ready yet is still registering, and its writes would count towards what comes next.
 * Reads the API server's table of the nodes (one short row each), not the nodes themselves: at
 * 5,000 nodes a poll of the whole objects each second had kubectl decode all of them each time,
 * on the two cores the registration it measures needs. Polls less often the more nodes there are.
 */
export async function waitForNodes(selector: string, count: number, timeoutMs = 300_000) {
  let seen = 0;
  await waitUntil(
    () => `${count} nodes ${selector} Ready (last seen: ${String(seen)})`,
    async () => {
      seen = tableRows(await kubectlAsync(["get", "nodes", "-l", selector, "--no-headers"])).filter((row) =>
        (row[1] ?? "").split(",").includes("Ready"),
      ).length;
      return seen >= count;
    },
    timeoutMs,
    pollMs(count),
  );
}

/** A poll every second up to 2,000 objects, then half a second more per 1,000, at most 5 s. */
export const pollMs = (objects: number) => Math.min(5_000, Math.max(1_000, objects / 2));

/** The rows of a `kubectl get --no-headers` table, each split into its columns. */
export const tableRows = (table: string) =>
  table
    .split("\n")
    .filter((line) => line.trim() !== "")
    .map((line) => line.trim().split(/\s+/));

/** The label that tells a storm's first pods ("1") from their replacements ("2"). */
const STORM_VERSION_LABEL = "devicelet.dev/storm-version";

/** What a reconnect storm measured (see {@link measureStorm}). */
export interface StormResult {
  devices: number;
  allAppliedSeconds: number;
  allRunningSeconds: number;
  /** From the reconnect to each new pod Running, as the watcher saw it. */
  runningP50Seconds: number;
  runningP99Seconds: number;
  /** What `username` asked the API server from the reconnect until every new pod ran. */
  apiRequestsByRequest?: Record<string, number>;
  /** The queued change applied per device: must be exactly 1. */
  changesPerDevice: { min: number; max: number };
  /**
   * Documents applied per device: the queued change, then the one that drops the tombstone the
   * device confirmed (it changes nothing the device runs).
   */
  documentsPerDevice: { min: number; max: number; p50: number };
}

/**
 * A reconnect storm over `sim`'s devices (each a node named after its id): one pod per device,
 * pinned by `nodeName`, runs; every device goes offline; each pod is deleted and a new one (another
 * name, CONFIG_VERSION 2) is created on the same device, so each device has a queued change (a
 * tombstone and a new pod; the old pod stays Terminating until its device confirms). Once
 * `queued()` says devicelet has sent every change, all devices reconnect at once. Times until every
 * device applied its change and every new pod is Running, as one watcher sees. `reconnecting` runs
 * just before the reconnect (e.g. to take counters). Bare pods rather than a Deployment: a
 * Recreate rollout would wait for the old pods to be gone, which they are not while their devices
 * are away, and a surge would need room for two pods per device.
 */
export async function measureStorm(o: {
  namespace: string;
  /** Whose API requests to count from the audit log over the storm; none when absent. */
  username?: string;
  sim: { readonly devices: ReadonlyMap<string, StormDevice> };
  queued: () => boolean | Promise<boolean>;
  reconnecting?: () => void | Promise<void>;
}): Promise<StormResult> {
  const devices = [...o.sim.devices.values()];
  const count = devices.length;
  const controller = new AbortController();
  const podsPath = `/api/v1/namespaces/${o.namespace}/pods`;
  const pod = (d: StormDevice, version: string) => ({
    apiVersion: "v1",
    kind: "Pod",
    metadata: {
      name: `${d.id}-v${version}`,
      namespace: o.namespace,
      labels: { [STORM_VERSION_LABEL]: version },
    },
    spec: {
      nodeName: d.id,
      tolerations: [{ key: "virtual-kubelet.io/provider", operator: "Exists", effect: "NoSchedule" }],
      terminationGracePeriodSeconds: 1,
      containers: [
        {
          name: "app",
          image: "example/sensor:1.0",
          command: ["/bin/sensor"],
          env: [{ name: "CONFIG_VERSION", value: version }],
        },
      ],
    },
  });
  // Through the API, STORM_WRITES at a time. kubectl sends one object after another: four of them
  // need some seven minutes for 5,000 creates at a third of a second each (the API server's pace
  // for devicelet's node creates while 5,000 devices registered), and a storm has three such rounds.
  const kube = BenchApi.admin();
  const each = (task: (d: StormDevice) => Promise<void>) =>
    inPool(count, STORM_WRITES, (i) => task(devices[i] as StormDevice));
  try {
    await kube.createNamespace(o.namespace);
    const watcher = await watchPodTimes(o.namespace, controller.signal);
    await each((d) => kube.create(podsPath, pod(d, "1")));
    await waitUntil("first pods Running", () => watcher.runningCount() >= count, 20 * 60_000);
    const applies = new Map(devices.map((d) => [d.id, d.applies]));
    const changes = new Map(devices.map((d) => [d.id, d.changes]));

    await Promise.all(devices.map((d) => d.goOffline()));
    // Each pod's own grace period, as `kubectl delete` does.
    await each((d) => kube.delete(`${podsPath}/${d.id}-v1`));
    await each((d) => kube.create(podsPath, pod(d, "2")));
    await waitUntil("every queued change sent", o.queued, 20 * 60_000, 2_000);
    await o.reconnecting?.();

    const start = epochNow();
    const startWall = Date.now();
    await Promise.all(devices.map((d) => d.goOnline()));
    await waitUntil(
      "every device applied its queued change",
      () => devices.every((d) => d.applies > (applies.get(d.id) ?? 0)),
      20 * 60_000,
    );
    const appliedSeconds = (epochNow() - start) / 1000;
    // The watcher records each pod's first Running: the first pods plus the new ones.
    // (Polling with kubectl here would itself eat the two cores the system under test needs.)
    await waitUntil("every new pod Running", () => watcher.runningCount() >= 2 * count, 20 * 60_000);
    const runningSeconds = (epochNow() - start) / 1000;
    const endWall = Date.now();
    const newRunning = devices.flatMap((d) => {
      const running = watcher.times.get(`${d.id}-v2`)?.running;
      return running === undefined ? [] : [(running - start) / 1000];
    });
    // Let any duplicate arrive before counting (and the audit log catch up, in batches of ~1 s).
    await new Promise((r) => setTimeout(r, 3_000));
    const api = o.username ? await auditRequests(o.username, startWall, endWall + 500) : undefined;
    const documents = devices.map((d) => d.applies - (applies.get(d.id) ?? 0));
    const changed = devices.map((d) => d.changes - (changes.get(d.id) ?? 0));
    return {
      devices: count,
      allAppliedSeconds: Math.round(appliedSeconds * 100) / 100,
      allRunningSeconds: Math.round(runningSeconds * 100) / 100,
      runningP50Seconds: Math.round(percentile(newRunning, 50) * 100) / 100,
      runningP99Seconds: Math.round(percentile(newRunning, 99) * 100) / 100,
      ...(api ? { apiRequestsByRequest: api.byRequest } : {}),
      changesPerDevice: { min: Math.min(...changed), max: Math.max(...changed) },
      documentsPerDevice: {
        min: Math.min(...documents),
        max: Math.max(...documents),
        p50: percentile(documents, 50),
      },
    };
  } finally {
    controller.abort();
    await kube.close();
  }
}

/** Creates and deletes of a storm's pods in flight at once. */
const STORM_WRITES = 16;

/** What {@link measureStorm} uses of a simulated device. */
export interface StormDevice {
  readonly id: string;
  readonly applies: number;
  readonly changes: number;
  goOffline(): Promise<void>;
  goOnline(): Promise<void>;
}

/**
 * How many pods of `namespace` are bound, not being deleted, and of storm version `version` (the
 * label {@link measureStorm} gives them). The API server selects and tabulates them: the whole
 * pods (10,000 at a 5,000-device storm) every two seconds, parsed in this process, held up the
 * simulated devices that share its event loop.
 */
export async function boundPodsOfVersion(namespace: string, version: string): Promise<number> {
  const table = await kubectlAsync([
    "get",
    "pods",
    "-n",
    namespace,
    "-l",
    `${STORM_VERSION_LABEL}=${version}`,
    "--field-selector",
    "spec.nodeName!=",
    "--no-headers",
  ]);
  // NAME READY STATUS RESTARTS AGE: a pod being deleted says Terminating.
  return tableRows(table).filter((row) => row[2] !== "Terminating").length;
}

/** The harness control plane's processes by name (etcd, kube-apiserver, ...), from its state file. */
export function controlPlanePids(): Record<string, number> {
  const state = readState(testenvDir);
  if (!state) throw new Error(`no control plane recorded in ${testenvDir}`);
  return Object.fromEntries(state.daemons.map((d) => [d.name, d.pid]));
}

/**
 * Waits until the control plane has used under `maxCores` of CPU over a `windowMs` window (or
 * `timeoutMs` passed) and returns the seconds waited. After one tool's run the API server, etcd
 * and the controllers still clean up (a 5,000-pod run left them twice as slow to answer for half a
 * minute): the next tool measured meanwhile would pay for the first one's run.
 */
export async function waitForQuietControlPlane(
  o: { maxCores?: number; windowMs?: number; timeoutMs?: number } = {},
): Promise<number> {
  const { maxCores = 0.3, windowMs = 2_000, timeoutMs = 90_000 } = o;
  const pids = Object.values(controlPlanePids());
  const used = () => pids.reduce((sum, pid) => sum + cpuSeconds(pid), 0);
  const start = Date.now();
  for (;;) {
    const before = used();
    await new Promise((resolve) => setTimeout(resolve, windowMs));
    if ((used() - before) / (windowMs / 1000) < maxCores || Date.now() - start >= timeoutMs) break;
  }
  return Math.round((Date.now() - start) / 100) / 10;
}
