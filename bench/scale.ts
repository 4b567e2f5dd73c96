/**
 * Scale benchmark (`npm run bench -- scale`): devicelet (mock provider, apps start at once, API
 * budget as `deviceletApiBudget` in fleet.ts sets it for the node count) with
 * SCALE_NODES (default 1,000) device nodes and SCALE_PODS (default 10,000) pods, created as the
 * throughput benchmark creates them (bare, `spec.nodeName` set, many creates in flight), then held
 * at steady state for SCALE_HOLD_SECONDS (default 600); then KWOK with the same counts on the same
 * control plane in the same run. Runs at 5,000 nodes / 50,000 pods too: the benchmark keeps two
 * numbers per pod and one flag per node, and counts the audit log as it grows.
 *
 * Per tool: time until all nodes Ready and until all pods Running; peak RSS of the tool's process
 * and its RSS at steady state (the mean of samples through the hold), and that RSS's growth per pod
 * from the fleet's RSS with every node Ready and idle SCALE_IDLE_SECONDS (default 90; the mean of its
 * last 30 s); every transition of a node's
 * Ready condition away from True during the hold (and during the pod burst), as a node watch saw it; API requests per
 * second by the tool's user during the hold (audit log); CPU seconds per node per minute during
 * the hold; CPU seconds until every pod ran; how much etcd's database and key count grew from
 * before the nodes to every pod Running. Prints both rows and the devicelet/KWOK ratios; writes `bench-scale.json` to the
 * harness directory. Namespaces, pods and nodes are deleted afterwards.
 */
import { randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { BenchApi } from "./api.ts";
import { AuditTail } from "./audit-tail.ts";
import {
  concurrency,
  createQps,
  deviceletApiBudget,
  measureEach,
  ratio,
  toolsFrom,
  removeBoundPods,
  kibPerPod,
  round,
  runBoundPods,
  startMockDevicelet,
  type Fleet,
} from "./fleet.ts";
import { startKwok } from "./kwok.ts";
import { controlPlane, testenvDir } from "./support.ts";
import { cpuSeconds, memoryMiB } from "./usage.ts";
import type { NotReadyTransition } from "./watch.ts";

const NODES = Number(process.env.SCALE_NODES ?? 1_000);
const PODS = Number(process.env.SCALE_PODS ?? 10_000);
const HOLD_SECONDS = Number(process.env.SCALE_HOLD_SECONDS ?? 600);
/**
 * How long the fleet idles with every node Ready before the first pod create (SCALE_IDLE_SECONDS,
 * default 90): the RSS per pod is counted from the RSS of a fleet at rest, not of one still holding
 * its registration's burst. devicelet trims its heap once the heap has not grown for 20 s
 * (src/metrics/heap-trim.ts), which a fleet's first heartbeats put off past the last node's Ready,
 * and closes the registration's idle API connections after 60 s (src/kube/access.ts).
 * With 30 s the "before" reading of a run was sometimes taken untrimmed (155 against 127 MiB).
 */
const IDLE_SECONDS = Number(process.env.SCALE_IDLE_SECONDS ?? 90);
/** Which tools run, in this order (SCALE_TOOLS, default `devicelet,kwok`); ratios need both. */
const TOOLS = toolsFrom("SCALE_TOOLS");
const PODS_PER_NODE = Math.max(110, 2 * Math.ceil(PODS / NODES));
/**
 * What etcd holds now, from its metrics on the client port: the bytes of its database in use and
 * the number of keys. Revisions not yet compacted (the API server compacts every 5 minutes) count
 * too, so the difference across a burst is an upper bound of what the objects take.
 */
async function etcdUsage(): Promise<{ inUseMiB: number; keys: number }> {
  const state = JSON.parse(readFileSync(path.join(testenvDir, "state.json"), "utf8")) as {
    ports: { etcd: number };
  };
  const text = await (await fetch(`http://127.0.0.1:${state.ports.etcd}/metrics`)).text();
  const value = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, "m").exec(text)?.[1] ?? Number.NaN);
  return {
    inUseMiB: round(value("etcd_mvcc_db_total_size_in_use_in_bytes") / 2 ** 20, 1),
    keys: value("etcd_debugging_mvcc_keys_total"),
  };
}

