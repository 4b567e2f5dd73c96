/**
 * The soak's faults: at seeded random times, one at a time, a fault of a random kind for a bounded,
 * random time, after which what it stopped is started again. Ends by itself at `until` (a fault in
 * progress is cut short and restored), or early when `signal` aborts, again restoring first.
 *
 *   const counts = await injectFaults({ random, until, targets, signal, log });
 *   counts;   // faults injected, by kind
 */
import { setTimeout as sleep } from "node:timers/promises";

export const FAULT_KINDS = [
  "devicelet-sigkill",
  "mosquitto-stop",
  "apiserver-stop",
  "devices-offline",
  "device-restart",
] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

/** What the faults act on; every `start*` must be safe to call after its `stop*`. */
export interface FaultTargets {
  killDevicelet(): Promise<void>;
  startDevicelet(): Promise<void>;
  stopBroker(): Promise<void>;
  startBroker(): Promise<void>;
  stopApiServer(signal: "SIGTERM" | "SIGKILL"): Promise<void>;
  startApiServer(): Promise<void>;
  /** Device ids that can be taken offline or restarted. */
  deviceIds(): string[];
  deviceOffline(id: string): Promise<void>;
  deviceOnline(id: string): Promise<void>;
  /** Power-cycles a device that is offline (it reconnects with a new boot id). */
  deviceRestart(id: string): Promise<void>;
}

/** Bounds, in seconds, of the wait between faults and of each kind's duration. */
export interface FaultTimes {
  readonly gap: readonly [number, number];
  readonly duration: Readonly<Record<FaultKind, readonly [number, number]>>;
}

export const defaultFaultTimes: FaultTimes = {
  gap: [10, 40],
  duration: {
    // A Lease may be a renew interval (10 s) old when its renewer goes away, the soak's
    // controller-manager marks a node Unknown 50 s (Kubernetes' default) after the last renewal it
    // saw, and after an API-server outage its informers take a while to see renewals again.
    // devicelet down, or the API server down, for longer than that margin makes a node Unknown in
    // any Kubernetes, whatever the kubelet does; so both stay within it, and "nodes ever NotReady"
    // measures devicelet, not the control plane's rule. Broker and device outages have no such
    // bound: devicelet must ride them out, however long.
    "devicelet-sigkill": [1, 10],
    "mosquitto-stop": [5, 120],
    "apiserver-stop": [5, 15],
    "devices-offline": [5, 90],
    "device-restart": [1, 30],
  },
};

export const between = (random: () => number, [lo, hi]: readonly [number, number]) =>
  lo + random() * (hi - lo);

export function pick<T>(random: () => number, items: readonly T[]): T {
  const item = items[Math.floor(random() * items.length)];
  if (item === undefined) throw new Error("pick: no items");
  return item;
}

/** Waits `ms` or until `signal` aborts, whichever is first; never throws. */
const wait = (ms: number, signal: AbortSignal) =>
  sleep(Math.max(0, ms), undefined, { signal }).catch(() => undefined);

export async function injectFaults(o: {
  random: () => number;
  /** Wall-clock ms at which the last fault must be over. */
  until: number;
  targets: FaultTargets;
  signal: AbortSignal;
  log: (line: string) => void;
  times?: FaultTimes;
}): Promise<Record<FaultKind, number>> {
  const times = o.times ?? defaultFaultTimes;
  const counts = Object.fromEntries(FAULT_KINDS.map((k) => [k, 0])) as Record<FaultKind, number>;
  const t = o.targets;
  for (;;) {
    await wait(between(o.random, times.gap) * 1000, o.signal);
    if (o.signal.aborted || Date.now() >= o.until) return counts;
    const kind = pick(o.random, FAULT_KINDS);
    const seconds = Math.min(between(o.random, times.duration[kind]), (o.until - Date.now()) / 1000);
    counts[kind]++;
    const hold = () => wait(seconds * 1000, o.signal);
    o.log(`fault ${kind} for ${seconds.toFixed(1)} s`);
    switch (kind) {
      case "devicelet-sigkill":
        await t.killDevicelet();
        await hold();
        await t.startDevicelet();
        break;
      case "mosquitto-stop":
        await t.stopBroker();
        await hold();
        await t.startBroker();
        break;
      case "apiserver-stop":
        await t.stopApiServer(o.random() < 0.5 ? "SIGKILL" : "SIGTERM");
        await hold();
        await t.startApiServer();
        break;
      case "devices-offline": {
        const ids = [...t.deviceIds()].sort(() => o.random() - 0.5).slice(0, 1 + Math.floor(o.random() * 4));
        o.log(`  offline: ${ids.join(", ")}`);
        await Promise.all(ids.map((id) => t.deviceOffline(id)));
        await hold();
        await Promise.all(ids.map((id) => t.deviceOnline(id)));
        break;
      }
      case "device-restart": {
        const id = pick(o.random, t.deviceIds());
        o.log(`  restart: ${id}`);
        await t.deviceOffline(id);
        await hold();
        await t.deviceRestart(id);
        break;
      }
    }
    o.log(`fault ${kind} over`);
  }
}
