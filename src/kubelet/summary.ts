/**
 * `/stats/summary`: the kubelet's `Summary` (k8s.io/kubelet/pkg/apis/stats/v1alpha1) for one node,
 * built from the provider's {@link DeviceStats} and the node's pods as the API server has them.
 * Only the fields a device can know are filled: node and pod/container CPU and memory, start
 * times. A pod the device reports nothing for is listed with its reference, start time and
 * containers, without usage, as the issue asks ("a pod with no stats source answers with what is
 * known"); a provider without stats gives the node and its pods with no usage at all.
 *
 * `usageNanoCores` is a rate; devices often report only the cumulative counter, so
 * {@link CpuRates} derives it from two successive samples, as cAdvisor does.
 *
 *   const rates = new CpuRates();
 *   const summary = buildSummary({ nodeName, nodeStartTime, stats, pods, rates, now });
 */
import type { Pod } from "../kube/index.ts";
import type { CpuStats, DeviceStats, MemoryStats, PodStats, ResourceSample } from "../provider/types.ts";

export interface CpuStatsJson {
  readonly time: string;
  readonly usageNanoCores?: number;
  readonly usageCoreNanoSeconds?: number;
}

export interface MemoryStatsJson {
  readonly time: string;
  readonly availableBytes?: number;
  readonly usageBytes?: number;
  readonly workingSetBytes?: number;
  readonly rssBytes?: number;
}

export interface ContainerStatsJson {
  readonly name: string;
  readonly startTime: string;
  readonly cpu?: CpuStatsJson;
  readonly memory?: MemoryStatsJson;
}

export interface PodStatsJson {
  readonly podRef: { readonly name: string; readonly namespace: string; readonly uid: string };
  readonly startTime: string;
  readonly containers: readonly ContainerStatsJson[];
  readonly cpu?: CpuStatsJson;
  readonly memory?: MemoryStatsJson;
}

/** The kubelet's `Summary`, with the fields devicelet fills. */
export interface SummaryJson {
  readonly node: {
    readonly nodeName: string;
    readonly startTime: string;
    readonly cpu?: CpuStatsJson;
    readonly memory?: MemoryStatsJson;
  };
  readonly pods: readonly PodStatsJson[];
}

/**
 * RFC 3339, at whole seconds as metav1.Time writes it, with milliseconds only when the time has
 * them (a measurement time: metrics-server's CPU rate needs them; Go's RFC 3339 parser accepts them).
 */
export const kubeTime = (d: Date): string =>
  d.getTime() % 1000 === 0 ? `${d.toISOString().slice(0, 19)}Z` : d.toISOString();

/** How long a CPU sample is kept for a series that is no longer reported. */
const RATE_TTL_MS = 10 * 60_000;

/**
 * The CPU rate (nanocores) of each series from two successive samples of its counter, when the
 * device gives only the counter. A sample at the same time as the last one gives the last rate; a
 * counter that went down (the app restarted) gives none until the next sample. Series not seen
 * for ten minutes are forgotten, so the map stays bounded by what devices report.
 */
export class CpuRates {
  readonly #last = new Map<string, { time: number; counter: number; rate?: number; seen: number }>();

  /** The rate of `key` at `sample.time`, given `cpu` then; `now` (ms) ages out stale series. */
  rate(key: string, time: Date, cpu: CpuStats, now: number): number | undefined {
    if (cpu.usageNanoCores !== undefined) return cpu.usageNanoCores;
    const t = time.getTime();
    const prev = this.#last.get(key);
    let rate: number | undefined;
    if (prev && prev.time === t && prev.counter === cpu.usageCoreNanoSeconds) rate = prev.rate;
    else if (prev && t > prev.time && cpu.usageCoreNanoSeconds >= prev.counter) {
      rate = Math.round(((cpu.usageCoreNanoSeconds - prev.counter) * 1000) / (t - prev.time));
    }
    if (!prev || t >= prev.time) {
      this.#last.set(key, {
        time: t,
        counter: cpu.usageCoreNanoSeconds,
        ...(rate === undefined ? {} : { rate }),
        seen: now,
      });
    }
    return rate;
  }

  /** Forgets series not reported for a while; call once per request. */
  prune(now: number): void {
    for (const [key, v] of this.#last) if (now - v.seen > RATE_TTL_MS) this.#last.delete(key);
  }

  get size(): number {
    return this.#last.size;
  }
}

