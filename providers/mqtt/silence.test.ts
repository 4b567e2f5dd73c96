import { describe, expect, it } from "vitest";
import type { PresenceMessage } from "../../src/protocol/types.ts";
import { DeviceRegistry } from "./devices.ts";
import type { BirthDevice } from "./generations.ts";
import { SilenceWatch } from "./silence.ts";

const T0 = Date.parse("2026-03-01T12:00:00Z");
const MIN = 60_000;

const birth = (gateway?: string): BirthDevice => ({
  deviceClass: "gateway",
  os: "linux",
  arch: "arm64",
  ...(gateway ? { gateway } : {}),
  capacity: { pods: "10" },
  capabilities: { maxMessageBytes: 65536, encodings: ["json"], runtime: "process", logs: false, exec: false },
});

const presence = (
  deviceId: string,
  state: PresenceMessage["state"],
  seq: number,
  extra: { gateway?: string; wakeAt?: string } = {},
): PresenceMessage => ({
  protocol: 1,
  kind: "presence",
  deviceId,
  state,
  bootId: "b1",
  seq,
  sentAt: "2026-03-01T12:00:00Z",
  ...(state === "online" ? { device: birth(extra.gateway) } : {}),
  ...(extra.wakeAt === undefined ? {} : { wakeAt: extra.wakeAt }),
});

/** A registry and a watch on one clock; devicelet connected to the broker at T0. */
function setup(connected = true) {
  let now = T0;
  const reg = new DeviceRegistry({ onChange: () => undefined, now: () => new Date(now) });
  const silenced: string[] = [];
  const watch = new SilenceWatch({
    registry: reg,
    silentAfterMs: 30 * MIN,
    wakeToleranceMs: 10 * MIN,
    connectedSince: () => (connected ? T0 : undefined),
    onSilent: (id) => silenced.push(id),
    now: () => now,
  });
  return { reg, watch, silenced, at: (ms: number) => (now = T0 + ms) };
}

describe("SilenceWatch", () => {
  it("makes a device known only from its retained birth lost once nothing live came in time", () => {
    const { reg, watch, silenced, at } = setup();
    reg.presence(presence("gw", "online", 1), { retained: true });
    reg.presence(presence("mcu", "online", 1, { gateway: "gw" }), { retained: true });
    at(30 * MIN - 1);
    expect(watch.sweep()).toEqual([]);
    expect(reg.effectivePresence("gw")).toBe("online");
    at(30 * MIN);
    expect(watch.sweep()).toEqual(["gw", "mcu"]);
    expect(silenced).toEqual(["gw", "mcu"]);
    expect(reg.info("gw")?.connected).toBe(false);
    expect(reg.effectivePresence("mcu")).toBe("lost");
  });

  it("counts from the device's last live message", () => {
    const { reg, watch, at } = setup();
    reg.presence(presence("gw", "online", 1), { retained: true });
    at(20 * MIN);
    reg.heard("gw");
    at(45 * MIN);
    expect(watch.sweep()).toEqual([]);
    at(50 * MIN);
    expect(watch.sweep()).toEqual(["gw"]);
  });

  it("brings a silent device back when it is heard from again", () => {
    const { reg, watch, at } = setup();
    reg.presence(presence("gw", "online", 1), { retained: true });
    at(31 * MIN);
    watch.sweep();
    expect(reg.effectivePresence("gw")).toBe("lost");
    expect(reg.revive("gw")).toBe(true);
    expect(reg.effectivePresence("gw")).toBe("online");
    // A device lost by its will is not revived by a stray message: only a birth brings it back.
    reg.presence(presence("gw", "lost", 1), { retained: false });
    expect(reg.revive("gw")).toBe(false);
    expect(reg.effectivePresence("gw")).toBe("lost");
  });

  it("leaves a sleeping device alone until its wake time plus the tolerance", () => {
    const { reg, watch, at } = setup();
    const wakeAt = new Date(T0 + 60 * MIN).toISOString();
    reg.presence(presence("m", "sleeping", 2, { wakeAt }), { retained: true });
    reg.presence(presence("n", "sleeping", 2), { retained: true }); // no wake time: exempt
    at(69 * MIN);
    expect(watch.sweep()).toEqual([]);
    at(70 * MIN);
    expect(watch.sweep()).toEqual(["m"]);
    at(1000 * MIN);
    expect(watch.sweep()).toEqual([]);
    expect(reg.effectivePresence("n")).toBe("sleeping");
  });

  it("judges nothing while devicelet is not connected to the broker", () => {
    const { reg, watch, at } = setup(false);
    reg.presence(presence("gw", "online", 1), { retained: true });
    at(1000 * MIN);
    expect(watch.sweep()).toEqual([]);
    expect(reg.effectivePresence("gw")).toBe("online");
  });
});
