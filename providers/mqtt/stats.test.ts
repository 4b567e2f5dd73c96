/**
 * DeviceStatsStore (docs/protocol.md § 3.10): CPU rates from the sample before, samples of another
 * boot or out of order dropped, nothing served for a device away or silent too long, and only the
 * pods of the device's desired document listed.
 */
import { describe, expect, it } from "vitest";
import type { StatsMessage } from "../../src/protocol/types.ts";
import type { PodRef } from "../../src/provider/types.ts";
import { DeviceStatsStore, type StatsDevice } from "./stats.ts";

const T0 = Date.parse("2026-03-01T12:00:00Z");
const ref = (uid: string): PodRef => ({ namespace: "ns", name: `pod-${uid}`, uid });

function sample(seq: number, seconds: number, pods: Record<string, number>, bootId = "boot-1"): StatsMessage {
  return {
    protocol: 1,
    kind: "stats",
    deviceId: "gw-1",
    bootId,
    seq,
    at: new Date(T0 + seconds * 1000).toISOString(),
    node: { cpu: { usageCoreNanoSeconds: seconds * 2e9 }, memory: { workingSetBytes: 1_000 } },
    pods: Object.entries(pods).map(([podUid, cpu]) => ({
      podUid,
      apps: [{ app: "app", startTime: "2026-03-01T11:00:00Z", cpu: { usageCoreNanoSeconds: cpu } }],
    })),
  };
}

function store(o: { device?: Partial<StatsDevice>; known?: string[]; now?: number } = {}) {
  let now = o.now ?? T0 + 10_000;
  const device: StatsDevice = { online: true, bootId: "boot-1", intervalSeconds: 5, ...o.device };
  const known = new Set(o.known ?? ["a", "b"]);
  const stats = new DeviceStatsStore({
    device: (id) => (id === "gw-1" ? device : undefined),
    podRef: (_, uid) => (known.has(uid) ? ref(uid) : undefined),
    now: () => now,
  });
  return { stats, setNow: (at: number) => (now = at) };
}

const usage = (stats: DeviceStatsStore, uid: string) =>
  stats.get("gw-1")?.pods.find((p) => p.pod.uid === uid)?.containers[0]?.cpu;

describe("DeviceStatsStore", () => {
  it("derives CPU rates from the sample before, per pod, once there is one", () => {
    const { stats } = store();
    expect(stats.record(sample(1, 0, { a: 1e9, b: 0 }))).toBe("ok");
    expect(usage(stats, "a")).toEqual({ usageCoreNanoSeconds: 1e9 });
    expect(stats.record(sample(2, 5, { a: 3.5e9, b: 5e8 }))).toBe("ok");
    // 2.5 core-seconds in 5 s: half a core.
    expect(usage(stats, "a")).toEqual({ usageCoreNanoSeconds: 3.5e9, usageNanoCores: 5e8 });
    expect(usage(stats, "b")).toEqual({ usageCoreNanoSeconds: 5e8, usageNanoCores: 1e8 });
    expect(stats.get("gw-1")?.node?.cpu).toEqual({ usageCoreNanoSeconds: 10e9, usageNanoCores: 2e9 });
  });

  it("has no rate for a pod the sample before did not list, though an older one did", () => {
    const { stats } = store();
    stats.record(sample(1, 0, { a: 1e9, b: 1e9 }));
    stats.record(sample(2, 5, { a: 2e9 }));
    stats.record(sample(3, 10, { a: 3e9, b: 4e9 }));
    expect(usage(stats, "b")).toEqual({ usageCoreNanoSeconds: 4e9 });
    expect(usage(stats, "a")).toEqual({ usageCoreNanoSeconds: 3e9, usageNanoCores: 2e8 });
  });

  it("drops a sample of another boot, a repeat and one out of order", () => {
    const { stats } = store();
    expect(stats.record(sample(5, 5, { a: 2e9 }))).toBe("ok");
    expect(stats.record(sample(5, 6, { a: 9e9 }))).toBe("stale");
    expect(stats.record(sample(4, 4, { a: 1e9 }))).toBe("stale");
    expect(stats.record(sample(6, 7, { a: 9e9 }, "boot-0"))).toBe("stale");
    expect(usage(stats, "a")).toEqual({ usageCoreNanoSeconds: 2e9 });
  });

  it("serves nothing for a device away, one silent for three intervals, or one never seen", () => {
    const away = store({ device: { online: false } });
    away.stats.record(sample(1, 0, { a: 1e9 }));
    expect(away.stats.get("gw-1")).toEqual({ pods: [] });
    const silent = store();
    silent.stats.record(sample(1, 0, { a: 1e9 }));
    silent.setNow(T0 + 15_000);
    expect(silent.stats.get("gw-1")?.pods).toHaveLength(1);
    silent.setNow(T0 + 15_001);
    expect(silent.stats.get("gw-1")).toEqual({ pods: [] });
    expect(silent.stats.get("gw-2")).toBeUndefined();
  });

  it("lists only the pods of the device's document, and nothing once the device is forgotten", () => {
    const { stats } = store({ known: ["a"] });
    stats.record(sample(1, 0, { a: 1e9, stray: 1e9 }));
    expect(stats.get("gw-1")?.pods.map((p) => p.pod)).toEqual([ref("a")]);
    stats.forget("gw-1");
    expect(stats.get("gw-1")).toEqual({ pods: [] });
  });
});
