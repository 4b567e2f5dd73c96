/**
 * A real MQTT broker for unit tests of the device side: aedes in this process, on 127.0.0.1 and
 * an ephemeral port, with in-memory persistence (as the demo's embedded broker, which offers no
 * view of what the broker handled). Devices connect through the real link (`MqttTransport`,
 * MQTT 3.1.1: aedes has no MQTT 5); the test plays devicelet through a QoS 1 client of its own,
 * and reads what the broker accepted from aedes's own `publish` and `subscribe` events, so a
 * message is in `published` before its PUBACK leaves the broker.
 *
 *   const broker = await startDeviceBroker();
 *   const session = new DeviceSession({ link: broker.link("dev-1"), ... });
 *   await broker.publish(topics.desired("dev-1"), encodeMessage(doc), { retain: true });  // as devicelet
 *   broker.retainedJson(topics.reported("dev-1"));
 *   await broker.close();
 */
import net from "node:net";
import { Aedes } from "aedes";
import mqtt from "mqtt";
import pino from "pino";
import type { DeviceLink } from "../../src/device/link.ts";
import { MqttTransport } from "../../src/device/mqtt-link.ts";

export interface BrokerMessage {
  readonly topic: string;
  readonly payload: Buffer;
  readonly retain: boolean;
}

export interface DeviceBroker {
  readonly url: string;
  /** Every message the broker accepted, wills included, `$SYS` left out, in order. */
  readonly published: readonly BrokerMessage[];
  /** `subscribe <filter>` and `publish <topic>` in the order the broker handled them. */
  readonly trace: readonly string[];
  /** The device's link over a connection of its own (client id = device id, clean session). */
  link(deviceId: string): DeviceLink;
  /** Publishes as devicelet does, QoS 1; resolves at the PUBACK, once the broker has stored it. */
  publish(topic: string, payload: Buffer | string, options?: { retain?: boolean }): Promise<void>;
  /** The retained message on `topic`, parsed as JSON (cast it to the protocol type you expect). */
  retainedJson(topic: string): Record<string, unknown> | undefined;
  /** Parsed JSON of every message published on `topic`, in order. */
  messagesOn<T = Record<string, unknown>>(topic: string): T[];
  /** Ends the devices' connections still open, then the broker. */
  close(): Promise<void>;
}

const logger = pino({ level: "silent" });

export async function startDeviceBroker(): Promise<DeviceBroker> {
  const aedes = await Aedes.createBroker();
  const published: BrokerMessage[] = [];
  const trace: string[] = [];
  // Mirrors the broker's retained store from the publishes it accepted (storeRetained runs
  // before the event): a zero-byte retained message clears the topic (MQTT 3.1.1 §3.3.1.3).
  const retained = new Map<string, Buffer>();
  aedes.on("subscribe", (subscriptions) => {
    for (const s of subscriptions) trace.push(`subscribe ${s.topic}`);
  });
  aedes.on("publish", (packet) => {
    if (packet.topic.startsWith("$SYS/")) return;
    const payload = Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload);
    published.push({ topic: packet.topic, payload, retain: packet.retain });
    trace.push(`publish ${packet.topic}`);
    if (!packet.retain) return;
    if (payload.length === 0) retained.delete(packet.topic);
    else retained.set(packet.topic, payload);
  });
  // Without TCP_NODELAY, Nagle's algorithm meets loopback's delayed ACKs and holds the broker's
  // small writes for about 40 ms each: the tests would spend their time waiting on it.
  const server = net.createServer({ noDelay: true }, (socket) => aedes.handle(socket));
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("aedes: no TCP address");
  const url = `mqtt://127.0.0.1:${address.port}`;
  const devicelet = await mqtt.connectAsync(url, {
    clientId: "devicelet-test",
    protocolVersion: 4,
    clean: true,
    reconnectPeriod: 0,
  });
  const transports: MqttTransport[] = [];

  return {
    url,
    published,
    trace,
    link: (deviceId) => {
      const transport = new MqttTransport({ url, clientId: deviceId, protocolVersion: 4, logger });
      transports.push(transport);
      return transport.link(deviceId);
    },
    publish: async (topic, payload, options = {}) => {
      await devicelet.publishAsync(topic, payload, { qos: 1, retain: options.retain ?? false });
    },
    retainedJson: (topic) => {
      const payload = retained.get(topic);
      return payload ? (JSON.parse(payload.toString("utf8")) as Record<string, unknown>) : undefined;
    },
    messagesOn: <T>(topic: string) =>
      published.filter((m) => m.topic === topic).map((m) => JSON.parse(m.payload.toString("utf8")) as T),
    close: async () => {
      // A session left running would have MQTT.js reconnect to the closed port for ever.
      for (const t of transports) if (!t.client.disconnected) t.client.end(true);
      await devicelet.endAsync();
      await new Promise<void>((resolve) => aedes.close(() => resolve()));
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