/**
 * RSS is sampled this often in the hold, and in the last {@link BEFORE_SECONDS} of the idle before
 * the pods. One reading is not a fleet's RSS: devicelet's heap grows with the heartbeats' garbage
 * between two full collections, 60 to 100 MiB at 1,000 nodes and 10,000 pods (a 90 s cycle, seen in
 * /proc/<pid>/smaps every 3 s), which is 4 KiB a pod, and KWOK's Go heap does the same by its own
 * rhythm. So the steady RSS and the RSS before the pods are means of samples.
 */
const SAMPLE_MS = 2_000;
/** The "before the pods" RSS is the mean of the samples in the idle's last this many seconds. */
const BEFORE_SECONDS = 30;

interface Row {
  tool: string;
  nodes: number;
  pods: number;
  nodesReadySeconds: number;
  allRunningSeconds: number;
  /** From the first create to the last create's answer: the pace the API server took creates at. */
  createSeconds: number;
  podsPerSecond: number;
  /** From each create's answer to its pod seen Running and Ready. */
  p50Ms: number;
  p99Ms: number;
  peakRssMiB: number;
  /** devicelet: the most JavaScript heap in use in a sample every 15 s (garbage included), and its limit. */
  peakHeapUsedMiB: number;
  heapLimitMiB: number;
  /** The mean of the RSS samples in the hold; the least and the most of them. */
  steadyRssMiB: number;
  holdRssMinMiB: number;
  holdRssMaxMiB: number;
  /** The mean RSS in the last BEFORE_SECONDS of an idle of IDLE_SECONDS with every node Ready, before the first pod create. */
  rssBeforePodsMiB: number;
  /**
   * (steadyRssMiB − rssBeforePodsMiB) / pods: what a held pod costs at this fleet's size, the
   * start's one-off costs (a burst's garbage, connections, the young generation grown) spread
   * over all of them, as a fleet that size pays them.
   */
  rssPerPodKiB: number;
  /** Transitions of a node's Ready away from True during the hold, and how many nodes had one. */
  notReadyDuringHold: number;
  nodesNotReadyDuringHold: number;
  /** The same from the first pod create to the start of the hold. */
  notReadyDuringBurst: number;
  nodesReadyAtEnd: number;
  /**
   * The longest any node's Lease went without a successful write from the first pod create to the
   * end of the hold (audit log): past the controller-manager's node-monitor grace period the node
   * is marked Unknown, so this says how close the fleet came.
   */
  longestLeaseGapSeconds: number;
  apiRequestsPerSecond: number;
  apiRequestsPerSecondByRequest: Record<string, number>;
  /** 429s the API server answered the tool during the hold. */
  tool429s: number;
  cpuSecondsPerNodePerMinute: number;
  /** The tool's CPU seconds from its start until every pod ran (registration and the pod burst). */
  burstCpuSeconds: number;
  /** etcd's database in use and its keys grew this much from before the nodes to all pods Running. */
  etcdGrowthMiB: number;
  etcdKeysAdded: number;
  /** The first few NotReady transitions, to look into. */
  firstNotReady: NotReadyTransition[];
}

/** The RSS of `fleet`'s process every SAMPLE_MS for `seconds` (MiB); fails early if the process ends. */
async function sampleRss(
  fleet: Fleet,
  seconds: number,
  what: string,
  report?: (elapsedSeconds: number, rssMiB: number) => void,
): Promise<number[]> {
  const startMs = Date.now();
  const deadline = startMs + seconds * 1000;
  const samples: number[] = [];
  let lastReport = startMs;
  for (let now = Date.now(); now < deadline; now = Date.now()) {
    await sleep(Math.min(SAMPLE_MS, deadline - now));
    if (!fleet.alive()) throw new Error(`${fleet.tool} exited ${what}: ${fleet.howItEnded()}`);
    const { rssMiB } = memoryMiB(fleet.pid);
    samples.push(rssMiB);
    if (report && Date.now() - lastReport >= 60_000) {
      lastReport = Date.now();
      report(Math.round((lastReport - startMs) / 1000), rssMiB);
    }
  }
  if (samples.length === 0) samples.push(memoryMiB(fleet.pid).rssMiB);
  return samples;
}

