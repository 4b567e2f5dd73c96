import pino from "pino";
import { describe, expect, it } from "vitest";
import type { DeviceNotice } from "../provider/types.ts";
import { DeviceNotices } from "./notices.ts";

/** DeviceNotices with a notifier that records what each device was told. */
const setup = () => {
  const told: { deviceId: string; reason: string }[] = [];
  const notices = new DeviceNotices({
    notifier: {
      notifyDevice: (deviceId: string, n: DeviceNotice) => told.push({ deviceId, reason: n.reason }),
    },
    logger: pino({ level: "silent" }),
  });
  return { notices, told };
};

const node = { name: "gw-1" };
const problems = [{ reason: "InvalidCapacity" as const, message: "capacity.cpu 1.5.5 is not a quantity" }];

describe("DeviceNotices", () => {
  it("tells a birth's problems once, and again only when they change", () => {
    const { notices, told } = setup();
    notices.birth("gw-1", node, problems);
    notices.birth("gw-1", node, problems);
    expect(told).toEqual([{ deviceId: "gw-1", reason: "InvalidCapacity" }]);
    notices.birth("gw-1", node, []);
    notices.birth("gw-1", node, problems);
    expect(told).toHaveLength(2);
  });

  it("tells a retired device's successor its problems and refusal afresh", () => {
    const { notices, told } = setup();
    notices.birth("gw-1", node, problems);
    notices.refused("gw-1", node, "the Node gw-1 is not devicelet's");
    expect(notices.isRefused("gw-1")).toBe(true);
    notices.forget("gw-1");
    expect(notices.isRefused("gw-1")).toBe(false);
    notices.birth("gw-1", node, problems);
    notices.refused("gw-1", node, "the Node gw-1 is not devicelet's");
    expect(told.map((t) => t.reason)).toEqual([
      "InvalidCapacity",
      "NodeNameTaken",
      "InvalidCapacity",
      "NodeNameTaken",
    ]);
  });
});
