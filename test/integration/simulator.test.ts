/**
 * The simulator against a real Mosquitto: 50 devices (5 gateways with 5 bridged microcontrollers
 * each, 20 standalone microcontrollers). The test plays devicelet: it reads retained presence and
 * reports, publishes desired documents, and infers bridged children lost from their gateway's will
 * exactly as devicelet must (see inferPresence).
 */
import { randomUUID } from "node:crypto";
import mqtt, { type MqttClient } from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { desiredDocument, desiredPod } from "../../src/device/fixtures.ts";
import { fleetSpec } from "../../src/device/simulator.ts";
import { encodeMessage } from "../../src/protocol/codec.ts";
import { parseDeviceTopic, topics } from "../../src/protocol/topics.ts";
import type { AckMessage, PresenceMessage, ReportedDocument } from "../../src/protocol/types.ts";
import { eventually } from "../support/eventually.ts";
import { stopAll } from "../support/mqtt.ts";
import { mqttScene } from "../support/scene.ts";

const prefix = `t${randomUUID().slice(0, 6)}`;
const specs = fleetSpec({ gateways: 5, childrenPerGateway: 5, mcus: 20, prefix });
const EPOCH = "sim-epoch";

// No devicelet in this scene: the test plays it, through `devicelet` below.
const scene = mqttScene({
  id: prefix,
  devices: specs,
  devicelet: false,
  simulator: { appStartMs: 20, appStartJitterMs: 20, willDelaySeconds: 0 },
});
let devicelet: MqttClient | undefined;
const state = new Map<string, PresenceMessage>();
/** The last birth of each device: what devicelet knows about it (its gateway, its boot). */
const births = new Map<string, PresenceMessage>();
const reported = new Map<string, ReportedDocument>();
const acks: AckMessage[] = [];
const raw: string[] = [];

beforeAll(async () => {
  await scene.start();
  // Births, states and reports are retained: subscribing once the devices are up sees them all.
  const client = await mqtt.connectAsync(scene.broker.url, { clientId: `devicelet-${prefix}` });
  devicelet = client;
  client.on("message", (topic, payload) => {
    const parsed = parseDeviceTopic(topic);
    if (!parsed || payload.length === 0) return;
    if (parsed.kind === "evt" && !payload.toString().startsWith("{"))
      return void raw.push(payload.toString());
    const message = JSON.parse(payload.toString()) as PresenceMessage | ReportedDocument | AckMessage;
    if (message.kind === "presence") {
      state.set(parsed.deviceId, message);
      if (message.state === "online") births.set(parsed.deviceId, message);
    } else if (message.kind === "reported") reported.set(parsed.deviceId, message);
    else acks.push(message);
  });
  await client.subscribeAsync(topics.fromDevices(), { qos: 1 });
});

afterAll(async () => {
  await stopAll(
    async () => devicelet?.endAsync(),
    () => scene.stop(),
  );
});

/**
 * Presence as devicelet must infer it: a device's own retained state, except that a child whose
 * birth names a gateway is lost while that gateway is lost or offline (the gateway's connection
 * carried it, and one connection has one will).
 */
function inferPresence(id: string): PresenceMessage["state"] | undefined {
  const own = state.get(id)?.state;
  const gateway = births.get(id)?.device?.gateway;
  const gatewayState = gateway === undefined ? undefined : state.get(gateway);
  if (
    own === "online" &&
    gatewayState &&
    gatewayState.state !== "online" &&
    gatewayState.bootId === births.get(gateway ?? "")?.bootId
  ) {
    return "lost";
  }
  return own;
}

const bridge = (): MqttClient => {
  if (!devicelet) throw new Error("the test's devicelet client is not connected");
  return devicelet;
};
const podFor = (id: string) => desiredPod({ uid: `${id}-p`, apps: [{ name: "main" }] });
const publishDesired = (id: string, generation: number) =>
  bridge().publishAsync(
    topics.desired(id),
    encodeMessage(desiredDocument({ deviceId: id, epoch: EPOCH, generation, pods: [podFor(id)] })),
    {
      qos: 1,
      retain: true,
    },
  );

