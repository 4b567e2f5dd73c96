/**
 * Churn benchmark (`npm run bench -- churn`): whether a tool's memory stays level while pods come
 * and go, as they do for the whole life of a fleet, and how fast its deletes complete. CHURN_ROUNDS
 * (default 6) rounds, each in a namespace of its own: CHURN_PODS (default 2,000) bare pods bound
 * round-robin to CHURN_NODES (default 50) nodes, created as the throughput bench creates them and
 * all Running; then every one deleted as `kubectl delete` does (the pod's own grace period, 1 s:
 * the kubelet side stops the app and removes the object), until none is left; then
 * CHURN_SETTLE_SECONDS (default 20) of nothing but heartbeats. After each round: the tool's RSS,
 * and for devicelet its JavaScript heap in use (garbage included). With CHURN_LIVE_HEAP=1, also
 * devicelet's live heap: the objects of a heap snapshot (`--heapsnapshot-signal`), which V8 takes
 * after a full collection, so garbage does not blur a leak; taking one grows the RSS for good, so
 * the RSS figures of such a run mean nothing. The snapshots of the second round and of the last
 * are kept in `.testenv/bench-churn-heap/` for `node bench/heap-owners.ts <second> <last> <pods>`.
 *
 * What it reports per tool: the RSS after the first round and after the last, the growth per round
 * from the second round on (a least-squares slope, so one reading in the heap's cycle does not
 * decide it) and that per pod churned, and the seconds from the first delete until the last pod
 * was gone. devicelet (mock provider, apps start and stop at once) runs first, then KWOK with its
 * "fast" stages, on the same control plane; writes `bench-churn.json` to the harness directory.
 * CHURN_TOOLS (default `devicelet,kwok`) picks the tools.
 */
import { randomBytes } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { BenchApi, inPool } from "./api.ts";
import { AuditTail, type AuditCount } from "./audit-tail.ts";
import type { HeapSnapshot } from "./heap-owners.ts";
import {
  concurrency,
  measureEach,
  POD_PREFIX,
  ratio,
  round,
  runBoundPods,
  startMockDevicelet,
  toolsFrom,
  type Fleet,
} from "./fleet.ts";
import { startKwok } from "./kwok.ts";
import { controlPlane, testenvDir, waitForQuietControlPlane, waitUntil } from "./support.ts";
import { memoryMiB } from "./usage.ts";

const ROUNDS = Number(process.env.CHURN_ROUNDS ?? 6);
const PODS = Number(process.env.CHURN_PODS ?? 2_000);
const NODES = Number(process.env.CHURN_NODES ?? 50);
const PODS_PER_NODE = Math.max(110, 2 * Math.ceil(PODS / NODES));
const SETTLE_SECONDS = Number(process.env.CHURN_SETTLE_SECONDS ?? 20);
const TOOLS = toolsFrom("CHURN_TOOLS");
const LIVE_HEAP = process.env.CHURN_LIVE_HEAP === "1";
const HEAP_DIR = path.join(testenvDir, "bench-churn-heap");

interface Round {
  /** From the first create to the last pod Running. */
  runningSeconds: number;
  /** From the first delete to the last pod gone from the API server. */
  deleteSeconds: number;
  rssMiB: number;
  /** devicelet only: its JavaScript heap in use (garbage included). */
  heapUsedMiB?: number;
  /** devicelet only: the objects of a heap snapshot taken after the reading above. */
  liveHeapMiB?: number;
  /** The tool's requests on pods (and their subresources) while they were deleted, per pod. */
  podRequestsPerDelete: number;
}

interface Row {
  tool: string;
  rounds: number;
  podsPerRound: number;
  rssBeforeMiB: number;
  rssFirstRoundMiB: number;
  rssLastRoundMiB: number;
  /** Least-squares slope of the RSS over rounds 2 to the last, per round. */
  rssGrowthPerRoundMiB: number;
  /** That slope per pod churned, in bytes. */
  rssGrowthPerPodBytes: number;
  liveHeapFirstRoundMiB?: number;
  liveHeapLastRoundMiB?: number;
  /** Least-squares slope of the live heap over rounds 2 to the last, per round. */
  liveHeapGrowthPerRoundMiB?: number;
  liveHeapGrowthPerPodBytes?: number;
  /** Mean over the rounds. */
  deleteSeconds: number;
  deletesPerSecond: number;
  /**
   * The tool's requests on pods and their subresources from the first delete of each round until
   * its last pod was gone, per pod deleted, over all rounds, by verb and resource (audit log).
   */
  podRequestsPerDelete: number;
  podRequestsPerDeleteByRequest: Record<string, number>;
  peakRssMiB: number;
  perRound: Round[];
}