const mean = (values: readonly number[]) => round(values.reduce((a, b) => a + b, 0) / values.length, 1);

/** Waits out the hold, sampling RSS; fails early if the tool's process ends. */
async function hold(fleet: Fleet): Promise<{ startMs: number; endMs: number; cpu: number; rss: number[] }> {
  const startMs = Date.now();
  const cpuBefore = cpuSeconds(fleet.pid);
  const rss = await sampleRss(fleet, HOLD_SECONDS, "during the hold", (elapsed, rssMiB) =>
    console.log(
      `  ${fleet.tool} hold ${elapsed}/${HOLD_SECONDS}s: RSS ${rssMiB} MiB, ` +
        `${fleet.nodes.readyCount}/${NODES} nodes Ready, ${fleet.nodes.wentNotReady(startMs).count} went NotReady`,
    ),
  );
  const cpu = cpuSeconds(fleet.pid) - cpuBefore;
  return { startMs, endMs: Date.now(), cpu, rss };
}

async function measure(o: {
  tool: Fleet["tool"];
  id: string;
  api: BenchApi;
  audit: AuditTail;
}): Promise<Row> {
  const { api, audit } = o;
  const begin = performance.now();
  const etcdBefore = await etcdUsage();
  const options = { api, id: o.id, nodes: NODES, podsPerNode: PODS_PER_NODE };
  const fleet =
    o.tool === "devicelet"
      ? await startMockDevicelet({ ...options, sampleHeap: true })
      : await startKwok(options);
  const nodesReadySeconds = round((performance.now() - begin) / 1000, 2);
  console.log(`${o.tool}: ${NODES} nodes Ready after ${nodesReadySeconds}s; creating ${PODS} pods`);
  const namespace = `${o.id}-${o.tool}`;
  try {
    const idle = Math.min(BEFORE_SECONDS, IDLE_SECONDS);
    await sleep((IDLE_SECONDS - idle) * 1000);
    const rssBeforePodsMiB = mean(await sampleRss(fleet, idle, "in the idle before the pods"));
    const run = await runBoundPods({ api, fleet, namespace, pods: PODS });
    const burstCpuSeconds = round(cpuSeconds(fleet.pid), 1);
    const etcdAfter = await etcdUsage();
    console.log(`${o.tool}: ${PODS} pods Running after ${run.allRunningSeconds}s; holding ${HOLD_SECONDS}s`);
    const held = await hold(fleet);
    const duringHold = fleet.nodes.wentNotReady(held.startMs);
    const sinceBurst = fleet.nodes.wentNotReady(run.startMs);
    await audit.settle(held.endMs);
    const requests = audit.count(fleet.username, held.startMs, held.endMs);
    const leaseGap = audit.longestLeaseGap(fleet.username, o.id, run.startMs, held.endMs);
    if (leaseGap)
      console.log(
        `${o.tool}: longest a node Lease went unrenewed: ${round(leaseGap.seconds, 1)}s (${leaseGap.lease}, from ${new Date(leaseGap.fromMs).toISOString()})`,
      );
    const seconds = (held.endMs - held.startMs) / 1000;
    return {
      tool: o.tool,
      nodes: NODES,
      pods: PODS,
      nodesReadySeconds,
      allRunningSeconds: run.allRunningSeconds,
      createSeconds: run.createSeconds,
      p50Ms: run.p50Ms,
      p99Ms: run.p99Ms,
      podsPerSecond: run.podsPerSecond,
      peakRssMiB: memoryMiB(fleet.pid).peakRssMiB,
      steadyRssMiB: mean(held.rss),
      holdRssMinMiB: Math.min(...held.rss),
      holdRssMaxMiB: Math.max(...held.rss),
      rssBeforePodsMiB,
      rssPerPodKiB: kibPerPod(mean(held.rss), rssBeforePodsMiB, PODS),
      peakHeapUsedMiB: fleet.heap?.().peakUsedMiB ?? Number.NaN,
      heapLimitMiB: fleet.heap?.().limitMiB ?? Number.NaN,
      notReadyDuringHold: duringHold.count,
      nodesNotReadyDuringHold: duringHold.nodes,
      notReadyDuringBurst: sinceBurst.count - duringHold.count,
      nodesReadyAtEnd: fleet.nodes.readyCount,
      longestLeaseGapSeconds: round(leaseGap?.seconds ?? Number.NaN, 1),
      apiRequestsPerSecond: round(requests.total / seconds, 2),
      apiRequestsPerSecondByRequest: Object.fromEntries(
        Object.entries(requests.byRequest).map(([request, n]) => [request, round(n / seconds, 2)]),
      ),
      tool429s: requests.throttled,
      cpuSecondsPerNodePerMinute: round(held.cpu / NODES / (seconds / 60), 5),
      burstCpuSeconds,
      etcdGrowthMiB: round(etcdAfter.inUseMiB - etcdBefore.inUseMiB, 1),
      etcdKeysAdded: etcdAfter.keys - etcdBefore.keys,
      firstNotReady: sinceBurst.first,
    };
  } finally {
    await fleet.stop();
    await removeBoundPods({ api, namespace, pods: PODS });
    await fleet.removeNodes();
  }
}

