/**
 * Two devicelet processes against the same state (the same state namespace, the same broker, even
 * the same MQTT client id) while pods come and go: the fence under leader election. Real CLI,
 * real Mosquitto, real control plane, simulated devices. A tiny generation block makes both
 * processes reserve often, so any reservation that is not a compare-and-swap shows up as a reused
 * generation.
 *
 * Asserted on what the devices were sent (every desired document, recorded by a plain MQTT
 * client): no (device, epoch, generation) ever carried two different contents. And the two
 * processes do not kick each other off the broker in a loop: they back off after a takeover.
 */
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { DesiredDocument } from "../../src/protocol/types.ts";
import { eventually } from "../support/eventually.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import {
  barePod,
  expectNodeCount,
  startBroker,
  stopAll,
  type RunningMqttDevicelet,
} from "../support/mqtt.ts";
import { mqttScene } from "../support/scene.ts";
import { uniqueName } from "../support/testenv.ts";
import { isReady, type PodJson } from "../support/workloads.ts";

const id = uniqueName("mqfence");
const ns = id;
const devices = [`${id}-gw-0`, `${id}-gw-1`];
let recorder: mqtt.MqttClient | undefined;
/** Every desired document the broker delivered, in order. */
const seen: DesiredDocument[] = [];

const provider = (brokerUrl: string) => ({
  // Both processes use one client id, as two replicas sharing a config would.
  broker: { url: brokerUrl, clientId: `devicelet-${id}`, reconnect: { minDelayMs: 100, maxDelayMs: 2000 } },
  devices: { allow: [`${id}-*`] },
  desired: { generationBlock: 2 },
});

const scene = mqttScene({
  id,
  devices: devices.map((d) => ({ id: d, kind: "gateway" as const })),
  simulator: { appStartMs: 50 },
  provider: (broker) => provider(broker.url),
  // The recorder subscribes before the first devicelet starts: it sees every document from the first.
  broker: async (name) => {
    const broker = await startBroker(name);
    try {
      recorder = await mqtt.connectAsync(broker.url, { clean: true, reconnectPeriod: 0 });
      recorder.on("message", (_topic, payload) => {
        if (payload.length > 0) seen.push(JSON.parse(payload.toString("utf8")) as DesiredDocument);
      });
      await recorder.subscribeAsync("devicelet/v1/+/desired", { qos: 1 });
      return broker;
    } catch (err) {
      await broker.stop(); // the scene only stops a broker its factory returned
      throw err;
    }
  },
});

beforeAll(() => scene.start());
afterAll(() =>
  stopAll(
    () => recorder?.endAsync() ?? Promise.resolve(),
    () => scene.stop(),
  ),
);

const getPod = (name: string) => getJson<PodJson>(["pod", name, "-n", ns]);
const bare = (name: string, node: string) =>
  barePod({ namespace: ns, testId: id, name, node, graceSeconds: 2 });
const takeovers = (d: RunningMqttDevicelet) =>
  d.logLines().filter((l) => typeof l.msg === "string" && l.msg.startsWith("broker session taken over"));
const connects = (d: RunningMqttDevicelet) =>
  d.logLines().filter((l) => l.msg === "connected to broker").length;

describe("two devicelet processes against the same state", () => {
  it("never send one generation with two contents, and do not fight over the client id", async () => {
    const first = scene.devicelet;
    await expectNodeCount(first.nodeSelector, 2);
    const [gw0 = "", gw1 = ""] = devices;
    await apply(bare("a", gw0));
    await apply(bare("b", gw1));
    await eventually(async () => {
      for (const name of ["a", "b"]) expect(isReady(await getPod(name))).toBe(true);
    });

    const published = (d: RunningMqttDevicelet) => d.lastMetrics()?.published ?? 0;
    const publishedAlone = published(first);
    // A second process on the same state, the same broker and the same client id.
    const second = await scene.startDevicelet({
      id: `${id}-b`,
      provider: provider(scene.broker.url),
      core: { nodes: { extraLabels: { "devicelet.dev/test": id } } },
    });
    // Changes that both see, one after the other, so both publish and both reserve.
    for (let i = 0; i < 6; i++) {
      await apply(bare(`p${i}`, i % 2 === 0 ? gw0 : gw1));
      if (i >= 2) await kubectl(["delete", "pod", `p${i - 2}`, "-n", ns, "--wait=false"]);
    }
    // Every change reached the devices: each new pod, and each delete as a tombstone. (Two
    // writers need not converge — both write pod status from their own share of the device
    // messages; that is what leader election is for. What must hold is the fence below.)
    await eventually(
      () => {
        const carried = new Set(seen.flatMap((doc) => doc.pods.map((p) => p.name)));
        const tombstoned = new Set(seen.flatMap((doc) => doc.tombstones.map((t) => t.name)));
        for (let i = 0; i < 6; i++) expect(carried).toContain(`p${i}`);
        for (let i = 0; i < 4; i++) expect(tombstoned).toContain(`p${i}`);
      },
      { timeoutMs: 120_000 },
    );
    // Both processes published while they shared the state.
    await eventually(() => {
      expect(published(first)).toBeGreaterThan(publishedAlone);
      expect(published(second)).toBeGreaterThan(0);
    });

    // Every (device, epoch, generation) the devices were sent carried one content only.
    const contents = new Map<string, Set<string>>();
    for (const doc of seen) {
      const key = `${doc.deviceId} ${doc.epoch}/${doc.generation}`;
      contents.set(key, (contents.get(key) ?? new Set()).add(doc.contentHash));
    }
    const reused = [...contents].filter(([, hashes]) => hashes.size > 1).map(([key]) => key);
    expect(seen.length).toBeGreaterThan(4);
    expect(reused).toEqual([]);

    // The takeovers are recognised, logged and backed off from: no reconnect storm.
    const both = [first, second];
    expect(both.flatMap(takeovers).length).toBeGreaterThan(0);
    // Without backing off, each would reconnect every few hundred milliseconds: hundreds by now.
    const total = both.map(connects).reduce((x, y) => x + y, 0);
    expect(total).toBeLessThanOrEqual(30);
  });
});
