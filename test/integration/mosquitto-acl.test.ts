/**
 * The Mosquitto configuration shipped in examples/mosquitto/, run as it is (only certificate paths
 * and ports substituted): mutual TLS with the certificate's CN as the username, an ACL that keeps
 * each device in its own subtree, devicelet's identity allowed everywhere, no anonymous clients,
 * and a plain listener that can read nothing secret.
 *
 * "Refused" is judged by delivery: a spy with devicelet's identity, subscribed to everything, or the
 * device itself, waits for a marker sent after the attempt on the same connection (MQTT keeps one
 * connection's messages in order, §4.6), so a message that got through would have arrived first.
 */
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import mqtt, { type MqttClient } from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startExampleBroker, type ExampleBroker } from "../support/example-broker.ts";

const A = "dev-a";
const B = "dev-b";
let broker: ExampleBroker;
const clients: MqttClient[] = [];

beforeAll(async () => {
  broker = await startExampleBroker("acl", { identities: ["_devicelet", A, B] });
});
afterAll(async () => {
  for (const c of clients.splice(0)) await c.endAsync(true).catch(() => undefined);
  await broker.stop();
});

/** A client over mutual TLS with `identity`'s certificate; it records every message it gets. */
async function connect(identity: string, protocolVersion: 4 | 5) {
  const files = broker.identity(identity);
  const client = await mqtt.connectAsync(broker.tlsUrl, {
    ca: readFileSync(broker.caFile),
    cert: readFileSync(files.cert),
    key: readFileSync(files.key),
    clientId: `${identity}-${protocolVersion}-${randomBytes(3).toString("hex")}`,
    protocolVersion,
    reconnectPeriod: 0,
  });
  clients.push(client);
  const got: { topic: string; payload: string }[] = [];
  client.on("message", (topic, payload) => got.push({ topic, payload: payload.toString("utf8") }));
  return { client, got };
}

type Connected = Awaited<ReturnType<typeof connect>>;

/** Sends a fresh marker from `sender` on `topic` and waits until `receiver` has it. */
async function barrier(sender: MqttClient, topic: string, receiver: Connected): Promise<void> {
  const marker = `barrier-${randomBytes(6).toString("hex")}`;
  const arrived = new Promise<void>((resolve) => {
    const check = (_t: string, payload: Buffer) => {
      if (payload.toString("utf8") === marker) {
        receiver.client.off("message", check);
        resolve();
      }
    };
    receiver.client.on("message", check);
  });
  await sender.publishAsync(topic, marker, { qos: 1 });
  await arrived;
}

describe("examples/mosquitto: who may connect", () => {
  it("refuses a client without a certificate on the TLS listener", async () => {
    await expect(
      mqtt.connectAsync(broker.tlsUrl, {
        ca: readFileSync(broker.caFile),
        reconnectPeriod: 0,
        connectTimeout: 5_000,
      }),
    ).rejects.toThrow();
  });

  it("refuses anonymous clients on the plain listener and lets the monitor user in", async () => {
    await expect(
      mqtt.connectAsync(broker.url, { reconnectPeriod: 0, connectTimeout: 5_000 }),
    ).rejects.toThrow(/Not authorized/);
    const monitor = await mqtt.connectAsync(broker.url, { ...broker.monitor, reconnectPeriod: 0 });
    await monitor.endAsync();
  });
});

describe.each([5, 4] as const)("examples/mosquitto ACL over MQTT %s", (version) => {
  let devicelet: Connected;
  let a: Connected;
  beforeAll(async () => {
    devicelet = await connect("_devicelet", 5);
    await devicelet.client.subscribeAsync("devicelet/v1/#", { qos: 1 });
    a = await connect(A, version);
  });

  it("lets devicelet's identity publish every device's topics and read everything devices publish", async () => {
    const b = await connect(B, version);
    await b.client.subscribeAsync(
      [
        `devicelet/v1/${B}/desired`,
        `devicelet/v1/${B}/cmd/+`,
        `devicelet/v1/${B}/notice`,
        "devicelet/v1/_bridge/state",
      ],
      { qos: 1 },
    );
    for (const topic of [`${B}/desired`, `${B}/cmd/c-1`, `${B}/notice`, "_bridge/state"])
      await barrier(devicelet.client, `devicelet/v1/${topic}`, b);
    for (const topic of ["state", "reported", "ack", "evt"])
      await barrier(b.client, `devicelet/v1/${B}/${topic}`, devicelet);
    await b.client.endAsync();
  });

  it("drops a device's publish on another device's topics", async () => {
    const spoof = `spoof-${randomBytes(6).toString("hex")}`;
    const topics = [
      ...["state", "reported", "ack", "evt", "desired"].map((t) => `${B}/${t}`),
      "_bridge/state",
    ];
    for (const topic of topics) {
      const attempt = a.client.publishAsync(`devicelet/v1/${topic}`, spoof, { qos: 1 });
      // MQTT 5: PUBACK reason 0x87 "Not authorized"; 3.1.1 has no way to say so and acks it.
      if (version === 5) await expect(attempt).rejects.toThrow(/Not authorized/);
      else await attempt;
    }
    // Everything A sent before this marker would have reached devicelet first.
    await barrier(a.client, `devicelet/v1/${A}/state`, devicelet);
    expect(devicelet.got.filter((m) => m.payload === spoof)).toEqual([]);
  });

  it("delivers nothing of another device's desired document or commands to a device, retained or live", async () => {
    const secret = `secret-${randomBytes(6).toString("hex")}`;
    await devicelet.client.publishAsync(`devicelet/v1/${B}/desired`, `retained ${secret}`, {
      qos: 1,
      retain: true,
    });
    await a.client.subscribeAsync(
      [
        `devicelet/v1/${B}/desired`,
        `devicelet/v1/${B}/cmd/+`,
        "devicelet/v1/+/desired",
        "#",
        `devicelet/v1/${A}/desired`,
      ],
      { qos: 1 },
    );
    await devicelet.client.publishAsync(`devicelet/v1/${B}/desired`, `live ${secret}`, { qos: 1 });
    await devicelet.client.publishAsync(`devicelet/v1/${B}/cmd/c-2`, `command ${secret}`, { qos: 1 });
    // devicelet → A on A's own topic: it arrives, after anything of B's would have.
    await barrier(devicelet.client, `devicelet/v1/${A}/desired`, a);
    expect(a.got.filter((m) => m.payload.includes(secret))).toEqual([]);
    expect(a.got.some((m) => m.topic === `devicelet/v1/${A}/desired`)).toBe(true);
    await a.client.unsubscribeAsync([
      "#",
      "devicelet/v1/+/desired",
      `devicelet/v1/${B}/desired`,
      `devicelet/v1/${B}/cmd/+`,
    ]);
  });
});
