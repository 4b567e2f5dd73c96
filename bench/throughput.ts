/**
 * Throughput benchmark (`npm run bench -- throughput`): how fast the kubelet side starts pods when
 * nothing upstream sets the pace. THROUGHPUT_PODS (default 5,000) bare pods with `spec.nodeName`
 * set, round-robin over THROUGHPUT_NODES (default 100) nodes, are created straight through the API
 * with BENCH_CONCURRENCY (default 48) creates in flight, and at most BENCH_CREATE_QPS a second when
 * that is set; no Deployment, no scheduler, no controller-manager. Unpaced, the API server's
 * writes bound both tools; at a pace it sustains both keep up, and the time from create to Running
 * tells them apart. devicelet (mock provider, apps start at once, its API budget raised to
 * BENCH_DEVICELET_QPS, default 1,000: see `deviceletApiBudget`) runs first, then KWOK with its
 * "fast" stages on fresh nodes, on the same control plane in the same run. Each tool starts once
 * the control plane has quietened down from the run before (under 0.3 cores over 2 s).
 *
 * Per tool, from the first create until one watcher saw every pod Running and Ready: the time and
 * pods per second, p50/p99 from a create's answer to Running, API requests per pod by the tool's
 * user (audit log), CPU seconds of the tool's process (/proc), its peak RSS and its RSS growth per
 * pod and its connections to the API server, at the moment the last pod ran and again (not the
 * connections) once the process has idled THROUGHPUT_SETTLE_SECONDS
 * (default 60: what a fleet holding its pods costs, after the start's garbage is collected and,
 * in devicelet, the heap trimmed once the burst is over, src/metrics/heap-trim.ts), and for
 * devicelet what of that growth is its JavaScript heap (in use and committed). Prints
 * both rows and the devicelet/KWOK ratios; writes `bench-throughput.json` to the harness directory.
 * Namespaces, pods and nodes are deleted afterwards. THROUGHPUT_TOOLS (default `devicelet,kwok`)
 * picks the tools; THROUGHPUT_HEAP_DIR=<dir> has devicelet write a V8 heap snapshot there before
 * the first create and after the settle, to see what each pod keeps alive.
 */
