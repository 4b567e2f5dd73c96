/**
 * docs/protocol.md §§ 5 and 8 with the real `devicelet run`, a real Mosquitto and simulated devices:
 * - a gateway born again publishes, right after its own birth, a birth for every child it still
 *   reaches and a retained `lost` for every child it no longer reaches, so that child's node says
 *   DeviceConnected=False instead of trusting a stale retained `online`;
 * - a device whose MQTT library keeps the will of its first connection (seq and all) is still shown
 *   lost when a later connection of the same boot drops.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { PresenceMessage } from "../../src/protocol/types.ts";
import { topics } from "../../src/protocol/topics.ts";
import { eventually } from "../support/eventually.ts";
import { deviceConnectedOf, retained } from "../support/mqtt.ts";
import { mqttScene } from "../support/scene.ts";
import { uniqueName } from "../support/testenv.ts";

const id = uniqueName("dpgw");
const gw = `${id}-gw`;
const reachable = `${id}-gw-mcu-0`;
const unreachable = `${id}-gw-mcu-1`;
const frozen = `${id}-mcu-frozen`;
const scene = mqttScene({
  id,
  devices: [
    { id: gw, kind: "gateway" },
    { id: reachable, kind: "mcu", gateway: gw },
    { id: unreachable, kind: "mcu", gateway: gw },
    { id: frozen, kind: "mcu", keepFirstWill: true },
  ],
  simulator: { willDelaySeconds: 0 },
});

beforeAll(() => scene.start());
afterAll(() => scene.stop());

const connected = (node: string, status: "True" | "False") =>
  eventually(async () => expect(await deviceConnectedOf(node)).toBe(status), { timeoutMs: 30_000 });
const retainedState = async (device: string) => {
  const payload = await retained(scene.broker.url, topics.state(device));
  return payload ? (JSON.parse(payload.toString()) as PresenceMessage) : undefined;
};

describe("device protocol: gateways and wills", () => {
  it("a reborn gateway publishes a birth for each child it reaches and a `lost` for each it does not", async () => {
    for (const node of [gw, reachable, unreachable]) await connected(node, "True");
    await scene.device(gw).goOffline();
    for (const node of [gw, reachable, unreachable]) await connected(node, "False");
    // While the gateway is down, one child leaves the bus: nothing can be published for it now.
    await scene.device(unreachable).goOffline();
    expect(await retainedState(unreachable)).toMatchObject({ state: "online" });

    await scene.device(gw).goOnline();
    const child = scene.device(unreachable);
    await eventually(async () =>
      expect(await retainedState(unreachable)).toMatchObject({ state: "lost", bootId: child.bootId }),
    );
    await connected(gw, "True");
    await connected(reachable, "True");
    await connected(unreachable, "False");
  });

  it("shows a device lost when a later connection drops and the broker sends the will of its first one", async () => {
    const device = scene.device(frozen);
    await connected(frozen, "True");
    await device.goOffline();
    await connected(frozen, "False");
    await device.goOnline();
    await connected(frozen, "True");
    const will = await retainedState(frozen);
    const birthSeq = will?.seq ?? 0;
    await device.goOffline();
    // The will still carries the first birth's seq, below this connection's birth.
    await eventually(async () => expect(await retainedState(frozen)).toMatchObject({ state: "lost" }));
    expect((await retainedState(frozen))?.seq).toBeLessThan(birthSeq);
    await connected(frozen, "False");
  });
});
