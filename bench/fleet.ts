/**
 * A tool under benchmark that runs pods on a fleet of nodes (devicelet with the mock provider
 * here, KWOK in kwok.ts), and the fast way to load it: bare pods with `spec.nodeName` already set,
 * spread round-robin over the fleet's nodes and created straight through the API with many
 * requests in flight, so neither the scheduler nor the controller-manager sets the pace.
 *
 *   const api = BenchApi.admin();
 *   const fleet = await startMockDevicelet({ api, id, nodes: 100, podsPerNode: 110 });
 *   const run = await runBoundPods({ api, fleet, namespace, pods: 5000 });
 *   await fleet.stop();
 *   await removeBoundPods({ api, namespace, pods: 5000 });
 *   await fleet.removeNodes();
 */
import type { ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { NODE_LEASE_NAMESPACE } from "../src/kube/client.ts";
import { freePort } from "../src/testing/controlplane/process.ts";
import { parsePrometheus, sampleSum } from "../test/support/prometheus.ts";
import type { KubeObject, Pod } from "../src/kube/types.ts";
import { inPool, type BenchApi } from "./api.ts";
import { kubectl, percentile, spawnDevicelet, testenvDir, waitUntil } from "./support.ts";
import { cpuSeconds } from "./usage.ts";
import { follow, NodeReadiness, PodRunningTimes } from "./watch.ts";

/** The tools a side-by-side bench runs, in this order, from env `variable` (default `devicelet,kwok`). */
export function toolsFrom(variable: string): Fleet["tool"][] {
  return (process.env[variable] ?? "devicelet,kwok").split(",").map((tool) => {
    if (tool !== "devicelet" && tool !== "kwok") throw new Error(`${variable}: unknown tool ${tool}`);
    return tool;
  });
}

/**
 * Measures each tool in turn with `measure`, printing each row as it comes; returns the rows and
 * each tool's own row (undefined when it did not run: no ratios then).
 */
export async function measureEach<R extends { tool: string }>(
  tools: readonly Fleet["tool"][],
  measure: (tool: Fleet["tool"]) => Promise<R>,
): Promise<{ rows: R[]; devicelet: R | undefined; kwok: R | undefined }> {
  const rows: R[] = [];
  for (const tool of tools) {
    const row = await measure(tool);
    console.log(`${tool}:`, JSON.stringify(row));
    rows.push(row);
  }
  const of = (tool: Fleet["tool"]) => rows.find((r) => r.tool === tool);
  return { rows, devicelet: of("devicelet"), kwok: of("kwok") };
}

/** Label every benchmark node carries, with the run's id (KWOK's: `<id>-kwok`). */
export const BENCH_LABEL = "devicelet.dev/bench";
/** Requests in flight when creating or deleting in bulk (env BENCH_CONCURRENCY). */
export const concurrency = Number(process.env.BENCH_CONCURRENCY ?? 48);
/**
 * Pods created per second at most (BENCH_CREATE_QPS; default 0, as fast as `concurrency` allows).
 * At 5,000 nodes the Lease renewals alone are 500 writes a second: an unpaced create burst on the
 * same two cores leaves the API server no room for them, whichever tool runs the nodes.
 */
export const createQps = Number(process.env.BENCH_CREATE_QPS ?? 0);

export interface Fleet {
  readonly tool: "devicelet" | "kwok";
  /** The tool's API user, as the audit log names it. */
  readonly username: string;
  readonly pid: number;
  /** `BENCH_LABEL=<value>`: selects exactly this fleet's nodes. */
  readonly nodeSelector: string;
  readonly nodeNames: readonly string[];
  /** The key of the NoSchedule taint on the nodes, tolerated by the benchmark's pods. */
  readonly tolerationKey: string;
  /** Followed from before the nodes were Ready until {@link stop}. */
  readonly nodes: NodeReadiness;
  /** Whether the tool's process still runs. */
  alive(): boolean;
  /**
   * devicelet only: the most JavaScript heap in use seen so far (sampled from its metrics every
   * 2 s, garbage not yet collected included) and the heap's limit, in MiB.
   */
  heap?(): { peakUsedMiB: number; limitMiB: number };
  /** devicelet only: its JavaScript heap now, from one scrape of its metrics. */
  heapNow?(): Promise<HeapNow>;
  /** Once it has exited: its exit code or signal and the end of its log, for the error that says so. */
  howItEnded(): string;
  /** Ends the process (SIGTERM, SIGKILL after 15 s) and the node watch. */
  stop(): Promise<void>;
  /** Deletes the fleet's Node objects (after {@link stop}, or the tool may make them again). */
  removeNodes(): Promise<void>;
}

/** A process's JavaScript heap at one moment, in MiB (V8's figures, through prom-client). */
export interface HeapNow {
  /** In use, garbage not yet collected included. */
  readonly usedMiB: number;
  /** Committed by V8 for the heap: what of it is resident, used or not. */
  readonly committedMiB: number;
  /** Of that, the young generation (the semi-spaces), which grows in a burst of allocation. */
  readonly newSpaceMiB: number;
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves once the process has exited. */
export async function endProcess(child: ChildProcess, graceMs = 15_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
  await exited;
  clearTimeout(timer);
}

/**
 * Follows the nodes of `nodeSelector` until `count` are Ready and each has its Lease, failing
 * early if `alive` turns false. The watch goes on until `signal` aborts.
 */
export async function followNodesUntilReady(o: {
  api: BenchApi;
  nodeSelector: string;
  count: number;
  signal: AbortSignal;
  alive: () => boolean;
  what: string;
}): Promise<NodeReadiness> {
  const nodes = new NodeReadiness();
  await follow({
    api: o.api,
    path: "/api/v1/nodes",
    labelSelector: o.nodeSelector,
    signal: o.signal,
    see: nodes.see,
  });
  await waitUntil(
    () => `${o.count} ${o.what} nodes Ready (${nodes.readyCount} are)`,
    () => {
      if (!o.alive()) throw new Error(`${o.what} exited before its nodes were Ready`);
      return nodes.readyCount >= o.count;
    },
    120_000 + o.count * 60,
    250,
  );
  // Registration ends with each node's heartbeat Lease: wait for those too, so the tool's start-up
  // requests stay out of what the benchmark measures next.
  const names = new Set(nodes.names());
  let leases = 0;
  let missing: string[] = [];
  await waitUntil(
    () =>
      `${names.size} ${o.what} node Leases (${leases} exist; missing e.g. ${missing.slice(0, 5).join(", ")})`,
    async () => {
      leases = 0;
      const seen = new Set<string>();
      let next: string | undefined;
      do {
        const page = await o.api.request<{ metadata?: { continue?: string }; items?: KubeObject[] }>({
          method: "GET",
          path: `/apis/coordination.k8s.io/v1/namespaces/${NODE_LEASE_NAMESPACE}/leases`,
          query: { limit: 500, ...(next ? { continue: next } : {}) },
        });
        for (const lease of page.items ?? []) {
          const name = lease.metadata?.name ?? "";
          if (names.has(name)) seen.add(name);
        }
        next = page.metadata?.continue || undefined;
      } while (next);
      leases = seen.size;
      missing = [...names].filter((name) => !seen.has(name));
      return leases >= names.size;
    },
    // At 5,000 nodes registration ends with thousands of Lease creates in a few seconds, some of
    // them retried after a timeout: allow for that before calling the fleet broken.
    120_000 + o.count * 40,
    1_000,
  );
  return nodes;
}

/**
 * Client-side rate limits devicelet runs with in these benchmarks. KWOK has none, so devicelet's
 * default lane is raised from 100 to BENCH_DEVICELET_QPS (default 1,000): the benchmarks measure
 * the engine, not a budget. Heartbeats: a Lease renewal per node every 10 s plus node status,
 * with room to spare (the default 200 from 1,000 nodes down).
 */
export function deviceletApiBudget(nodes: number) {
  const qps = Number(process.env.BENCH_DEVICELET_QPS ?? 1_000);
  const heartbeatQps = Math.max(200, Math.ceil(nodes / 5));
  return { qps, burst: 2 * qps, heartbeatQps, heartbeatBurst: 2 * heartbeatQps };
}

/**
 * KWOK's API user is in `system:masters`, which API Priority and Fairness exempts from its queues;
 * devicelet's is not, and at thousands of nodes its Lease renewals met 429s that KWOK's never met.
 * This FlowSchema gives the benchmark's devicelet user the same exemption for as long as it runs,
 * so both tools meet the same server. (A cluster would rather give devicelet's Lease renewals a
 * priority level of their own: docs/scaling.md.)
 */
const DEVICELET_FLOW_SCHEMA = `apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: FlowSchema
metadata: { name: devicelet-bench-exempt }
spec:
  matchingPrecedence: 100
  priorityLevelConfiguration: { name: exempt }
  rules:
    - subjects: [{ kind: User, user: { name: devicelet } }]
      resourceRules:
        - { verbs: ["*"], apiGroups: ["*"], resources: ["*"], namespaces: ["*"], clusterScope: true }
      nonResourceRules: [{ verbs: ["*"], nonResourceURLs: ["*"] }]
`;

/**
 * devicelet with `nodes` mock devices whose apps start at once, each with room for `podsPerNode`
 * pods; `nodeFlags` go to Node.js.
 */
export async function startMockDevicelet(o: {
  api: BenchApi;
  id: string;
  nodes: number;
  podsPerNode: number;
  nodeFlags?: readonly string[];
  /** Sample the heap from devicelet's metrics for {@link Fleet.heap} (every {@link HEAP_SAMPLE_MS}). */
  sampleHeap?: boolean;
}): Promise<Fleet> {
  const nodeSelector = `${BENCH_LABEL}=${o.id}`;
  kubectl(["apply", "-f", "-"], DEVICELET_FLOW_SCHEMA);
  const metricsPort = await freePort();
  const { child, logFile } = spawnDevicelet(
    {
      kubeconfig: path.join(testenvDir, "devicelet.kubeconfig"),
      metrics: { port: metricsPort, bindAddress: "127.0.0.1" },
      nodes: { extraLabels: { [BENCH_LABEL]: o.id } },
      // BENCH_LOG_LEVEL=info shows the engine's minute-by-minute queues and API load in its log.
      log: { level: process.env.BENCH_LOG_LEVEL ?? "warn" },
      api: deviceletApiBudget(o.nodes),
      provider: {
        type: "mock",
        config: {
          devices: { count: o.nodes, idPrefix: `${o.id}-d`, capacity: { pods: String(o.podsPerNode) } },
          appStartDelayMs: 0,
        },
      },
    },
    o.nodeFlags,
  );
  const removeFlowSchema = () =>
    kubectl(["delete", "flowschema", "devicelet-bench-exempt", "--ignore-not-found"]);
  const heap = o.sampleHeap ? sampleHeap(metricsPort) : undefined;
  try {
    const fleet = await followFleet({
      api: o.api,
      child,
      logFile,
      nodeSelector,
      count: o.nodes,
      tool: "devicelet",
      username: "devicelet",
      tolerationKey: "virtual-kubelet.io/provider",
      what: "devicelet",
    });
    return {
      ...fleet,
      ...(heap ? { heap: heap.read } : {}),
      heapNow: () => scrapeHeap(metricsPort),
      stop: async () => {
        heap?.stop();
        await fleet.stop();
        removeFlowSchema();
      },
    };
  } catch (err) {
    heap?.stop();
    removeFlowSchema();
    throw err;
  }
}

/** One scrape of devicelet's metrics, parsed. */
async function scrapeMetrics(metricsPort: number) {
  return parsePrometheus(await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text());
}

async function scrapeHeap(metricsPort: number): Promise<HeapNow> {
  const samples = await scrapeMetrics(metricsPort);
  const mib = (name: string, labels?: Record<string, string>) =>
    round(sampleSum(samples, `devicelet_nodejs_${name}`, labels) / 2 ** 20, 1);
  return {
    usedMiB: mib("heap_size_used_bytes"),
    committedMiB: mib("heap_size_total_bytes"),
    newSpaceMiB: mib("heap_space_size_total_bytes", { space: "new" }),
  };
}

/**
 * How often {@link sampleHeap} scrapes devicelet's metrics: Prometheus's usual interval. Every
 * 2 s, as it was, the scrapes took 5 % of the CPU devicelet spent holding 1,000 nodes (0.52 of 10.4
 * s in a 120 s CPU profile of the hold), which the bench then charged to devicelet and not to
 * KWOK, whose metrics it does not read.
 */
const HEAP_SAMPLE_MS = 15_000;

/** Samples devicelet's heap in use and its limit from its metrics, keeping the most. */
function sampleHeap(metricsPort: number): {
  read: () => { peakUsedMiB: number; limitMiB: number };
  stop: () => void;
} {
  let peakUsed = 0;
  let limit = Number.NaN;
  const timer = setInterval(() => {
    void scrapeMetrics(metricsPort)
      .then((samples) => {
        peakUsed = Math.max(peakUsed, sampleSum(samples, "devicelet_nodejs_heap_size_used_bytes"));
        limit = sampleSum(samples, "devicelet_nodejs_heap_size_limit_bytes");
      })
      // Not up yet, or gone: the next sample tries again.
      .catch(() => undefined);
  }, HEAP_SAMPLE_MS);
  timer.unref();
  return {
    read: () => ({ peakUsedMiB: round(peakUsed / 2 ** 20, 1), limitMiB: round(limit / 2 ** 20, 1) }),
    stop: () => clearInterval(timer),
  };
}

/**
 * The {@link Fleet} of a tool's process that was just started: resolves once its `count` nodes
 * are Ready with their leases; on failure ends the process, deletes the nodes and throws with the
 * end of the tool's log.
 */
export async function followFleet(o: {
  api: BenchApi;
  child: ChildProcess;
  logFile: string;
  nodeSelector: string;
  count: number;
  tool: Fleet["tool"];
  username: string;
  tolerationKey: string;
  /** The tool as messages name it. */
  what: string;
}): Promise<Fleet> {
  const { child, nodeSelector } = o;
  const pid = child.pid;
  const alive = () => child.exitCode === null && child.signalCode === null;
  /** The last `lines` lines of the tool's log. */
  const logTail = (lines: number) =>
    readFileSync(o.logFile, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
  const howItEnded = () => {
    const end = child.signalCode ? `signal ${child.signalCode}` : `exit code ${String(child.exitCode)}`;
    return `${end}; its log ends:\n${logTail(10)}`;
  };
  const watching = new AbortController();
  try {
    if (pid === undefined) throw new Error(`${o.what} did not start`);
    const nodes = await followNodesUntilReady({
      api: o.api,
      nodeSelector,
      count: o.count,
      signal: watching.signal,
      alive,
      what: o.what,
    });
    return {
      tool: o.tool,
      username: o.username,
      pid,
      nodeSelector,
      nodeNames: nodes.names(),
      tolerationKey: o.tolerationKey,
      nodes,
      alive,
      howItEnded,
      stop: async () => {
        await endProcess(child);
        watching.abort();
      },
      removeNodes: () => removeNodes(o.api, nodeSelector),
    };
  } catch (err) {
    watching.abort();
    await endProcess(child);
    await removeNodes(o.api, nodeSelector);
    throw new Error(`${(err as Error).message}; ${o.what}'s log ends:\n${logTail(20)}`, { cause: err });
  }
}

export async function removeNodes(api: BenchApi, nodeSelector: string): Promise<void> {
  await api.request({ method: "DELETE", path: "/api/v1/nodes", query: { labelSelector: nodeSelector } });
}

/** The benchmark's pods are named `<POD_PREFIX><index>`. */
export const POD_PREFIX = "p-";

function boundPod(namespace: string, index: number, nodeName: string, tolerationKey: string): Pod {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name: `${POD_PREFIX}${index}`, namespace, labels: { app: "bench" } },
    spec: {
      nodeName,
      tolerations: [{ key: tolerationKey, operator: "Exists" }],
      // No token volume: the pod objects (and every cache of them) stay small at 50,000 pods.
      automountServiceAccountToken: false,
      terminationGracePeriodSeconds: 1,
      containers: [{ name: "app", image: "example/sensor:1.0", command: ["/bin/sensor"] }],
    },
  };
}

export interface BoundPodsResult {
  pods: number;
  nodes: number;
  /** From the first create to the last pod seen Running and Ready. */
  allRunningSeconds: number;
  /** From the first create to the last create's answer. */
  createSeconds: number;
  podsPerSecond: number;
  /** From each create's answer to its pod seen Running and Ready. */
  p50Ms: number;
  p99Ms: number;
  /** CPU the tool's process used over the same window. */
  cpuSeconds: number;
  /** Wall-clock window (ms) of the run, for the audit log. */
  startMs: number;
  endMs: number;
}

/**
 * Creates `namespace` and `pods` bare pods bound round-robin to the fleet's nodes, `concurrency`
 * creates in flight, and waits (bounded) until one watcher saw all of them Running and Ready.
 */
export async function runBoundPods(o: {
  api: BenchApi;
  fleet: Fleet;
  namespace: string;
  pods: number;
}): Promise<BoundPodsResult> {
  const { api, fleet, namespace, pods } = o;
  await api.createNamespace(namespace);
  const times = new PodRunningTimes(POD_PREFIX, pods);
  const watching = new AbortController();
  try {
    const podsPath = `/api/v1/namespaces/${namespace}/pods`;
    await follow({ api, path: podsPath, signal: watching.signal, see: times.see });
    const nodeNames = fleet.nodeNames;
    const cpuBefore = cpuSeconds(fleet.pid);
    const startMs = Date.now();
    const start = performance.now();
    const died = () =>
      new Error(
        `${fleet.tool} exited while its pods were starting, ${times.running} of ${pods} Running: ${fleet.howItEnded()}`,
      );
    await inPool(pods, concurrency, async (i) => {
      if (createQps > 0) {
        const due = start + (i * 1000) / createQps - performance.now();
        if (due > 0) await sleep(due);
      }
      // Stop creating for a tool that is gone: what it did until then is the result.
      if (!fleet.alive()) throw died();
      await api.create(
        podsPath,
        boundPod(namespace, i, nodeNames[i % nodeNames.length] ?? "", fleet.tolerationKey),
      );
      times.createdAt[i] = performance.now();
    });
    const created = performance.now();
    await waitUntil(
      () => `${pods} pods Running on ${fleet.tool} (${times.running} are)`,
      () => {
        if (!fleet.alive()) throw died();
        return times.running >= pods;
      },
      300_000 + pods * 20,
      200,
    );
    const end = performance.now();
    const endMs = Date.now();
    const cpu = cpuSeconds(fleet.pid) - cpuBefore;
    const latencies = times.latencies();
    const seconds = (end - start) / 1000;
    return {
      pods,
      nodes: nodeNames.length,
      allRunningSeconds: round(seconds, 2),
      createSeconds: round((created - start) / 1000, 2),
      podsPerSecond: round(pods / seconds, 1),
      p50Ms: Math.round(percentile(latencies, 50)),
      p99Ms: Math.round(percentile(latencies, 99)),
      cpuSeconds: round(cpu, 2),
      startMs,
      endMs,
    };
  } finally {
    watching.abort();
  }
}

/** Removes the benchmark's pods at once (grace period 0, no kubelet needed), then the namespace. */
export async function removeBoundPods(o: { api: BenchApi; namespace: string; pods: number }): Promise<void> {
  await inPool(o.pods, concurrency, (i) =>
    o.api.delete(`/api/v1/namespaces/${o.namespace}/pods/${POD_PREFIX}${i}`, { gracePeriodSeconds: 0 }),
  );
  await o.api.delete(`/api/v1/namespaces/${o.namespace}`);
}

export const round = (value: number, digits: number) => Math.round(value * 10 ** digits) / 10 ** digits;

/** The growth from `fromMiB` to `toMiB` per pod, in KiB to two decimals (the per-pod memory columns). */
export const kibPerPod = (toMiB: number, fromMiB: number, pods: number) =>
  round(((toMiB - fromMiB) * 1024) / pods, 2);

/** `a / b` to two decimals, for the ratio columns. */
export const ratio = (a: number, b: number) => round(a / b, 2);
