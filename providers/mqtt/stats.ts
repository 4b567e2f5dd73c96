/**
 * DeviceStatsStore: the latest stats sample of each device, and the one before it to derive CPU
 * rates (docs/protocol.md § 3.10), turned into the provider contract's {@link DeviceStats} on
 * request. Never a round trip to the device: `get` answers from what arrived.
 *
 * Samples of a boot other than the device's current one, and repeats or reorderings within a boot
 * (seq not above the last sample's), are dropped. A device that is not online, or whose latest
 * sample is older than three of its intervals, has no measurement: its pods are listed by the
 * kubelet API with what else is known.
 *
 *   const stats = new DeviceStatsStore({ device: (id) => ..., podRef: (id, uid) => ... });
 *   stats.record(message);        // "ok" | "stale"
 *   stats.get("gw-1");            // DeviceStats, or undefined for an unknown device
 */
import { SESSION_DEFAULTS, type StatsCpu, type StatsMessage } from "../../src/protocol/types.ts";
import type { ContainerStats, CpuStats, DeviceStats, PodRef, PodStats } from "../../src/provider/types.ts";

export interface StatsDevice {
  readonly online: boolean;
  /** The device's current boot, from its birth. */
  readonly bootId: string | undefined;
  /** Its `capabilities.statsIntervalSeconds`, when announced. */
  readonly intervalSeconds: number | undefined;
}

export interface DeviceStatsStoreOptions {
  /** The device as the registry knows it; undefined for a device never seen. */
  readonly device: (deviceId: string) => StatsDevice | undefined;
  /** The pod a uid of the device's desired document belongs to. */
  readonly podRef: (deviceId: string, podUid: string) => PodRef | undefined;
  readonly now?: () => number;
}

interface Samples {
  latest: StatsMessage;
  previous: StatsMessage | undefined;
}

/** Samples older than this many intervals are not served. */
const STALE_INTERVALS = 3;

export class DeviceStatsStore {
  readonly #o: DeviceStatsStoreOptions;
  readonly #now: () => number;
  readonly #samples = new Map<string, Samples>();

  constructor(options: DeviceStatsStoreOptions) {
    this.#o = options;
    this.#now = options.now ?? Date.now;
  }

  /** Keeps a sample; "stale" when it is of another boot or not newer than the latest. */
  record(message: StatsMessage): "ok" | "stale" {
    const device = this.#o.device(message.deviceId);
    if (device?.bootId !== message.bootId) return "stale";
    const kept = this.#samples.get(message.deviceId);
    if (kept && kept.latest.bootId === message.bootId && message.seq <= kept.latest.seq) return "stale";
    const previous = kept?.latest.bootId === message.bootId ? kept.latest : undefined;
    // The one before is kept for the rates of what this one lists: a pod gone since is let go.
    const listed = new Set(message.pods.map((p) => p.podUid));
    this.#samples.set(message.deviceId, {
      latest: message,
      previous: previous && { ...previous, pods: previous.pods.filter((p) => listed.has(p.podUid)) },
    });
    return "ok";
  }

  /** Forgets a device's samples (it went away, or was retired). */
  forget(deviceId: string): void {
    this.#samples.delete(deviceId);
  }

  /** What the device last reported, or undefined for a device never seen. */
  get(deviceId: string): DeviceStats | undefined {
    const device = this.#o.device(deviceId);
    if (!device) return undefined;
    const kept = this.#samples.get(deviceId);
    if (!kept || !device.online || kept.latest.bootId !== device.bootId) return { pods: [] };
    const { latest, previous } = kept;
    const at = Date.parse(latest.at);
    const interval = device.intervalSeconds ?? SESSION_DEFAULTS.statsIntervalSeconds;
    if (!(this.#now() - at <= STALE_INTERVALS * interval * 1000)) return { pods: [] };
    const time = new Date(at);
    const dt = previous ? (at - Date.parse(previous.at)) / 1000 : 0;
    const node = latest.node;
    const stats: { node?: DeviceStats["node"]; pods: PodStats[] } = { pods: [] };
    if (node) {
      stats.node = {
        time,
        ...(node.startTime === undefined ? {} : { startTime: new Date(node.startTime) }),
        ...(node.cpu ? { cpu: cpuOf(node.cpu, previous?.node?.cpu, dt) } : {}),
        ...(node.memory ? { memory: { ...node.memory } } : {}),
      };
    }
    for (const pod of latest.pods) {
      const ref = this.#o.podRef(deviceId, pod.podUid);
      if (!ref) continue;
      const before = previous?.pods.find((p) => p.podUid === pod.podUid);
      const containers = pod.apps.map((app): ContainerStats => {
        const prior = before?.apps.find((a) => a.app === app.app && a.startTime === app.startTime);
        return {
          name: app.app,
          time,
          ...(app.startTime === undefined ? {} : { startTime: new Date(app.startTime) }),
          ...(app.cpu ? { cpu: cpuOf(app.cpu, prior?.cpu, dt) } : {}),
          ...(app.memory ? { memory: { ...app.memory } } : {}),
        };
      });
      const starts = containers.flatMap((c) => (c.startTime ? [c.startTime.getTime()] : []));
      stats.pods.push({
        pod: ref,
        ...(starts.length === 0 ? {} : { startTime: new Date(Math.min(...starts)) }),
        containers,
      });
    }
    return stats;
  }
}

/** The counter, with a rate when the previous sample's counter is lower (same boot and instance). */
function cpuOf(now: StatsCpu, before: StatsCpu | undefined, seconds: number): CpuStats {
  const grew = before !== undefined && seconds > 0 && now.usageCoreNanoSeconds >= before.usageCoreNanoSeconds;
  return grew
    ? {
        usageCoreNanoSeconds: now.usageCoreNanoSeconds,
        usageNanoCores: Math.round((now.usageCoreNanoSeconds - before.usageCoreNanoSeconds) / seconds),
      }
    : { usageCoreNanoSeconds: now.usageCoreNanoSeconds };
}