/** The least-squares slope of `ys` against 0, 1, 2…; 0 for fewer than two. */
export function slope(ys: readonly number[]): number {
  const n = ys.length;
  if (n < 2) return 0;
  const meanX = (n - 1) / 2;
  const meanY = ys.reduce((a, b) => a + b, 0) / n;
  let num = 0;
  let den = 0;
  ys.forEach((y, x) => {
    num += (x - meanX) * (y - meanY);
    den += (x - meanX) ** 2;
  });
  return num / den;
}

/** The bytes of every object in a heap snapshot: what was live after the full collection V8 ran first. */
export function snapshotBytes(snapshot: HeapSnapshot): number {
  const fields = snapshot.snapshot.meta.node_fields;
  const size = fields.indexOf("self_size");
  let bytes = 0;
  for (let i = size; i < snapshot.nodes.length; i += fields.length) bytes += snapshot.nodes[i] ?? 0;
  return bytes;
}

/** Has devicelet write a heap snapshot into HEAP_DIR, named for `round`; resolves with its live MiB. */
async function liveHeapMiB(pid: number, round: number): Promise<number> {
  const written = () =>
    readdirSync(HEAP_DIR).filter((f) => f.endsWith(".heapsnapshot") && !f.startsWith("round-"));
  process.kill(pid, "SIGUSR2");
  let text = "";
  await waitUntil(
    "a heap snapshot of devicelet",
    () => {
      const [name] = written();
      if (name === undefined) return false;
      text = readFileSync(path.join(HEAP_DIR, name), "utf8");
      if (!text.endsWith("]}")) return false;
      renameSync(path.join(HEAP_DIR, name), path.join(HEAP_DIR, `round-${round}.heapsnapshot`));
      return true;
    },
    120_000,
    500,
  );
  return snapshotBytes(JSON.parse(text) as HeapSnapshot) / 2 ** 20;
}

/** Pods left in `namespace`, from one page of one: the API server counts the rest. */
async function podsLeft(api: BenchApi, namespace: string): Promise<number> {
  const page = await api.get<{ items: unknown[]; metadata: { remainingItemCount?: number } }>(
    `/api/v1/namespaces/${namespace}/pods?limit=1`,
  );
  return (page?.items.length ?? 0) + (page?.metadata.remainingItemCount ?? 0);
}

/** The requests of `count` on pods and their subresources (`delete pods`, `patch pods/status`). */
export function podRequests(count: AuditCount): Record<string, number> {
  return Object.fromEntries(
    Object.entries(count.byRequest).filter(([request]) => /^\S+ pods(\/|$)/.test(request)),
  );
}

const sum = (counts: Record<string, number>) => Object.values(counts).reduce((a, b) => a + b, 0);

