import pino from "pino";
import { describe, expect, it } from "vitest";
import type { DeviceInfo, DeviceRetirement } from "../provider/types.ts";
import { afterNodeDeleted } from "./decommission.ts";

const device = (connected: boolean): DeviceInfo => ({
  id: "gw-1",
  deviceClass: "gateway",
  os: "linux",
  arch: "arm64",
  labels: {},
  capacity: { pods: "10" },
  addresses: [],
  connected,
});

/** A provider's decommissioning that answers `outcome` (or rejects with it) and counts calls. */
const retirement = (outcome: "retired" | "online" | Error) => {
  const calls: string[] = [];
  const r: DeviceRetirement = {
    retireDevice: (deviceId) => {
      calls.push(deviceId);
      return outcome instanceof Error ? Promise.reject(outcome) : Promise.resolve(outcome);
    },
  };
  return { r, calls };
};

const run = (r: DeviceRetirement | undefined, connected: boolean) =>
  afterNodeDeleted({
    retirement: r,
    deviceId: "gw-1",
    device: device(connected),
    node: "gw-1",
    logger: pino({ level: "silent" }),
  });

describe("afterNodeDeleted", () => {
  it("retires a device that is away", async () => {
    const { r, calls } = retirement("retired");
    expect(await run(r, false)).toBe("retired");
    expect(calls).toEqual(["gw-1"]);
  });

  it("registers again, without asking the provider, a device that is online", async () => {
    const { r, calls } = retirement("retired");
    expect(await run(r, true)).toBe("register");
    expect(calls).toEqual([]);
  });

  it("registers again when the provider cannot retire devices", async () => {
    expect(await run(undefined, false)).toBe("register");
  });

  it("registers again a device that came back while it was being retired", async () => {
    expect(await run(retirement("online").r, false)).toBe("register");
  });

  it("throws, naming the device, when retiring failed (the caller tries again)", async () => {
    const cause = new Error("broker unreachable");
    const failed = run(retirement(cause).r, false);
    await expect(failed).rejects.toThrow(/decommissioning device gw-1 .*broker unreachable/);
    await expect(failed).rejects.toMatchObject({ cause });
  });
});
