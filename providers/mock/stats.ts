/**
 * Synthetic but plausible resource usage of a simulated device, for `kubectl top` and
 * `/stats/summary` (StatsCapability). Every running container uses a constant CPU rate (its CPU
 * request, else `stats.cpuMillicores`), so its cumulative counter grows linearly from the
 * instance's start and restarts from zero with it, as a cgroup's does; its working set is its
 * memory request, else half its limit, else `stats.memoryBytes`. The device adds its own
 * `nodeCpuMillicores` and `nodeMemoryBytes` from its boot. Everything is computed for one instant
 * `at` (now while the device is online, the moment it went away otherwise), so two calls at the
 * same time agree. The node's CPU counter integrates its current total rate from the previous
 * sample ({@link NodeCounter}), so it never goes back when a pod goes away.
 */
import { parseQuantity } from "../../src/base/quantity.ts";
import type { ContainerStats, DeviceStats, PodStats, ResourceSample } from "../../src/provider/types.ts";
import type { MockContainer, MockPod } from "./pod.ts";
import type { MockStatsConfig } from "./schema.ts";

/** Pods carrying this annotation (any value) have no stats source: getStats leaves them out. */
export const NO_STATS_ANNOTATION = "devicelet.dev/no-stats";

export interface DeviceStatsInput {
  readonly pods: Iterable<MockPod>;
  /** When the measurement is taken (epoch ms). */
  readonly at: number;
  /** When the device booted (epoch ms): the node's start and CPU counter origin. */
  readonly bootAt: number;
  /** The device's memory capacity as a quantity, for `availableBytes`. */
  readonly memoryCapacity?: string;
  readonly config: MockStatsConfig;
  /** The node counter of the previous call for this device, if any. */
  readonly previous?: NodeCounter;
}

/** The node's cumulative CPU counter at one instant, kept by the caller between calls. */
export interface NodeCounter {
  readonly at: number;
  readonly usageCoreNanoSeconds: number;
}

const NANOCORES_PER_MILLICORE = 1_000_000;

/** A quantity as a plain number (`250m` → 0.25), or undefined when absent or not one. */
const quantity = (text: string | undefined): number | undefined => {
  if (text === undefined) return undefined;
  const q = parseQuantity(text);
  return q === undefined ? undefined : Number(q.num) / Number(q.den);
};

/** CPU rate in millicores and working set in bytes of one container. */
export function containerUsage(
  c: MockContainer,
  config: MockStatsConfig,
): { millicores: number; workingSetBytes: number } {
  const { requests, limits } = c.spec.resources;
  const cpu = quantity(requests["cpu"]);
  const memRequest = quantity(requests["memory"]);
  const memLimit = quantity(limits["memory"]);
  return {
    millicores: cpu === undefined ? config.cpuMillicores : cpu * 1000,
    workingSetBytes: Math.round(memRequest ?? (memLimit === undefined ? config.memoryBytes : memLimit / 2)),
  };
}

/** A sample of `millicores` running since `since`, with `bytes` in use, taken at `at`. */
const sample = (at: number, since: number, millicores: number, bytes: number): ResourceSample => {
  const nanocores = Math.round(millicores * NANOCORES_PER_MILLICORE);
  return {
    time: new Date(at),
    cpu: {
      usageCoreNanoSeconds: Math.round((nanocores * Math.max(0, at - since)) / 1000),
      usageNanoCores: nanocores,
    },
    memory: { workingSetBytes: bytes, usageBytes: bytes, rssBytes: Math.round(bytes * 0.8) },
  };
};

/** The stats of one device and its pods at `input.at`, and the node counter to pass next time. */
export function deviceStats(input: DeviceStatsInput): { stats: DeviceStats; counter: NodeCounter } {
  const { at, config } = input;
  const pods: PodStats[] = [];
  let podMillicores = 0;
  let podBytes = 0;
  for (const pod of input.pods) {
    if (pod.stopped || NO_STATS_ANNOTATION in pod.workload.pod.annotations) continue;
    const containers: ContainerStats[] = [];
    for (const c of pod.containers()) {
      if (c.state.kind !== "running") continue;
      const started = c.state.startedAt.getTime();
      if (started > at) continue; // after the device went away: devicelet never heard of it
      const usage = containerUsage(c, config);
      podMillicores += usage.millicores;
      podBytes += usage.workingSetBytes;
      containers.push({
        name: c.spec.name,
        startTime: c.state.startedAt,
        ...sample(at, started, usage.millicores, usage.workingSetBytes),
      });
    }
    if (containers.length === 0) continue;
    const startTime = new Date(Math.min(...containers.map((c) => c.startTime?.getTime() ?? at)));
    pods.push({ pod: pod.ref, startTime, containers });
  }
  const nodeBytes = config.nodeMemoryBytes + podBytes;
  const capacity = quantity(input.memoryCapacity);
  const nanocores = Math.round((config.nodeCpuMillicores + podMillicores) * NANOCORES_PER_MILLICORE);
  const previous = input.previous;
  let counter: NodeCounter;
  if (previous === undefined) {
    // First sample: the device's own use since boot plus what its running containers used.
    const own = sample(at, input.bootAt, config.nodeCpuMillicores, 0).cpu?.usageCoreNanoSeconds ?? 0;
    const used = pods
      .flatMap((p) => p.containers)
      .reduce((n, c) => n + (c.cpu?.usageCoreNanoSeconds ?? 0), 0);
    counter = { at, usageCoreNanoSeconds: own + used };
  } else if (at <= previous.at) {
    counter = previous;
  } else {
    counter = {
      at,
      usageCoreNanoSeconds:
        previous.usageCoreNanoSeconds + Math.round((nanocores * (at - previous.at)) / 1000),
    };
  }
  const stats: DeviceStats = {
    node: {
      time: new Date(at),
      startTime: new Date(input.bootAt),
      cpu: { usageCoreNanoSeconds: counter.usageCoreNanoSeconds, usageNanoCores: nanocores },
      memory: {
        workingSetBytes: nodeBytes,
        usageBytes: nodeBytes,
        ...(capacity === undefined ? {} : { availableBytes: Math.max(0, Math.round(capacity) - nodeBytes) }),
      },
    },
    pods,
  };
  return { stats, counter };
}
