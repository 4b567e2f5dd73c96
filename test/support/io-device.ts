/**
 * A scripted device for session and stats tests (docs/protocol.md §§ 3.9, 3.10): a plain MQTT
 * client that is born with the capabilities a test gives, records every session message devicelet
 * sends it (decoded with the protocol's own codec), and publishes whatever output the test scripts,
 * valid or not. It runs no apps: tests answer each `io-open` themselves.
 *
 *   const device = await scriptedDevice({ url, deviceId: "gw-io", capabilities: { logs: true } });
 *   device.onOpen((open) => device.out(open.streamId, [{ kind: "io-end", seq: 0 }]));
 *   await device.stats({ pods: [] });
 *   await device.close();
 */
import mqtt, { type IClientOptions, type MqttClient } from "mqtt";
import { decodeIoIn, encodeMessage } from "../../src/protocol/codec.ts";
import { topics } from "../../src/protocol/topics.ts";
import type {
  DeviceCapabilities,
  IoInMessage,
  IoOpenMessage,
  IoOutMessage,
  PresenceMessage,
  StatsMessage,
} from "../../src/protocol/types.ts";

type Out = IoOutMessage extends infer M
  ? M extends unknown
    ? Omit<M, "protocol" | "deviceId" | "streamId">
    : never
  : never;

export interface ScriptedDevice {
  readonly deviceId: string;
  /** Every session message received, in order. */
  readonly inbox: readonly IoInMessage[];
  /** Calls `handler` for each io-open received. */
  onOpen(handler: (open: IoOpenMessage) => void): void;
  /** Publishes session output on the stream's out topic (QoS 1), each message checked by the codec. */
  out(streamId: string, messages: readonly Out[]): Promise<void>;
  /** Publishes raw bytes, unchecked: for bad input. */
  raw(topic: string, payload: Buffer | string): Promise<void>;
  /** Publishes a stats sample of the current boot (QoS 0), measured `at` (now by default). */
  stats(sample: Pick<StatsMessage, "pods"> & Partial<Pick<StatsMessage, "node" | "at">>): Promise<void>;
  /** Publishes a retained `offline` and disconnects. */
  goOffline(): Promise<void>;
  close(): Promise<void>;
}

export async function scriptedDevice(o: {
  readonly url: string;
  readonly deviceId: string;
  readonly capabilities: Partial<DeviceCapabilities>;
  readonly connect?: IClientOptions;
}): Promise<ScriptedDevice> {
  const { deviceId } = o;
  const bootId = `b-${Date.now().toString(36)}`;
  let seq = 1;
  const presence = (state: PresenceMessage["state"]): PresenceMessage => ({
    protocol: 1,
    kind: "presence",
    deviceId,
    state,
    bootId,
    seq: 1,
    sentAt: new Date().toISOString(),
    ...(state === "online"
      ? {
          device: {
            deviceClass: "gateway",
            os: "linux",
            arch: "amd64",
            capacity: { cpu: "2", memory: "1Gi", pods: "10" },
            capabilities: {
              maxMessageBytes: 262144,
              encodings: ["json"],
              runtime: "process",
              logs: false,
              exec: false,
              ...o.capabilities,
            },
          },
        }
      : {}),
  });
  const client: MqttClient = await mqtt.connectAsync(o.url, {
    clientId: deviceId,
    protocolVersion: 4,
    clean: true,
    reconnectPeriod: 0,
    will: { topic: topics.state(deviceId), payload: encodeMessage(presence("lost")), qos: 1, retain: true },
    ...o.connect,
  });
  const inbox: IoInMessage[] = [];
  const handlers: ((open: IoOpenMessage) => void)[] = [];
  client.on("message", (topic, payload) => {
    const decoded = decodeIoIn(topic, payload, { deviceId });
    if (!decoded.ok) throw new Error(`scripted device ${deviceId}: ${decoded.reason}: ${decoded.detail}`);
    inbox.push(decoded.value);
    const message = decoded.value;
    if (message.kind === "io-open") for (const h of handlers) h(message);
  });
  await client.subscribeAsync(topics.ioInAll(deviceId), { qos: 1 });
  await client.publishAsync(topics.state(deviceId), encodeMessage(presence("online")), {
    qos: 1,
    retain: true,
  });
  return {
    deviceId,
    inbox,
    onOpen: (handler) => void handlers.push(handler),
    out: async (streamId, messages) => {
      for (const m of messages) {
        const full = { protocol: 1, deviceId, streamId, ...m } as IoOutMessage;
        await client.publishAsync(topics.ioOut(deviceId, streamId), encodeMessage(full), { qos: 1 });
      }
    },
    raw: async (topic, payload) => {
      await client.publishAsync(topic, payload, { qos: 1 });
    },
    stats: async (sample) => {
      const message: StatsMessage = {
        protocol: 1,
        kind: "stats",
        deviceId,
        bootId,
        seq: ++seq,
        at: sample.at ?? new Date().toISOString(),
        ...(sample.node ? { node: sample.node } : {}),
        pods: sample.pods,
      };
      await client.publishAsync(topics.stats(deviceId), encodeMessage(message), { qos: 0 });
    },
    goOffline: async () => {
      await client.publishAsync(
        topics.state(deviceId),
        encodeMessage({ ...presence("offline"), seq: ++seq }),
        {
          qos: 1,
          retain: true,
        },
      );
      await client.endAsync();
    },
    close: async () => {
      if (client.connected) await client.endAsync(true);
    },
  };
}
