import { describe, expect, it } from "vitest";
import type { PresenceMessage, ReportedDocument } from "../../src/protocol/types.ts";
import type { DeviceInfo } from "../../src/provider/types.ts";
import { DeviceRegistry } from "./devices.ts";
import type { BirthDevice } from "./generations.ts";

const birthOf = (gateway?: string): BirthDevice => ({
  deviceClass: gateway ? "mcu" : "gateway",
  os: "linux",
  arch: "arm64",
  ...(gateway ? { gateway } : {}),
  labels: { site: "lab" },
  capacity: { cpu: "2", pods: "10" },
  capabilities: { maxMessageBytes: 65536, encodings: ["json"], runtime: "process", logs: true, exec: false },
});

const presence = (
  deviceId: string,
  state: PresenceMessage["state"],
  bootId: string,
  seq: number,
  gateway?: string,
): PresenceMessage => ({
  protocol: 1,
  kind: "presence",
  deviceId,
  state,
  bootId,
  seq,
  sentAt: "2026-01-01T00:00:00Z",
  ...(state === "online" ? { device: birthOf(gateway) } : {}),
  ...(state === "sleeping" ? { wakeAt: "2026-01-01T01:00:00Z" } : {}),
});

const report = (deviceId: string, bootId: string, seq: number): ReportedDocument => ({
  protocol: 1,
  kind: "reported",
  deviceId,
  bootId,
  seq,
  observedAt: "2026-01-01T00:00:00Z",
  epoch: null,
  observedGeneration: 0,
  appliedGeneration: 0,
  pods: [],
});

const registry = () => {
  const changes: DeviceInfo[] = [];
  const reg = new DeviceRegistry({ onChange: (i) => changes.push(i) });
  return { reg, changes };
};
const live = { retained: false };