export interface SummaryInput {
  readonly nodeName: string;
  /** When the device started, if it said; else when its node was registered (the best known). */
  readonly nodeStartTime: Date;
  /** The device's stats; undefined when the provider has none (or none for this device yet). */
  readonly stats: DeviceStats | undefined;
  /** The node's pods as the API server has them. */
  readonly pods: readonly Pod[];
  readonly rates: CpuRates;
  /** Now, in ms (ages out old CPU samples). */
  readonly now: number;
}

/** The node's Summary: see the module doc. */
export function buildSummary(input: SummaryInput): SummaryJson {
  const { nodeName, stats, rates, now } = input;
  rates.prune(now);
  const node = stats?.node;
  const nodeCpu = node ? cpuJson(node, rates, `${nodeName}|`, now) : undefined;
  const nodeMemory = node ? memoryJson(node) : undefined;
  const measured = new Map((stats?.pods ?? []).map((p) => [p.pod.uid, p]));
  const pods: PodStatsJson[] = [];
  const listed = new Set<string>();
  for (const pod of input.pods) {
    const uid = pod.metadata?.uid ?? "";
    const podStats = measured.get(uid);
    if (!podStats && (pod.status?.phase === "Succeeded" || pod.status?.phase === "Failed")) continue;
    listed.add(uid);
    pods.push(podJson(nodeName, pod, podStats, rates, now));
  }
  // Pods the device still measures but the API server no longer has (being deleted) stay listed.
  for (const podStats of stats?.pods ?? []) {
    if (!listed.has(podStats.pod.uid)) pods.push(podJson(nodeName, undefined, podStats, rates, now));
  }
  return {
    node: {
      nodeName,
      startTime: kubeTime(node?.startTime ?? input.nodeStartTime),
      ...(nodeCpu ? { cpu: nodeCpu } : {}),
      ...(nodeMemory ? { memory: nodeMemory } : {}),
    },
    pods,
  };
}

function podJson(
  nodeName: string,
  pod: Pod | undefined,
  stats: PodStats | undefined,
  rates: CpuRates,
  now: number,
): PodStatsJson {
  const ref = stats?.pod ?? {
    name: pod?.metadata?.name ?? "",
    namespace: pod?.metadata?.namespace ?? "",
    uid: pod?.metadata?.uid ?? "",
  };
  const podStart =
    stats?.startTime ??
    dateOf(pod?.status?.startTime) ??
    dateOf(pod?.metadata?.creationTimestamp) ??
    new Date(now);
  const key = `${nodeName}|${ref.namespace}/${ref.name}/${ref.uid}`;
  const byName = new Map((stats?.containers ?? []).map((c) => [c.name, c]));
  const names = [...(pod?.spec?.containers ?? []).map((c) => c.name), ...byName.keys()];
  const containers = [...new Set(names)].map((name): ContainerStatsJson => {
    const c = byName.get(name);
    const running = pod?.status?.containerStatuses?.find((s) => s.name === name)?.state?.running?.startedAt;
    const cpu = c ? cpuJson(c, rates, `${key}|${name}`, now) : undefined;
    const memory = c ? memoryJson(c) : undefined;
    return {
      name,
      startTime: kubeTime(c?.startTime ?? dateOf(running) ?? podStart),
      ...(cpu ? { cpu } : {}),
      ...(memory ? { memory } : {}),
    };
  });
  const total = stats?.total ?? (stats ? sumOf(stats) : undefined);
  const cpu = total ? cpuJson(total, rates, key, now, stats?.total ? undefined : containers) : undefined;
  const memory = total ? memoryJson(total) : undefined;
  return {
    podRef: { name: ref.name, namespace: ref.namespace, uid: ref.uid },
    startTime: kubeTime(podStart),
    containers,
    ...(cpu ? { cpu } : {}),
    ...(memory ? { memory } : {}),
  };
}

