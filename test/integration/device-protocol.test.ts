/**
 * The device side of docs/protocol.md § 5 against a real Mosquitto, with the session and MQTT
 * transport the agent and the simulator use. The test plays devicelet: it publishes retained
 * desired documents and watches what the device publishes.
 * - Clean sessions: a device that was away while several documents were published gets exactly
 *   one `desired` message when it connects (the retained copy) and applies exactly one document,
 *   on MQTT 5 and on 3.1.1; its acks follow its birth.
 * - No flapping on MQTT 5: a quick reconnect (clean start, will delay) never lets the broker
 *   publish the earlier connection's will.
 * - The will is armed before every CONNECT, MQTT.js's own automatic reconnects included, with the
 *   seq of the birth on that connection.
 */
import path from "node:path";
import { mkdtempSync } from "node:fs";
import os from "node:os";
import mqtt, { type MqttClient } from "mqtt";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startMosquitto, type Broker } from "../../hack/testenv/mosquitto.ts";
import { desiredDocument, desiredPod } from "../../src/device/fixtures.ts";
import { MqttTransport } from "../../src/device/mqtt-link.ts";
import { DeviceSession, type BirthInfo } from "../../src/device/session.ts";
import { SimRuntime } from "../../src/device/sim-runtime.ts";
import { encodeMessage } from "../../src/protocol/codec.ts";
import { topics, TOPIC_ROOT } from "../../src/protocol/topics.ts";
import type { AckMessage, PresenceMessage } from "../../src/protocol/types.ts";
import { eventually } from "../support/eventually.ts";

const logger = pino({ level: "silent" });
const dir = mkdtempSync(path.join(os.tmpdir(), "devicelet-devproto-"));
let broker: Broker;
let devicelet: MqttClient;
/** Everything devicelet's side saw, per device id. */
const seen = new Map<string, { state: PresenceMessage[]; acks: AckMessage[] }>();
const of = (id: string) => {
  let entry = seen.get(id);
  if (!entry) seen.set(id, (entry = { state: [], acks: [] }));
  return entry;
};

beforeAll(async () => {
  broker = await startMosquitto({ dir: path.join(dir, "mosquitto") });
  devicelet = await mqtt.connectAsync(broker.url, { clientId: `devicelet-${process.pid}` });
  devicelet.on("message", (topic, payload) => {
    const id = topic.split("/")[2] ?? "";
    if (payload.length === 0) return;
    const message = JSON.parse(payload.toString()) as { kind: string };
    if (message.kind === "presence") of(id).state.push(message as PresenceMessage);
    if (message.kind === "ack") of(id).acks.push(message as AckMessage);
  });
  await devicelet.subscribeAsync([`${TOPIC_ROOT}/+/state`, `${TOPIC_ROOT}/+/ack`], { qos: 1 });
});

afterAll(async () => {
  await devicelet.endAsync();
  await broker.stop();
});

const birth: BirthInfo = {
  deviceClass: "gateway",
  os: "linux",
  arch: "arm64",
  capacity: { cpu: "2", memory: "1Gi", pods: "10" },
  capabilities: { maxMessageBytes: 65536, encodings: ["json"], runtime: "process", logs: true, exec: false },
};

/** A device over its own MQTT connection; `desiredMessages` counts what the broker delivered. */
async function device(id: string, o: { protocolVersion: 4 | 5; willDelaySeconds?: number }) {
  const transport = new MqttTransport({
    url: broker.url,
    clientId: id,
    protocolVersion: o.protocolVersion,
    reconnectMs: 100,
    logger,
  });
  const counter = { desiredMessages: 0 };
  transport.client.on("message", (topic) => {
    if (topic === topics.desired(id)) counter.desiredMessages++;
  });
  const session = new DeviceSession({
    deviceId: id,
    link: transport.link(id),
    runtime: new SimRuntime(),
    device: birth,
    logger,
    reportCoalesceMs: 1,
    willDelaySeconds: o.willDelaySeconds ?? 0,
  });
  await session.start();
  await session.whenOnline();
  await eventually(() =>
    expect(of(id).state.at(-1)).toMatchObject({ state: "online", bootId: session.bootId }),
  );
  return { session, transport, counter };
}