async function measure(o: {
  tool: Fleet["tool"];
  id: string;
  api: BenchApi;
  audit: AuditTail;
}): Promise<Row> {
  const { api, audit } = o;
  const options = { api, id: o.id, nodes: NODES, podsPerNode: PODS_PER_NODE };
  rmSync(HEAP_DIR, { recursive: true, force: true });
  mkdirSync(HEAP_DIR, { recursive: true });
  const fleet =
    o.tool === "kwok"
      ? await startKwok(options)
      : await startMockDevicelet({
          ...options,
          nodeFlags: LIVE_HEAP ? ["--heapsnapshot-signal=SIGUSR2", `--diagnostic-dir=${HEAP_DIR}`] : [],
        });
  const rounds: Round[] = [];
  const deleteRequests: Record<string, number> = {};
  try {
    await waitForQuietControlPlane();
    const before = memoryMiB(fleet.pid);
    for (let r = 0; r < ROUNDS; r++) {
      const namespace = `${o.id}-${o.tool}-${r}`;
      const run = await runBoundPods({ api, fleet, namespace, pods: PODS });
      const deleting = performance.now();
      const deletingWall = Date.now();
      await inPool(PODS, concurrency, (i) =>
        api.delete(`/api/v1/namespaces/${namespace}/pods/${POD_PREFIX}${i}`),
      );
      await waitUntil(
        `every pod of ${namespace} gone`,
        async () => {
          if (!fleet.alive())
            throw new Error(`${o.tool} exited while its pods were deleted: ${fleet.howItEnded()}`);
          return (await podsLeft(api, namespace)) === 0;
        },
        120_000 + PODS * 20,
        500,
      );
      const deleteSeconds = (performance.now() - deleting) / 1000;
      const goneWall = Date.now();
      await api.delete(`/api/v1/namespaces/${namespace}`);
      await sleep(SETTLE_SECONDS * 1000);
      // Long past the audit batch that covers the round's end: settle reads it without waiting.
      await audit.settle(goneWall);
      const requests = podRequests(audit.count(fleet.username, deletingWall, goneWall));
      for (const [request, n] of Object.entries(requests))
        deleteRequests[request] = (deleteRequests[request] ?? 0) + n;
      const heap = await fleet.heapNow?.();
      const rssMiB = memoryMiB(fleet.pid).rssMiB;
      const live = o.tool === "devicelet" && LIVE_HEAP ? await liveHeapMiB(fleet.pid, r + 1) : undefined;
      // Only the second round's and the last's are kept (for heap-owners): the one before goes.
      if (r >= 1 && r !== 2) rmSync(path.join(HEAP_DIR, `round-${r}.heapsnapshot`), { force: true });
      rounds.push({
        runningSeconds: run.allRunningSeconds,
        deleteSeconds: round(deleteSeconds, 2),
        rssMiB,
        ...(heap ? { heapUsedMiB: round(heap.usedMiB, 1) } : {}),
        ...(live === undefined ? {} : { liveHeapMiB: round(live, 2) }),
        podRequestsPerDelete: round(sum(requests) / PODS, 2),
      });
      console.log(`${o.tool} round ${r + 1}/${ROUNDS}:`, rounds.at(-1));
    }
    const rss = rounds.map((x) => x.rssMiB);
    const live = rounds.flatMap((x) => (x.liveHeapMiB === undefined ? [] : [x.liveHeapMiB]));
    const growth = slope(rss.slice(1));
    const deleteSeconds = rounds.reduce((a, x) => a + x.deleteSeconds, 0) / rounds.length;
    return {
      tool: o.tool,
      rounds: ROUNDS,
      podsPerRound: PODS,
      rssBeforeMiB: round(before.rssMiB, 1),
      rssFirstRoundMiB: round(rss[0] ?? 0, 1),
      rssLastRoundMiB: round(rss.at(-1) ?? 0, 1),
      rssGrowthPerRoundMiB: round(growth, 2),
      rssGrowthPerPodBytes: Math.round((growth * 2 ** 20) / PODS),
      ...(live.length === rounds.length
        ? {
            liveHeapFirstRoundMiB: live[0],
            liveHeapLastRoundMiB: live.at(-1),
            liveHeapGrowthPerRoundMiB: round(slope(live.slice(1)), 3),
            liveHeapGrowthPerPodBytes: Math.round((slope(live.slice(1)) * 2 ** 20) / PODS),
          }
        : {}),
      deleteSeconds: round(deleteSeconds, 2),
      deletesPerSecond: round(PODS / deleteSeconds, 1),
      podRequestsPerDelete: round(sum(deleteRequests) / (PODS * ROUNDS), 2),
      podRequestsPerDeleteByRequest: Object.fromEntries(
        Object.entries(deleteRequests).map(([request, n]) => [request, round(n / (PODS * ROUNDS), 2)]),
      ),
      peakRssMiB: memoryMiB(fleet.pid).peakRssMiB,
      perRound: rounds,
    };
  } finally {
    await fleet.stop();
    await fleet.removeNodes();
  }
}

export async function benchChurn(): Promise<void> {
  const stop = await controlPlane();
  const api = BenchApi.admin();
  const id = `ch-${randomBytes(3).toString("hex")}`;
  const audit = await AuditTail.start(["devicelet", "kwok"]);
  try {
    console.log(`churn: ${ROUNDS} rounds of ${PODS} pods bound to ${NODES} nodes, created and deleted`);
    const { rows, devicelet, kwok } = await measureEach(TOOLS, (tool) => measure({ tool, id, api, audit }));
    const ratios = devicelet &&
      kwok && {
        rssGrowthPerRoundMiB: ratio(devicelet.rssGrowthPerRoundMiB, kwok.rssGrowthPerRoundMiB),
        deletesPerSecond: ratio(devicelet.deletesPerSecond, kwok.deletesPerSecond),
        rssLastRoundMiB: ratio(devicelet.rssLastRoundMiB, kwok.rssLastRoundMiB),
        podRequestsPerDelete: ratio(devicelet.podRequestsPerDelete, kwok.podRequestsPerDelete),
      };
    console.log(`\nchurn benchmark: ${ROUNDS} rounds of ${PODS} pods over ${NODES} nodes, same run\n`);
    console.table(rows.map(({ perRound: _r, podRequestsPerDeleteByRequest: _q, ...r }) => r));
    for (const row of rows)
      console.log(`${row.tool} requests on pods per delete:`, row.podRequestsPerDeleteByRequest);
    if (ratios) console.log("ratio devicelet/kwok:", ratios);
    writeFileSync(
      path.join(testenvDir, "bench-churn.json"),
      JSON.stringify(
        { date: new Date().toISOString(), rounds: ROUNDS, pods: PODS, nodes: NODES, rows, ratios },
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