import { randomBytes } from "node:crypto";
import { mkdirSync, readdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { BenchApi } from "./api.ts";
import { AuditTail } from "./audit-tail.ts";
import {
  concurrency,
  createQps,
  deviceletApiBudget,
  kibPerPod,
  measureEach,
  ratio,
  toolsFrom,
  removeBoundPods,
  round,
  runBoundPods,
  startMockDevicelet,
  type BoundPodsResult,
  type Fleet,
} from "./fleet.ts";
import { startKwok } from "./kwok.ts";
import { controlPlane, testenvDir, waitForQuietControlPlane, waitUntil } from "./support.ts";
import { connectionsTo, memoryMiB } from "./usage.ts";

const PODS = Number(process.env.THROUGHPUT_PODS ?? 5_000);
const NODES = Number(process.env.THROUGHPUT_NODES ?? 100);
/** Room for every pod with margin, and never less than the kubelet's default of 110. */
const PODS_PER_NODE = Math.max(110, 2 * Math.ceil(PODS / NODES));
const SETTLE_SECONDS = Number(process.env.THROUGHPUT_SETTLE_SECONDS ?? 60);
const HEAP_DIR = process.env.THROUGHPUT_HEAP_DIR;
const TOOLS = toolsFrom("THROUGHPUT_TOOLS");

interface Row extends Omit<BoundPodsResult, "startMs" | "endMs"> {
  tool: string;
  apiRequestsPerPod: number;
  apiRequestsByRequest: Record<string, number>;
  /** 429s the API server answered the tool during the run. */
  tool429s: number;
  peakRssMiB: number;
  /** (RSS once all pods ran − RSS before the first create) / pods. */
  rssPerPodKiB: number;
  /** The same, SETTLE_SECONDS later with nothing happening but heartbeats. */
  settledRssPerPodKiB: number;
  /**
   * The tool's TCP connections to the API server before the first create and when the last pod
   * ran: each is a TLS session, tens of KiB of RSS outside any heap (HTTP/1.1 needs one per
   * request in flight; Go's client multiplexes its requests over one HTTP/2 connection).
   */
  connectionsBefore: number;
  connectionsAtEnd: number;
  /** How long the control plane took to quieten down before the first create. */
  quietWaitSeconds: number;
  /**
   * devicelet only, settled: the growth of its JavaScript heap per pod, in use (garbage included)
   * and committed, and the young generation's size then. What RSS per pod has beyond the
   * committed heap is outside V8's heap (buffers, code, the allocator).
   */
  heapUsedPerPodKiB?: number;
  heapCommittedPerPodKiB?: number;
  newSpaceMiB?: number;
  /** The same three at the moment the last pod ran, where {@link rssPerPodKiB} is taken. */
  endHeapUsedPerPodKiB?: number;
  endHeapCommittedPerPodKiB?: number;
  endNewSpaceMiB?: number;
  beforeNewSpaceMiB?: number;
}

/** Has `pid` (started with `--heapsnapshot-signal=SIGUSR2`) write a heap snapshot into HEAP_DIR. */
async function heapSnapshot(pid: number): Promise<void> {
  if (HEAP_DIR === undefined) return;
  const count = () => readdirSync(HEAP_DIR).filter((f) => f.endsWith(".heapsnapshot")).length;
  const before = count();
  process.kill(pid, "SIGUSR2");
  await waitUntil(
    () => `a heap snapshot in ${HEAP_DIR}`,
    () => count() > before,
    120_000,
  );
}

async function measure(o: {
  tool: Fleet["tool"];
  id: string;
  api: BenchApi;
  audit: AuditTail;
}): Promise<Row> {
  const { api, audit } = o;
  const heap = o.tool === "devicelet" && HEAP_DIR !== undefined;
  const options = { api, id: o.id, nodes: NODES, podsPerNode: PODS_PER_NODE };
  const fleet =
    o.tool === "kwok"
      ? await startKwok(options)
      : await startMockDevicelet({
          ...options,
          nodeFlags: heap ? ["--heapsnapshot-signal=SIGUSR2", `--diagnostic-dir=${HEAP_DIR}`] : [],
        });
  const namespace = `${o.id}-${o.tool}`;
  try {
    const quietWaitSeconds = await waitForQuietControlPlane();
    if (heap) await heapSnapshot(fleet.pid);
    const apiPort = Number(new URL(api.server).port || 443);
    const before = memoryMiB(fleet.pid);
    const connectionsBefore = connectionsTo(fleet.pid, apiPort);
    const heapBefore = await fleet.heapNow?.();
    const { startMs, endMs, ...run } = await runBoundPods({ api, fleet, namespace, pods: PODS });
    const after = memoryMiB(fleet.pid);
    const connectionsAtEnd = connectionsTo(fleet.pid, apiPort);
    const heapEnd = await fleet.heapNow?.();
    await sleep(SETTLE_SECONDS * 1000);
    const settled = memoryMiB(fleet.pid);
    const heapSettled = await fleet.heapNow?.();
    if (heap) await heapSnapshot(fleet.pid);
    await audit.settle(endMs);
    const requests = audit.count(fleet.username, startMs, endMs);
    return {
      tool: o.tool,
      ...run,
      apiRequestsPerPod: round(requests.total / PODS, 2),
      apiRequestsByRequest: requests.byRequest,
      tool429s: requests.throttled,
      peakRssMiB: after.peakRssMiB,
      rssPerPodKiB: kibPerPod(after.rssMiB, before.rssMiB, PODS),
      settledRssPerPodKiB: kibPerPod(settled.rssMiB, before.rssMiB, PODS),
      connectionsBefore,
      connectionsAtEnd,
      quietWaitSeconds,
      ...(heapBefore && heapSettled
        ? {
            heapUsedPerPodKiB: kibPerPod(heapSettled.usedMiB, heapBefore.usedMiB, PODS),
            heapCommittedPerPodKiB: kibPerPod(heapSettled.committedMiB, heapBefore.committedMiB, PODS),
            newSpaceMiB: heapSettled.newSpaceMiB,
          }
        : {}),
      ...(heapBefore && heapEnd
        ? {
            endHeapUsedPerPodKiB: kibPerPod(heapEnd.usedMiB, heapBefore.usedMiB, PODS),
            endHeapCommittedPerPodKiB: kibPerPod(heapEnd.committedMiB, heapBefore.committedMiB, PODS),
            endNewSpaceMiB: heapEnd.newSpaceMiB,
            beforeNewSpaceMiB: heapBefore.newSpaceMiB,
          }
        : {}),
    };
  } finally {
    await fleet.stop();
    await removeBoundPods({ api, namespace, pods: PODS });
    await fleet.removeNodes();
  }
}

export async function benchThroughput(): Promise<void> {
  const stop = await controlPlane();
  const api = BenchApi.admin();
  const audit = await AuditTail.start(["devicelet", "kwok"]);
  const id = `tp-${randomBytes(3).toString("hex")}`;
  try {
    const pace = createQps > 0 ? `, at most ${createQps} a second` : "";
    console.log(`throughput: ${PODS} pods bound to ${NODES} nodes, ${concurrency} creates in flight${pace}`);
    if (HEAP_DIR !== undefined) mkdirSync(HEAP_DIR, { recursive: true });
    const { rows, devicelet, kwok } = await measureEach(TOOLS, (tool) => measure({ tool, id, api, audit }));
    const ratios = devicelet &&
      kwok && {
        podsPerSecond: ratio(devicelet.podsPerSecond, kwok.podsPerSecond),
        allRunningSeconds: ratio(devicelet.allRunningSeconds, kwok.allRunningSeconds),
        apiRequestsPerPod: ratio(devicelet.apiRequestsPerPod, kwok.apiRequestsPerPod),
        cpuSeconds: ratio(devicelet.cpuSeconds, kwok.cpuSeconds),
        rssPerPodKiB: ratio(devicelet.rssPerPodKiB, kwok.rssPerPodKiB),
        settledRssPerPodKiB: ratio(devicelet.settledRssPerPodKiB, kwok.settledRssPerPodKiB),
        peakRssMiB: ratio(devicelet.peakRssMiB, kwok.peakRssMiB),
      };
    const apiServer = { createRetries: api.retried, create429s: api.throttled, auditLog: audit.growth };
    console.log(
      `\nthroughput benchmark: ${PODS} pods bound to ${NODES} nodes, one control plane, same run\n`,
    );
    console.table(rows.map(({ apiRequestsByRequest: _v, ...r }) => r));
    console.log(
      "API requests by verb and resource:",
      Object.fromEntries(rows.map((r) => [r.tool, r.apiRequestsByRequest])),
    );
    if (ratios) console.log("ratio devicelet/kwok:", ratios);
    console.log("bench's own requests and the audit log:", apiServer);
    writeFileSync(
      path.join(testenvDir, "bench-throughput.json"),
      JSON.stringify(
        {
          date: new Date().toISOString(),
          pods: PODS,
          nodes: NODES,
          podsPerNode: PODS_PER_NODE,
          concurrency,
          createQps,
          deviceletApi: deviceletApiBudget(NODES),
          rows,
          ratios,
          apiServer,
        },
        null,
        2,
      ),
    );
  } finally {
    await audit.stop();
    await api.close();
    await stop();
  }
}