export async function benchScale(): Promise<void> {
  const stop = await controlPlane();
  const api = BenchApi.admin();
  const audit = await AuditTail.start(["devicelet", "kwok"]);
  const id = `sc-${randomBytes(3).toString("hex")}`;
  try {
    console.log(
      `scale: ${NODES} nodes, ${PODS} pods, held ${HOLD_SECONDS}s, ${concurrency} creates in flight` +
        (createQps > 0 ? ` at most ${createQps}/s` : "") +
        `, tools ${TOOLS.join(", ")}`,
    );
    const { rows, devicelet, kwok } = await measureEach(TOOLS, (tool) => measure({ tool, id, api, audit }));
    const ratios =
      devicelet && kwok
        ? {
            peakRssMiB: ratio(devicelet.peakRssMiB, kwok.peakRssMiB),
            steadyRssMiB: ratio(devicelet.steadyRssMiB, kwok.steadyRssMiB),
            rssPerPodKiB: ratio(devicelet.rssPerPodKiB, kwok.rssPerPodKiB),
            apiRequestsPerSecond: ratio(devicelet.apiRequestsPerSecond, kwok.apiRequestsPerSecond),
            cpuSecondsPerNodePerMinute: ratio(
              devicelet.cpuSecondsPerNodePerMinute,
              kwok.cpuSecondsPerNodePerMinute,
            ),
            allRunningSeconds: ratio(devicelet.allRunningSeconds, kwok.allRunningSeconds),
            burstCpuSeconds: ratio(devicelet.burstCpuSeconds, kwok.burstCpuSeconds),
          }
        : undefined;
    const apiServer = { createRetries: api.retried, create429s: api.throttled, auditLog: audit.growth };
    console.log(
      `\nscale benchmark: ${NODES} nodes, ${PODS} pods, ${HOLD_SECONDS}s hold, one control plane\n`,
    );
    console.table(rows.map(({ apiRequestsPerSecondByRequest: _v, firstNotReady: _f, ...r }) => r));
    console.log(
      "API requests per second during the hold, by verb and resource:",
      Object.fromEntries(rows.map((r) => [r.tool, r.apiRequestsPerSecondByRequest])),
    );
    for (const r of rows)
      if (r.firstNotReady.length > 0) console.log(`${r.tool}: first NotReady transitions:`, r.firstNotReady);
    if (ratios) console.log("ratio devicelet/kwok:", ratios);
    console.log("bench's own requests and the audit log:", apiServer);
    writeFileSync(
      path.join(testenvDir, "bench-scale.json"),
      JSON.stringify(
        {
          date: new Date().toISOString(),
          nodes: NODES,
          pods: PODS,
          holdSeconds: HOLD_SECONDS,
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
