/**
 * Commands for devices without a clock (docs/protocol.md § 7) against a real Mosquitto, at the
 * provider: a device whose birth announces `capabilities.commandTtl` gets `ttlSeconds` with each
 * command; any other device gets the command exactly as before, so its closed schema accepts it.
 */
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Broker } from "../../hack/testenv/mosquitto.ts";
import { createMqttProvider, type MqttProvider } from "../../providers/mqtt/index.ts";
import { decodeToDevice } from "../../src/protocol/codec.ts";
import type { CommandMessage, PresenceMessage } from "../../src/protocol/types.ts";
import { eventually } from "../support/eventually.ts";
import { startBroker } from "../support/mqtt.ts";
import { uniqueName } from "../support/testenv.ts";
import { quietContext } from "../support/provider-context.ts";

const id = uniqueName("prcm");
let broker: Broker;
let provider: MqttProvider;

beforeAll(async () => {
  broker = await startBroker(id);
  provider = createMqttProvider(
    {
      broker: { url: broker.url, clientId: `devicelet-${id}`, reconnect: { minDelayMs: 100 } },
      devices: { allow: [`${id}-*`] },
      desired: { readbackTimeoutMs: 5_000 },
    },
    quietContext(),
  );
  await provider.start(new AbortController().signal);
});
afterAll(async () => {
  await provider.stop();
  await broker.stop();
});

const birth = (deviceId: string, commandTtl: boolean | undefined): PresenceMessage => ({
  protocol: 1,
  kind: "presence",
  deviceId,
  state: "online",
  bootId: "c1",
  seq: 1,
  sentAt: new Date().toISOString(),
  device: {
    deviceClass: "mcu",
    os: "none",
    arch: "arm",
    capacity: { pods: "1" },
    capabilities: {
      maxMessageBytes: 4096,
      encodings: ["json"],
      runtime: "firmware",
      logs: false,
      exec: false,
      ...(commandTtl === undefined ? {} : { commandTtl }),
    },
  },
});

/** A device that is born and collects the raw commands it is sent. */
async function device(deviceId: string, commandTtl: boolean | undefined) {
  const got: { topic: string; payload: Buffer }[] = [];
  const client = await mqtt.connectAsync(broker.url, { clientId: deviceId, clean: true });
  client.on("message", (topic, payload) => got.push({ topic, payload }));
  await client.subscribeAsync(`devicelet/v1/${deviceId}/cmd/+`, { qos: 1 });
  await client.publishAsync(`devicelet/v1/${deviceId}/state`, JSON.stringify(birth(deviceId, commandTtl)), {
    qos: 1,
    retain: true,
  });
  await eventually(async () =>
    expect((await provider.listDevices()).find((d) => d.id === deviceId)?.connected).toBe(true),
  );
  return { client, got };
}

describe("protocol: ttlSeconds on commands", () => {
  it("is sent only to a device that announces commandTtl, and the message stays valid for each", async () => {
    const clockless = await device(`${id}-noclock`, true);
    const plain = await device(`${id}-plain`, undefined);
    const legacy = await device(`${id}-legacy`, false);
    try {
      for (const d of [`${id}-noclock`, `${id}-plain`, `${id}-legacy`])
        void provider.sendCommand(d, { command: "reboot" }, { ttlSeconds: 120 });
      await eventually(() => {
        for (const d of [clockless, plain, legacy]) expect(d.got).toHaveLength(1);
      });
      const parsed = (d: typeof plain) => JSON.parse(d.got[0]?.payload.toString() ?? "{}") as CommandMessage;
      expect(parsed(clockless).ttlSeconds).toBeGreaterThanOrEqual(118);
      expect(parsed(clockless).ttlSeconds).toBeLessThanOrEqual(120);
      expect(Object.keys(parsed(plain))).not.toContain("ttlSeconds");
      expect(Object.keys(parsed(legacy))).not.toContain("ttlSeconds");
      for (const [d, deviceId] of [
        [clockless, `${id}-noclock`],
        [plain, `${id}-plain`],
      ] as const) {
        const { topic, payload } = d.got[0] ?? { topic: "", payload: Buffer.alloc(0) };
        expect(decodeToDevice(topic, payload, { deviceId }).ok).toBe(true);
      }
    } finally {
      for (const d of [clockless, plain, legacy]) await d.client.endAsync();
    }
  });
});