describe("simulator", () => {
  it("brings 50 devices online with retained births; children name their gateway", async () => {
    expect(scene.sim.devices.size).toBe(50);
    await eventually(() => expect(births.size).toBe(50));
    for (const spec of specs) {
      expect(state.get(spec.id)).toMatchObject({ state: "online", bootId: scene.device(spec.id).bootId });
      expect(births.get(spec.id)?.device?.gateway).toBe(spec.gateway);
      expect(births.get(spec.id)?.device?.capabilities.runtime).toBe(
        spec.kind === "gateway" ? "process" : "firmware",
      );
    }
  });

  it("applies one desired document per device exactly once and reports its app Running", async () => {
    await Promise.all(specs.map((s) => publishDesired(s.id, 1)));
    await eventually(() => {
      for (const s of specs) {
        expect(reported.get(s.id)).toMatchObject({ epoch: EPOCH, appliedGeneration: 1 });
        expect(reported.get(s.id)?.pods).toMatchObject([
          { uid: `${s.id}-p`, phase: "Running", apps: [{ ready: true }] },
        ]);
      }
    });
    // The same generation again, and once more as the retained copy after a gateway reconnect.
    await Promise.all(specs.map((s) => publishDesired(s.id, 1)));
    const gw = scene.device(`${prefix}-gw-0`);
    await gw.goOffline();
    await gw.goOnline();
    await eventually(() => expect(scene.device(`${prefix}-gw-0-mcu-0`).online).toBe(true));
    // Not applied again: one `received` per device; the final ack is repeated for redeliveries.
    await eventually(() => {
      const applied = acks.filter((a) => a.kind === "ack" && a.stage === "applied");
      expect(applied.length).toBeGreaterThanOrEqual(100);
    });
    expect(acks.filter((a) => a.kind === "ack" && a.stage === "received")).toHaveLength(50);
    for (const s of specs) {
      expect(scene.device(s.id).applies).toBe(1);
      expect(scene.device(s.id).appliedGenerations).toEqual([{ epoch: EPOCH, generation: 1 }]);
      expect(scene.device(s.id).runningPods()).toEqual([`${s.id}-p`]);
    }
  });

  it("takes a gateway's children down with it; devicelet infers them lost from the gateway's will", async () => {
    const gwId = `${prefix}-gw-1`;
    const children = specs.filter((s) => s.gateway === gwId).map((s) => s.id);
    const gatewayBoot = scene.device(gwId).bootId;
    await scene.device(gwId).goOffline();
    await eventually(() => expect(state.get(gwId)).toMatchObject({ state: "lost", bootId: gatewayBoot }));
    for (const child of children) {
      expect(scene.device(child).online).toBe(false);
      expect(inferPresence(child)).toBe("lost");
    }
    expect(inferPresence(`${prefix}-gw-2-mcu-0`)).toBe("online");
    const seqBefore = new Map(children.map((c) => [c, state.get(c)?.seq ?? 0]));
    await scene.device(gwId).goOnline();
    await eventually(() => {
      for (const child of children) {
        expect(inferPresence(child)).toBe("online");
        expect(state.get(child)?.seq).toBeGreaterThan(seqBefore.get(child) ?? 0);
      }
    });
  });

  it("has a gateway publish its child's will when only the child drops", async () => {
    const child = scene.device(`${prefix}-gw-2-mcu-1`);
    await child.goOffline();
    await eventually(() =>
      expect(state.get(child.id)).toMatchObject({ state: "lost", bootId: child.bootId }),
    );
    expect(inferPresence(`${prefix}-gw-2`)).toBe("online");
    await child.goOnline();
    await eventually(() => expect(state.get(child.id)?.state).toBe("online"));
  });

  it("reboots with a new boot id and runs its pod again without re-applying (it persists)", async () => {
    const mcu = scene.device(`${prefix}-mcu-3`);
    const before = mcu.bootId;
    await mcu.reboot();
    await eventually(() => expect(births.get(mcu.id)?.bootId).toBe(mcu.bootId));
    expect(mcu.bootId).not.toBe(before);
    await eventually(() =>
      expect(reported.get(mcu.id)).toMatchObject({
        bootId: mcu.bootId,
        appliedGeneration: 1,
        pods: [{ phase: "Running" }],
      }),
    );
    expect(mcu.applies).toBe(1);
  });

  it("sleeps as Sleeping with wakeAt, and publishes raw payloads for validation tests", async () => {
    const mcu = scene.device(`${prefix}-mcu-4`);
    const wakeAt = new Date(Date.now() + 3_600_000);
    await mcu.sleep(wakeAt);
    await eventually(() =>
      expect(state.get(mcu.id)).toMatchObject({ state: "sleeping", wakeAt: wakeAt.toISOString() }),
    );
    await mcu.goOnline();
    await mcu.publishRaw("evt", "not json at all");
    await eventually(() => expect(raw).toContain("not json at all"));
  });

  it("applies a newer generation once more on every device it reaches", async () => {
    const targets = specs.slice(0, 10).map((s) => s.id);
    await Promise.all(targets.map((id) => publishDesired(id, 2)));
    await eventually(() => {
      for (const id of targets) expect(reported.get(id)?.appliedGeneration).toBe(2);
    });
    for (const id of targets)
      expect(scene.device(id).appliedGenerations.map((g) => g.generation)).toEqual([1, 2]);
  });

  it("stops with retained `offline` for every device", async () => {
    await scene.sim.stop();
    await eventually(() => {
      for (const s of specs) expect(state.get(s.id)?.state).toBe("offline");
    });
  });
});