/**
 * CPU as the Summary has it. For a pod total summed from its containers, the rate is the sum of
 * the containers' rates (`summedFrom`), when each of them has one.
 */
function cpuJson(
  sample: ResourceSample,
  rates: CpuRates,
  key: string,
  now: number,
  summedFrom?: readonly ContainerStatsJson[],
): CpuStatsJson | undefined {
  const cpu = sample.cpu;
  // A counter that is not a count (negative, NaN) is a device's bug: leave it out, not pass it on.
  if (!cpu || !isCount(cpu.usageCoreNanoSeconds)) return undefined;
  let rate: number | undefined;
  if (summedFrom) {
    const parts = summedFrom.map((c) => c.cpu?.usageNanoCores);
    rate = parts.every((r) => r !== undefined) ? parts.reduce((a, b) => a + b, 0) : undefined;
  } else rate = rates.rate(key, sample.time, cpu, now);
  if (rate !== undefined && !isCount(rate)) rate = undefined;
  return {
    time: kubeTime(sample.time),
    ...(rate === undefined ? {} : { usageNanoCores: rate }),
    usageCoreNanoSeconds: cpu.usageCoreNanoSeconds,
  };
}

function memoryJson(sample: ResourceSample): MemoryStatsJson | undefined {
  const m = sample.memory;
  if (!m || !isCount(m.workingSetBytes)) return undefined;
  return {
    time: kubeTime(sample.time),
    ...(isCount(m.availableBytes) ? { availableBytes: m.availableBytes } : {}),
    ...(isCount(m.usageBytes) ? { usageBytes: m.usageBytes } : {}),
    workingSetBytes: m.workingSetBytes,
    ...(isCount(m.rssBytes) ? { rssBytes: m.rssBytes } : {}),
  };
}

/** A pod's totals from its containers: counters and bytes added up, at the latest container time. */
function sumOf(stats: PodStats): ResourceSample | undefined {
  const cs = stats.containers;
  if (cs.length === 0) return undefined;
  const time = new Date(Math.max(...cs.map((c) => c.time.getTime())));
  const withCpu = cs.filter((c) => c.cpu);
  const withMemory = cs.filter((c) => c.memory);
  const add = (values: (number | undefined)[]) =>
    values.every((v) => v !== undefined) ? values.reduce((a, b) => a + b, 0) : undefined;
  const cpu: CpuStats | undefined =
    withCpu.length === cs.length
      ? { usageCoreNanoSeconds: add(withCpu.map((c) => c.cpu?.usageCoreNanoSeconds)) ?? 0 }
      : undefined;
  let memory: MemoryStats | undefined;
  if (withMemory.length === cs.length) {
    const m = withMemory.map((c) => c.memory);
    const usage = add(m.map((x) => x?.usageBytes));
    const rss = add(m.map((x) => x?.rssBytes));
    memory = {
      workingSetBytes: add(m.map((x) => x?.workingSetBytes)) ?? 0,
      ...(usage === undefined ? {} : { usageBytes: usage }),
      ...(rss === undefined ? {} : { rssBytes: rss }),
    };
  }
  return { time, ...(cpu ? { cpu } : {}), ...(memory ? { memory } : {}) };
}

/** A finite number, zero or more: what a counter, a rate or a byte count can be. */
const isCount = (n: number | undefined): n is number => n !== undefined && Number.isFinite(n) && n >= 0;

function dateOf(value: unknown): Date | undefined {
  if (value instanceof Date) return value;
  if (typeof value !== "string" || value === "") return undefined;
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? undefined : d;
}
