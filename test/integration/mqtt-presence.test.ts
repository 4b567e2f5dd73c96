/**
 * Device presence through the MQTT provider (docs/architecture.md, decisions 1 and 5), with the real CLI, a
 * real Mosquitto and simulated devices:
 * - a device that reboots (new boot id) stays online when a late last will of its old boot
 *   arrives afterwards — retained on `state`, as a broker would publish it;
 * - a gateway that is lost takes its microcontroller with it (node and pod show it), and both
 *   come back when the gateway is born again;
 * - a sleeping microcontroller is not lost: its new pod waits as `DeviceSleeping`, its node says
 *   DeviceConnected False, and the pod runs once it wakes.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { PresenceMessage } from "../../src/protocol/types.ts";
import { eventually } from "../support/eventually.ts";
import { apply, getJson } from "../support/kubectl.ts";
import { barePod, deviceConnectedOf } from "../support/mqtt.ts";
import { mqttScene } from "../support/scene.ts";
import { uniqueName } from "../support/testenv.ts";
import { condition, isReady, type PodJson } from "../support/workloads.ts";

const id = uniqueName("mqpr");
const ns = id;
const rebooter = `${id}-gw-r`;
const gw = `${id}-gw-p`;
const child = `${id}-gw-p-mcu-0`;
const sleeper = `${id}-mcu-s`;
const scene = mqttScene({
  id,
  devices: [
    { id: rebooter, kind: "gateway" },
    { id: gw, kind: "gateway" },
    { id: child, kind: "mcu", gateway: gw },
    { id: sleeper, kind: "mcu" },
  ],
});

// start() resolves once all four devices are nodes.
beforeAll(() => scene.start());
afterAll(() => scene.stop());

const getPod = (name: string) => getJson<PodJson>(["pod", name, "-n", ns]);
const bare = (name: string, node: string) => barePod({ namespace: ns, testId: id, name, node });
const connectedOf = deviceConnectedOf;

describe("mqtt provider: presence", () => {
  it("keeps a rebooted device online when a late will from its old boot arrives", async () => {
    await apply(bare("survivor", rebooter));
    await eventually(async () => expect(isReady(await getPod("survivor"))).toBe(true));
    const oldBoot = scene.device(rebooter).bootId;
    await scene.device(rebooter).reboot();
    await eventually(() => {
      expect(scene.device(rebooter).bootId).not.toBe(oldBoot);
      expect(scene.device(rebooter).online).toBe(true);
    });
    await eventually(async () => expect(isReady(await getPod("survivor"))).toBe(true), { timeoutMs: 30_000 });
    const lateWill: PresenceMessage = {
      protocol: 1,
      kind: "presence",
      deviceId: rebooter,
      state: "lost",
      bootId: oldBoot,
      seq: 1_000_000,
      sentAt: new Date().toISOString(),
    };
    await scene.device(rebooter).publishRaw("state", JSON.stringify(lateWill), { retain: true });
    // devicelet has seen and ignored it...
    await eventually(() => {
      const ignored = scene.devicelet
        .logLines()
        .filter((l) => l.msg === "ignored presence" && l.device === rebooter && l.seq === 1_000_000);
      expect(ignored.map((l) => l.verdict)).toEqual(["stale-will"]);
    });
    // ...and the device is still online, with its pod Running.
    expect(await connectedOf(rebooter)).toBe("True");
    const p = await getPod("survivor");
    expect(isReady(p)).toBe(true);
    expect(condition(p, "devicelet.dev/DeviceConnected")?.status).toBe("True");
  });

  it("makes a lost gateway's children lost, and brings them back with the gateway", async () => {
    await apply(bare("behind", child));
    await eventually(async () => expect(isReady(await getPod("behind"))).toBe(true));
    await scene.device(gw).goOffline();
    await eventually(
      async () => {
        expect(await connectedOf(gw)).toBe("False");
        expect(await connectedOf(child)).toBe("False");
        const p = await getPod("behind");
        expect(condition(p, "devicelet.dev/DeviceConnected")?.status).toBe("False");
        expect(condition(p, "Ready")?.status).toBe("False");
      },
      { timeoutMs: 30_000 },
    );
    await scene.device(gw).goOnline();
    await eventually(
      async () => {
        expect(await connectedOf(child)).toBe("True");
        expect(isReady(await getPod("behind"))).toBe(true);
      },
      { timeoutMs: 30_000 },
    );
  });

  it("treats a sleeping microcontroller as sleeping: its pod waits as DeviceSleeping, then runs", async () => {
    const wakeAt = new Date(Date.now() + 10 * 60_000);
    await scene.device(sleeper).sleep(wakeAt);
    await eventually(async () => expect(await connectedOf(sleeper)).toBe("False"), { timeoutMs: 30_000 });
    await apply(bare("napper", sleeper));
    await eventually(
      async () => {
        const p = await getPod("napper");
        expect(p.status.phase).toBe("Pending");
        const waiting = p.status.containerStatuses?.[0]?.state.waiting;
        expect(waiting?.reason).toBe("DeviceSleeping");
        expect(waiting?.message).toContain(wakeAt.toISOString());
      },
      { timeoutMs: 30_000 },
    );
    await scene.device(sleeper).goOnline();
    await eventually(async () => expect(isReady(await getPod("napper"))).toBe(true), { timeoutMs: 30_000 });
  });
});