const publishDesired = (id: string, generation: number) =>
  devicelet.publishAsync(
    topics.desired(id),
    encodeMessage(
      desiredDocument({ deviceId: id, generation, pods: [desiredPod({ uid: `p${generation}` })] }),
    ),
    { qos: 1, retain: true },
  );
const births = (id: string) => of(id).state.filter((s) => s.state === "online");

describe("device protocol § 5 on a real broker", () => {
  for (const protocolVersion of [5, 4] as const) {
    it(`gets exactly one desired message per connection and applies one document (MQTT ${protocolVersion === 5 ? "5" : "3.1.1"})`, async () => {
      const id = `dp-once-${protocolVersion}-${process.pid}`;
      await publishDesired(id, 1);
      const { session, counter } = await device(id, { protocolVersion, willDelaySeconds: 1 });
      await eventually(() => expect(session.appliedGeneration).toBe(1));
      await session.goOffline();
      await eventually(() => expect(of(id).state.at(-1)?.state).toBe("lost"));
      // Away while devicelet publishes five documents (QoS 1, retained).
      for (let g = 2; g <= 6; g++) await publishDesired(id, g);
      const [messages, applies, acks] = [counter.desiredMessages, session.applies, of(id).acks.length];
      await session.goOnline();
      await eventually(() => expect(session.appliedGeneration).toBe(6));
      // Settled (the device has acked `applied`); then nothing older may have come.
      await eventually(() =>
        expect(
          of(id)
            .acks.slice(acks)
            .flatMap((a) => (a.kind === "ack" ? [[a.generation, a.stage]] : [])),
        ).toEqual([
          [6, "received"],
          [6, "applied"],
        ]),
      );
      expect(counter.desiredMessages - messages).toBe(1);
      expect(session.applies - applies).toBe(1);
      // Everything the device said on this connection follows its birth (§ 5, buffering).
      const birthSeq = births(id).at(-1)?.seq ?? Infinity;
      for (const ack of of(id).acks.slice(acks)) expect(ack.seq).toBeGreaterThan(birthSeq);
      await session.stop();
    });
  }

  it("does not flap on a quick reconnect on MQTT 5: the broker never publishes the earlier connection's will", async () => {
    const id = `dp-flap-${process.pid}`;
    const { session, transport } = await device(id, { protocolVersion: 5, willDelaySeconds: 5 });
    const firstBirth = births(id).length;
    // The network drops (no DISCONNECT); MQTT.js reconnects by itself 100 ms later, well within
    // the will delay (5 s, so a loaded run's slow reconnect still makes it), with a clean start.
    transport.client.stream.destroy();
    await eventually(() => expect(births(id).length).toBe(firstBirth + 1));
    const reconnected = births(id).at(-1);
    const lostBefore = of(id).state.filter((s) => s.state === "lost").length;
    await session.goOffline();
    // The first `lost` devicelet sees is the second connection's will (its birth's seq), so the
    // first connection's will, which would have come earlier on this topic, never went out.
    await eventually(() =>
      expect(of(id).state.filter((s) => s.state === "lost").length).toBe(lostBefore + 1),
    );
    expect(
      of(id)
        .state.filter((s) => s.state === "lost")
        .slice(lostBefore),
    ).toMatchObject([{ bootId: reconnected?.bootId, seq: reconnected?.seq }]);
    expect(lostBefore).toBe(0);
    await session.stop();
  });

  it("arms the will before every CONNECT, MQTT.js's automatic reconnects included", async () => {
    const id = `dp-will-${process.pid}`;
    const { session, transport } = await device(id, { protocolVersion: 4 });
    for (let i = 0; i < 2; i++) {
      const count = births(id).length;
      transport.client.stream.destroy();
      await eventually(() => expect(births(id).length).toBe(count + 1));
    }
    const latest = births(id).at(-1);
    await session.goOffline();
    await eventually(() => expect(of(id).state.at(-1)).toMatchObject({ state: "lost", seq: latest?.seq }));
    await session.stop();
  });
});