describe("DeviceRegistry", () => {
  it("makes a node from a birth and keeps its info stable across reconnects", () => {
    const { reg, changes } = registry();
    reg.presence(presence("d", "online", "b1", 1), live);
    const first = reg.info("d");
    expect(first).toMatchObject({
      id: "d",
      connected: true,
      labels: { site: "lab" },
      capacity: { cpu: "2", pods: "10" },
    });
    reg.presence(presence("d", "lost", "b1", 1), live);
    expect(reg.info("d")?.connected).toBe(false);
    reg.presence(presence("d", "online", "b1", 5), live);
    const { connected: _c, lastSeen: _l, ...stable } = first ?? ({} as DeviceInfo);
    expect(reg.info("d")).toMatchObject({ ...stable, connected: true });
    expect(changes.map((c) => c.connected)).toEqual([true, false, true]);
  });

  it("ignores a will from an earlier boot", () => {
    const { reg } = registry();
    reg.presence(presence("d", "online", "b1", 2), live);
    reg.presence(presence("d", "online", "b2", 2), live); // rebooted
    expect(reg.presence(presence("d", "lost", "b1", 9), live)).toBe("stale-will");
    expect(reg.effectivePresence("d")).toBe("online");
    expect(reg.presence(presence("d", "lost", "b2", 2), live)).toBe("applied");
    expect(reg.effectivePresence("d")).toBe("lost");
  });

  it("honours the will a reconnecting MQTT library kept from the boot's first connection", () => {
    // MQTT.js and Paho fix the will at client creation: after reconnects it still carries the
    // first birth's seq (3), below the current birth's (7 and 11).
    const { reg } = registry();
    reg.presence(presence("d", "online", "b1", 3), live);
    expect(reg.presence(presence("d", "lost", "b1", 3), live)).toBe("applied");
    reg.presence(presence("d", "online", "b1", 7), live);
    reg.presence(presence("d", "online", "b1", 11), live);
    expect(reg.effectivePresence("d")).toBe("online");
    expect(reg.presence(presence("d", "lost", "b1", 3), live)).toBe("applied");
    expect(reg.effectivePresence("d")).toBe("lost");
    // A will below the boot's first birth cannot be this boot's: a replay, ignored.
    reg.presence(presence("d", "online", "b1", 12), live);
    expect(reg.presence(presence("d", "lost", "b1", 2), live)).toBe("stale-will");
    expect(reg.effectivePresence("d")).toBe("online");
  });

  it("honours any will of a boot first met through a retained message (its first birth is unknown)", () => {
    const { reg } = registry();
    reg.presence(presence("d", "online", "b1", 9), { retained: true }); // read at devicelet's start
    reg.presence(presence("d", "online", "b1", 14), live); // the device reconnects
    expect(reg.presence(presence("d", "lost", "b1", 1), live)).toBe("applied");
    expect(reg.effectivePresence("d")).toBe("lost");
  });

  it("orders by (bootId, seq) per topic: replays and older boots are stale, a birth resets", () => {
    const { reg } = registry();
    reg.presence(presence("d", "online", "b1", 1), live);
    expect(reg.order("d", "reported", "b1", 5)).toBe("ok");
    expect(reg.order("d", "reported", "b1", 5)).toBe("stale");
    expect(reg.order("d", "reported", "b1", 4)).toBe("stale");
    expect(reg.order("d", "ack", "b1", 3)).toBe("ok"); // another topic: its own order
    reg.presence(presence("d", "online", "b2", 1), live);
    expect(reg.order("d", "reported", "b1", 99)).toBe("stale");
    expect(reg.order("d", "reported", "b2", 2)).toBe("ok");
    expect(reg.order("d", "reported", "b3", 1)).toBe("unknown-boot");
  });

  it("replays a report that arrived before its boot's birth", () => {
    const { reg } = registry();
    reg.presence(presence("d", "online", "b1", 1), live);
    const early = report("d", "b2", 3);
    expect(reg.order("d", "reported", "b2", 3)).toBe("unknown-boot");
    reg.holdReport(early);
    reg.presence(presence("d", "online", "b2", 2), live);
    expect(reg.takePendingReport("d")).toBe(early);
    expect(reg.takePendingReport("d")).toBeUndefined();
  });

  it("makes the children of a lost gateway lost until the gateway is born again", () => {
    const { reg } = registry();
    reg.presence(presence("gw", "online", "g1", 1), live);
    reg.presence(presence("c", "online", "c1", 1, "gw"), live);
    expect(reg.effectivePresence("c")).toBe("online");
    reg.presence(presence("gw", "lost", "g1", 1), live);
    expect(reg.effectivePresence("c")).toBe("lost");
    expect(reg.info("c")?.connected).toBe(false);
    reg.presence(presence("gw", "online", "g1", 2), live);
    expect(reg.effectivePresence("c")).toBe("online");
  });

  it("keeps the children of a lost gateway lost when its will is read again, retained (a re-read)", () => {
    const { reg } = registry();
    reg.presence(presence("gw", "online", "g1", 1), live);
    reg.presence(presence("c", "online", "c1", 1, "gw"), live);
    reg.presence(presence("gw", "lost", "g1", 1), live);
    expect(reg.effectivePresence("c")).toBe("lost");
    reg.presence(presence("gw", "lost", "g1", 1), { retained: true }); // asked for again (reread.ts)
    expect(reg.effectivePresence("c")).toBe("lost");
    expect(reg.info("c")?.connected).toBe(false);
  });

  it("reads retained state at start: a child born before its gateway's retained will is lost", () => {
    const { reg } = registry();
    reg.presence(presence("gw", "lost", "g1", 0), { retained: true });
    reg.presence(presence("c", "online", "c1", 1, "gw"), { retained: true });
    expect(reg.effectivePresence("c")).toBe("lost");
    reg.presence(presence("c", "online", "c1", 2, "gw"), live); // the child re-births
    expect(reg.effectivePresence("c")).toBe("online");
  });

  it("treats a sleeping device as sleeping, not lost, and not connected", () => {
    const { reg } = registry();
    reg.presence(presence("m", "online", "b", 1), live);
    reg.presence(presence("m", "sleeping", "b", 2), live);
    expect(reg.effectivePresence("m")).toBe("sleeping");
    expect(reg.get("m")?.wakeAt).toBe("2026-01-01T01:00:00Z");
    expect(reg.info("m")?.connected).toBe(false);
  });

  it("drops a retired device's messages but a live birth, which puts it back in service", () => {
    const { reg } = registry();
    expect(reg.presence(presence("old", "online", "b1", 1), live)).toBeDefined();
    reg.retire("old");
    expect(reg.get("old")).toBeUndefined();
    expect(reg.order("old", "reported", "b1", 2)).toBe("stale");
    reg.holdReport(report("old", "b2", 1));
    expect(reg.presence(presence("old", "online", "b2", 1), { retained: true })).toBe("stale");
    expect(reg.get("old")).toBeUndefined();
    reg.presence(presence("old", "online", "b2", 1), live);
    expect(reg.info("old")).toMatchObject({ id: "old", connected: true });
    expect(reg.order("old", "reported", "b2", 2)).toBe("ok");
  });

  it("remembers the most recently retired devices only, as many as it is told", () => {
    const reg = new DeviceRegistry({ onChange: () => undefined, retiredRemembered: 2 });
    reg.retire("a");
    reg.retire("b");
    reg.retire("a"); // retired again: now the most recent, so "b" is the oldest
    reg.retire("c"); // one too many: "b" is forgotten
    // Forgotten: its next message is taken as any unknown device's, with no node.
    expect(reg.order("b", "reported", "b1", 1)).toBe("ok");
    expect(reg.info("b")).toBeUndefined();
    for (const id of ["a", "c"]) expect(reg.order(id, "reported", "b1", 1)).toBe("stale");
  });

  it("restores a stored birth for a device that is away", () => {
    const { reg, changes } = registry();
    reg.restore("away", birthOf());
    expect(reg.info("away")).toMatchObject({ id: "away", connected: false });
    expect(changes).toHaveLength(1);
  });
});
