/**
 * EventHubsFeed against the emulator's Event Hubs-compatible endpoint, with real devices
 * (`azure-iot-device` over MQTT) sending: what the feed hands over, and that a dropped connection
 * or a stop and start loses and repeats nothing.
 */
import { Client as DeviceClient, Message } from "azure-iot-device";
import { Mqtt } from "azure-iot-device-mqtt";
import pino from "pino";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { startIotHubEmulator, type IotHubEmulator } from "../../hack/iothub-emulator/index.ts";
import { eventually } from "../../test/support/eventually.ts";
import { EventHubsFeed } from "./event-feed.ts";
import type { HubEvent } from "./event-feed-types.ts";

let emulator: IotHubEmulator;
const cleanups: (() => Promise<unknown>)[] = [];
const logger = pino({ level: "silent" });

beforeAll(async () => {
  emulator = await startIotHubEmulator({ routes: { twinChangeEvents: true } });
});
afterAll(async () => {
  await emulator.close();
});
afterEach(async () => {
  await Promise.all(cleanups.splice(0).map((c) => c().catch(() => undefined)));
});

let deviceCounter = 0;
async function openDevice(): Promise<{ deviceId: string; client: DeviceClient }> {
  deviceCounter += 1;
  const deviceId = `feed-dev-${deviceCounter}`;
  const { connectionString } = emulator.addDevice(deviceId);
  const client = DeviceClient.fromConnectionString(connectionString, Mqtt);
  await client.setOptions({ ca: emulator.ca });
  await client.open();
  cleanups.push(() => client.close());
  return { deviceId, client };
}

function send(client: DeviceClient, body: string, properties: Record<string, string> = {}): Promise<unknown> {
  const message = new Message(body);
  for (const [key, value] of Object.entries(properties)) message.properties.add(key, value);
  return client.sendEvent(message);
}

function newFeed(): EventHubsFeed {
  const feed = new EventHubsFeed({
    endpoint: { connectionString: emulator.eventHubsConnectionString },
    // The one transport where the SDK takes a CA: no process-wide trust needed.
    customEndpointAddress: emulator.eventHubsWebSocketEndpointAddress,
    ca: emulator.ca,
    logger,
  });
  cleanups.push(() => feed.stop());
  return feed;
}

async function started(feed: EventHubsFeed): Promise<HubEvent[]> {
  const events: HubEvent[] = [];
  await feed.start(AbortSignal.timeout(20_000), (e) => events.push(e));
  return events;
}

/** What keeps this process alive, by kind (immediates come and go with any I/O). */
function handles(): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const kind of process.getActiveResourcesInfo()) {
    if (kind !== "Immediate") counts[kind] = (counts[kind] ?? 0) + 1;
  }
  return counts;
}

const bodies = (events: HubEvent[], deviceId: string) =>
  events.filter((e) => e.deviceId === deviceId).map((e) => e.body.toString());

describe("EventHubsFeed", () => {
  it("delivers device messages and twin changes as HubEvents, only those after start", async () => {
    const { deviceId, client } = await openDevice();
    await send(client, "before start");
    const feed = newFeed();
    const events = await started(feed);
    expect(feed.health()).toEqual({ ready: true, message: "reading 2/2 partitions" });

    await send(client, '{"id":"c-1"}', { "devicelet-kind": "ack" });
    const twin = await client.getTwin();
    await new Promise<void>((resolve, reject) => {
      const reported = twin.properties.reported as { update(p: object, done: (err?: Error) => void): void };
      reported.update({ phase: "Running" }, (err) => (err ? reject(err) : resolve()));
    });

    await eventually(() => expect(events.filter((e) => e.deviceId === deviceId)).toHaveLength(2), {
      timeoutMs: 20_000,
    });
    const [ack, change] = events.filter((e) => e.deviceId === deviceId);
    expect(ack).toMatchObject({ source: "Telemetry", properties: { "devicelet-kind": "ack" } });
    expect(ack?.body.toString()).toBe('{"id":"c-1"}');
    expect(ack?.enqueuedAtMs).toBeGreaterThan(Date.now() - 60_000);
    expect(change).toMatchObject({ source: "twinChangeEvents", properties: { opType: "updateTwin" } });
    expect(JSON.parse(change?.body.toString() ?? "")).toMatchObject({
      properties: { reported: { phase: "Running" } },
    });
  });

  it("resumes after the endpoint drops its connection, without gaps or duplicates", async () => {
    const { deviceId, client } = await openDevice();
    const feed = newFeed();
    const events = await started(feed);
    for (let i = 0; i < 5; i += 1) await send(client, `m${i}`);
    await eventually(() => expect(bodies(events, deviceId)).toHaveLength(5), { timeoutMs: 20_000 });

    expect(emulator.eventHubs.dropConnections()).toBeGreaterThan(0);
    for (let i = 5; i < 10; i += 1) await send(client, `m${i}`);

    const expected = Array.from({ length: 10 }, (_, i) => `m${i}`);
    await eventually(() => expect(bodies(events, deviceId)).toHaveLength(10), { timeoutMs: 60_000 });
    expect(bodies(events, deviceId)).toEqual(expected);
    await eventually(() => expect(feed.health().ready).toBe(true), { timeoutMs: 30_000 });
  });

  it("keeps trying to start while the endpoint is not trusted, until aborted", async () => {
    const feed = new EventHubsFeed({
      endpoint: { connectionString: emulator.eventHubsConnectionString },
      customEndpointAddress: emulator.eventHubsWebSocketEndpointAddress,
      transport: "websockets",
      logger,
    });
    cleanups.push(() => feed.stop());
    const controller = new AbortController();
    const starting = feed.start(controller.signal, () => undefined);
    starting.catch(() => undefined);
    await eventually(() => expect(feed.health().message).toMatch(/certificate/), { timeoutMs: 20_000 });
    expect(feed.health().ready).toBe(false);
    controller.abort();
    await expect(starting).rejects.toThrow(/aborted/);
    expect(feed.health()).toEqual({ ready: false, message: "not started" });
  });

  it("stops cleanly and resumes after a stop where it stopped", async () => {
    const { deviceId, client } = await openDevice();
    const before = handles();
    const feed = newFeed();
    const first = await started(feed);
    await send(client, "one");
    await eventually(() => expect(bodies(first, deviceId)).toEqual(["one"]), { timeoutMs: 20_000 });

    await feed.stop();
    await feed.stop();
    expect(feed.health().ready).toBe(false);
    // Nothing of the client is left: the endpoint sees no connection, and this process holds the
    // same sockets and timers as before the feed started (none would keep it from exiting).
    await eventually(() => expect(emulator.eventHubs.connectionCount()).toBe(0), { timeoutMs: 10_000 });
    await eventually(
      () => {
        const after = handles();
        expect({ ...after, Timeout: 0 }).toEqual({ ...before, Timeout: 0 });
        expect(after.Timeout ?? 0).toBeLessThanOrEqual(before.Timeout ?? 0);
      },
      { timeoutMs: 10_000 },
    );

    await send(client, "two");
    const second = await started(feed);
    await send(client, "three");
    await eventually(() => expect(bodies(second, deviceId)).toEqual(["two", "three"]), {
      timeoutMs: 20_000,
    });
    expect(bodies(first, deviceId)).toEqual(["one"]);
  });
});
