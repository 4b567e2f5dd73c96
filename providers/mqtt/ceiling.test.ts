/**
 * The outbound ceiling (`desired.maxDocumentBytes`): a device announcing 16 MiB still gets desired
 * documents no larger than the ceiling; a pod that would make its document larger is held back
 * with `DocumentTooLarge`, while the rest of the device's pods go out. Real provider, real
 * (embedded) broker, a device played by an MQTT client.
 */
import mqtt from "mqtt";
import { afterEach, describe, expect, it } from "vitest";
import { startEmbeddedBroker, type EmbeddedBroker } from "../../src/broker/embedded.ts";
import { encodeMessage } from "../../src/protocol/codec.ts";
import { topics } from "../../src/protocol/topics.ts";
import type { DesiredDocument, PresenceMessage } from "../../src/protocol/types.ts";
import type { Workload } from "../../src/provider/types.ts";
import { eventually } from "../../test/support/eventually.ts";
import { workload } from "../mock/testing.ts";
import { documentLimit, inboundPacketLimit } from "./fit.ts";
import { createMqttProvider, type MqttProvider } from "./index.ts";
import { quietContext } from "../../test/support/provider-context.ts";

const CEILING = 64 * 1024;
const SIXTEEN_MIB = 16 * 1024 * 1024;

let broker: EmbeddedBroker | undefined;
let provider: MqttProvider | undefined;
let device: mqtt.MqttClient | undefined;
afterEach(async () => {
  await device?.endAsync();
  await provider?.stop();
  await broker?.close();
  [device, provider, broker] = [undefined, undefined, undefined];
});

const birth = (deviceId: string, maxMessageBytes: number): PresenceMessage => ({
  protocol: 1,
  kind: "presence",
  deviceId,
  state: "online",
  bootId: "b-1",
  seq: 1,
  sentAt: new Date().toISOString(),
  device: {
    deviceClass: "gateway",
    os: "linux",
    arch: "arm64",
    capacity: { cpu: "4", memory: "2Gi", pods: "20" },
    capabilities: { maxMessageBytes, encodings: ["json"], runtime: "process", logs: true, exec: true },
  },
});

/** A workload whose one app carries `bytes` of env. */
const sized = (name: string, deviceId: string, bytes: number): Workload => {
  const w = workload(name, deviceId);
  return { ...w, apps: w.apps.map((a) => ({ ...a, env: { BLOB: "x".repeat(bytes) } })) };
};

describe("documentLimit", () => {
  it("is the smaller of the announcement and the ceiling; the default before a birth", () => {
    expect(documentLimit({ announced: SIXTEEN_MIB, ceiling: CEILING, fallback: 262_144 })).toBe(CEILING);
    expect(documentLimit({ announced: 4096, ceiling: CEILING, fallback: 262_144 })).toBe(4096);
    expect(documentLimit({ announced: undefined, ceiling: 1 << 30, fallback: 262_144 })).toBe(262_144);
    expect(inboundPacketLimit(262_144)).toBeGreaterThan(262_144);
  });
});

describe("desired.maxDocumentBytes", () => {
  it("keeps documents under the ceiling whatever the device announces; holds the big pod back", async () => {
    broker = await startEmbeddedBroker();
    const documents: DesiredDocument[] = [];
    const sizes: number[] = [];
    device = await mqtt.connectAsync(broker.url, { clientId: "gw-1", clean: true, reconnectPeriod: 0 });
    device.on("message", (_topic, payload) => {
      if (payload.length === 0) return;
      sizes.push(payload.length);
      documents.push(JSON.parse(payload.toString("utf8")) as DesiredDocument);
    });
    await device.subscribeAsync(topics.desired("gw-1"), { qos: 1 });
    await device.publishAsync(topics.state("gw-1"), encodeMessage(birth("gw-1", SIXTEEN_MIB)), {
      qos: 1,
      retain: true,
    });

    provider = createMqttProvider(
      {
        broker: { url: broker.url, clientId: "devicelet-ceiling-test" },
        devices: { allow: ["gw-*"] },
        desired: { maxDocumentBytes: CEILING, readbackTimeoutMs: 200 },
      },
      quietContext(),
    );
    await provider.start(new AbortController().signal);
    await eventually(async () => expect((await provider?.listDevices())?.length).toBe(1));

    const small = sized("small", "gw-1", 1000);
    const big = sized("big", "gw-1", 200 * 1024); // fits 16 MiB, not the ceiling
    await provider.createPod(small);
    await provider.createPod(big);
    const p = provider;
    await eventually(async () => {
      expect(documents.at(-1)?.pods.map((pod) => pod.name)).toEqual(["small"]);
      expect((await p.getPodStatus(big.pod))?.reason).toBe("DocumentTooLarge");
    });
    // Settled: every document that went out fits the ceiling.
    expect(Math.max(...sizes)).toBeLessThanOrEqual(CEILING);
    expect(JSON.stringify(await p.getPodStatus(big.pod))).toContain(`${CEILING} bytes`);
    expect((await p.getPodStatus(small.pod))?.reason).not.toBe("DocumentTooLarge");
  });
});
