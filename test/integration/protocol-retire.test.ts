/**
 * Decommissioning (docs/protocol.md § 5) against a real Mosquitto, at the provider: retiring a
 * device that is away clears its retained `desired`, `state` and `reported`, drops its durable
 * record and command queue, and keeps it out of the inventory — also for a devicelet started
 * afterwards on the same broker and store — until the device is born again. A device that is
 * online is not retired.
 */
import mqtt from "mqtt";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Broker } from "../../hack/testenv/mosquitto.ts";
import { workload } from "../../providers/mock/testing.ts";
import { createMqttProvider, type MqttProvider } from "../../providers/mqtt/index.ts";
import type { PresenceMessage, ReportedDocument } from "../../src/protocol/types.ts";
import { emptyReport, gatewayBirth } from "../support/device-messages.ts";
import { eventually } from "../support/eventually.ts";
import { MemoryStore } from "../support/memory-store.ts";
import { retained, startBroker } from "../support/mqtt.ts";
import { uniqueName } from "../support/testenv.ts";

const id = uniqueName("prrt");
const store = new MemoryStore();
let broker: Broker;
const providers: MqttProvider[] = [];

beforeAll(async () => {
  broker = await startBroker(id);
});
afterAll(async () => {
  for (const p of providers) await p.stop();
  await broker.stop();
});

const startProvider = async (n: number) => {
  const provider = createMqttProvider(
    {
      broker: { url: broker.url, clientId: `devicelet-${id}-${n}`, reconnect: { minDelayMs: 100 } },
      devices: { allow: [`${id}-*`] },
      desired: { readbackTimeoutMs: 5_000, debounceMs: 5 },
    },
    {
      logger: pino({ level: "silent" }),
      store,
      recordEvent: () => undefined,
      fail: (err: Error) => {
        throw err;
      },
    },
  );
  providers.push(provider);
  await provider.start(new AbortController().signal);
  return provider;
};

const topic = (deviceId: string, sub: string) => `devicelet/v1/${deviceId}/${sub}`;
const presence = (deviceId: string, state: PresenceMessage["state"], seq: number): PresenceMessage => ({
  protocol: 1,
  kind: "presence",
  deviceId,
  state,
  bootId: "r1",
  seq,
  sentAt: new Date().toISOString(),
  ...(state === "online" ? { device: gatewayBirth({ pods: "10" }) } : {}),
});
const reported = (deviceId: string, seq: number): ReportedDocument =>
  emptyReport({ deviceId, bootId: "r1", seq });

/** A device session: births (and reports), optionally leaves cleanly with `offline`. */
async function device(deviceId: string, o: { seq: number; leave: boolean }) {
  const client = await mqtt.connectAsync(broker.url, { clientId: deviceId, clean: true });
  const retain = { qos: 1, retain: true } as const;
  await client.publishAsync(
    topic(deviceId, "state"),
    JSON.stringify(presence(deviceId, "online", o.seq)),
    retain,
  );
  await client.publishAsync(
    topic(deviceId, "reported"),
    JSON.stringify(reported(deviceId, o.seq + 1)),
    retain,
  );
  if (!o.leave) return client;
  await client.publishAsync(
    topic(deviceId, "state"),
    JSON.stringify(presence(deviceId, "offline", o.seq + 2)),
    retain,
  );
  await client.endAsync();
  return undefined;
}

const ids = async (p: MqttProvider) => (await p.listDevices()).map((d) => d.id);

describe("protocol: decommissioning a device", () => {
  it("clears its retained topics and durable state, and forgets it until it is born again", async () => {
    const deviceId = `${id}-old`;
    const first = await startProvider(1);
    await device(deviceId, { seq: 1, leave: true });
    await eventually(async () => expect(await ids(first)).toContain(deviceId));
    await first.createPod(workload("kept", deviceId));
    const command = first.sendCommand(deviceId, { command: "reboot" }, { ttlSeconds: 600 });
    await eventually(async () => {
      expect(await retained(broker.url, topic(deviceId, "desired"))).toBeDefined();
      expect(store.values.get(`mqtt.commands.${deviceId}`)).toContain("reboot");
    });
    expect(store.values.get(`mqtt.${deviceId}`)).toContain('"epoch"');

    expect(await first.retireDevice(deviceId)).toBe("retired");

    for (const sub of ["desired", "state", "reported"])
      expect(await retained(broker.url, topic(deviceId, sub))).toBeUndefined();
    await expect(command).resolves.toMatchObject({ stage: "expired" });
    // Its keys are deleted, not emptied: nothing of it is left in the store.
    await eventually(() => expect(store.values.has(`mqtt.commands.${deviceId}`)).toBe(false));
    expect([...store.values.keys()].filter((k) => k.endsWith(deviceId))).toEqual([]);
    expect(await ids(first)).not.toContain(deviceId);
    expect(await first.listPods()).toEqual([]);

    // A devicelet started now finds nothing of it, in the broker or in the store.
    await first.stop();
    const second = await startProvider(2);
    expect(await ids(second)).not.toContain(deviceId);
    expect(await second.listPods()).toEqual([]);

    // Put back into service: a live birth makes it a device again (a new epoch, from scratch).
    const client = await device(deviceId, { seq: 10, leave: false });
    try {
      await eventually(async () => expect(await ids(second)).toContain(deviceId));
    } finally {
      await client?.endAsync();
    }
  });

  it("does not retire a device that is online", async () => {
    const deviceId = `${id}-live`;
    const provider = providers.at(-1) ?? (await startProvider(3));
    const client = await device(deviceId, { seq: 1, leave: false });
    try {
      await eventually(async () => expect(await ids(provider)).toContain(deviceId));
      expect(await provider.retireDevice(deviceId)).toBe("online");
      expect(await ids(provider)).toContain(deviceId);
      expect(await retained(broker.url, topic(deviceId, "state"))).toBeDefined();
    } finally {
      await client?.endAsync();
    }
  });
});
