/**
 * HubConnection's presence against the local IoT Hub emulator with real devices: an `online`
 * device whose heartbeat stops, or that the hub reports Disconnected, gets its will delivered as
 * its state once; a heartbeat alone brings nothing back. Also the event feed's part.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { FakeClock } from "../../src/base/fake-clock.ts";
import { topics } from "../../src/protocol/topics.ts";
import { eventually } from "../../test/support/eventually.ts";
import { startTestHub, type Recorded, type TestHub } from "../../test/support/iothub-hub.ts";
import { routeChange } from "../../hack/iothub-emulator/event-hubs.ts";
import type { EventFeed, HubEvent } from "./event-feed-types.ts";
import type { HubConnection } from "./hub-connection.ts";

let t: TestHub;
beforeAll(async () => {
  t = await startTestHub();
});
afterAll(async () => {
  await t.close();
});
afterEach(() => {
  t.offsetMs = 0;
});

const states = (messages: Recorded[], deviceId: string) =>
  messages
    .filter((m) => m.topic === topics.state(deviceId))
    .map((m) => ({ ...(JSON.parse(m.text) as { state: string; bootId: string }), retained: m.retained }));

/** Resolves after `n` more complete sweeps (each one query page here). */
async function sweeps(conn: HubConnection, n: number): Promise<void> {
  const target = conn.operations().query + n + 1;
  await eventually(() => expect(conn.operations().query).toBeGreaterThanOrEqual(target), {
    timeoutMs: 10_000,
    intervalMs: 20,
  });
}

describe("HubConnection presence", () => {
  it("delivers the will once when the heartbeat stops; a heartbeat alone changes nothing", async () => {
    const deviceClock = new FakeClock(Date.now());
    const { deviceId, session } = await t.onlineDevice({ clock: deviceClock, heartbeatSeconds: 5 });
    const { conn, messages } = await t.connection({ ids: [deviceId] });
    await conn.subscribe(topics.fromDevices());
    await eventually(() =>
      expect(states(messages, deviceId)).toMatchObject([{ state: "online", retained: true }]),
    );
    await sweeps(conn, 2);
    expect(states(messages, deviceId)).toHaveLength(1); // 2 × 5 s + margin not yet passed

    t.offsetMs = 30_000; // the heartbeat's seq has not moved for 30 s of local time
    await eventually(() => expect(states(messages, deviceId)).toHaveLength(2), {
      timeoutMs: 5_000,
      intervalMs: 20,
    });
    expect(states(messages, deviceId)[1]).toMatchObject({
      state: "lost",
      bootId: session.bootId,
      retained: false,
    });

    // The heartbeat moves again (seq 2): still lost until the device says otherwise.
    deviceClock.advance(5_000);
    await eventually(
      () =>
        expect(t.emulator.hub.twin(deviceId)).toMatchObject({
          properties: { reported: { devicelet_presence: { seq: 2 } } },
        }),
      { timeoutMs: 5_000, intervalMs: 20 },
    );
    await sweeps(conn, 3);
    expect(states(messages, deviceId).map((s) => s.state)).toEqual(["online", "lost"]);
  });

  it("delivers the will when the hub reports the device Disconnected, and the birth when it is back", async () => {
    const { deviceId, session } = await t.onlineDevice();
    const { conn, messages } = await t.connection({ ids: [deviceId] });
    await conn.subscribe([topics.state(deviceId)]);
    await eventually(() => expect(states(messages, deviceId)).toHaveLength(1));
    await session.goOffline();
    await eventually(
      () => expect(states(messages, deviceId).at(-1)).toMatchObject({ state: "lost", retained: false }),
      {
        timeoutMs: 5_000,
        intervalMs: 20,
      },
    );
    await session.goOnline();
    await eventually(() => expect(states(messages, deviceId).at(-1)).toMatchObject({ state: "online" }), {
      timeoutMs: 10_000,
      intervalMs: 20,
    });
    await sweeps(conn, 2);
    expect(states(messages, deviceId).map((s) => s.state)).toEqual(["online", "lost", "online"]);
    expect(messages.every((m) => m.topic === topics.state(deviceId))).toBe(true); // only what matches
  });
});

describe("HubConnection with an event feed", () => {
  it("turns devicelet telemetry into messages and twin change events into watches", async () => {
    const deviceId = t.newDeviceId();
    let push: ((e: HubEvent) => void) | undefined;
    let stopped = 0;
    const events: EventFeed = {
      start: (_signal, onEvent) => {
        push = onEvent;
        return Promise.resolve();
      },
      stop: () => {
        stopped += 1;
        return Promise.resolve();
      },
      health: () => ({ ready: false, message: "partition 0 not read yet" }),
    };
    const { conn, messages } = await t.connection({ ids: [deviceId] }, { events, sweepIntervalMs: 60_000 });
    await conn.subscribe(topics.fromDevices());
    const event = (source: string, properties: Record<string, string>, body = "{}"): HubEvent => ({
      deviceId,
      source,
      properties,
      body: Buffer.from(body),
      enqueuedAtMs: Date.now(),
    });
    push?.(event("Telemetry", { "devicelet-kind": "evt" }, '{"kind":"event"}'));
    push?.(event("Telemetry", { "devicelet-kind": "io" }));
    push?.(event("Telemetry", {}));
    await eventually(() => expect(messages.map((m) => m.topic)).toEqual([topics.evt(deviceId)]));
    expect(messages[0]).toMatchObject({ text: '{"kind":"event"}', retained: false });

    const reads = conn.operations().twinRead;
    push?.(event("twinChangeEvents", {}));
    await eventually(() => expect(conn.operations().twinRead).toBeGreaterThan(reads), {
      timeoutMs: 2_000,
      intervalMs: 20,
    });
    expect(conn.health()).toMatchObject({
      ready: true,
      message: expect.stringContaining("partition 0 not read yet") as string,
    });
    await conn.stop();
    await conn.stop();
    expect(stopped).toBe(1);
  });

  it("applies twin change events that follow its view without reading; a gap costs one read, a stale event none", async () => {
    const { deviceId, session } = await t.onlineDevice({ heartbeatSeconds: 1 });
    let push: ((e: HubEvent) => void) | undefined;
    // The emulator's own routing of twin changes, as its Event Hubs-compatible endpoint sends them.
    const routed: HubEvent[] = [];
    const unsubscribe = t.emulator.hub.onChange((change) => {
      const e = routeChange(change, { routes: { twinChangeEvents: true }, hubName: "h", now: Date.now() });
      if (e === undefined || e.deviceId !== deviceId) return;
      const event: HubEvent = {
        deviceId,
        source: e.source,
        properties: {},
        body: e.body,
        enqueuedAtMs: Date.now(),
      };
      routed.push(event);
      push?.(event);
    });
    const events: EventFeed = {
      start: (_signal, onEvent) => {
        push = onEvent;
        return Promise.resolve();
      },
      stop: () => Promise.resolve(),
      health: () => ({ ready: true, message: "" }),
    };
    try {
      const { conn, messages } = await t.connection(
        { ids: [deviceId] },
        { events, sweepIntervalMs: 600_000 },
      );
      await conn.subscribe(topics.fromDevices());
      await eventually(() => expect(states(messages, deviceId)).toMatchObject([{ state: "online" }]));
      const reads = conn.operations().twinRead;

      // Heartbeats (one a second) and a state change, all as events: no read, and the new state arrives.
      const heartbeatsBefore = routed.length;
      await eventually(() => expect(routed.length).toBeGreaterThanOrEqual(heartbeatsBefore + 2), {
        timeoutMs: 5_000,
        intervalMs: 20,
      });
      await session.sleep(new Date(Date.now() + 3_600_000));
      await eventually(() =>
        expect(states(messages, deviceId).map((m) => m.state)).toEqual(["online", "sleeping"]),
      );
      await session.goOnline();
      await eventually(() =>
        expect(states(messages, deviceId).map((m) => m.state)).toEqual(["online", "sleeping", "online"]),
      );
      expect(conn.operations().twinRead).toBe(reads);

      // An event from before the view (already known): nothing. One that skips versions: one read.
      const last = JSON.parse(routed.at(-1)?.body.toString() ?? "{}") as { version: number };
      const synthetic = (version: number): HubEvent => ({
        deviceId,
        source: "twinChangeEvents",
        properties: {},
        body: Buffer.from(JSON.stringify({ version, properties: { reported: { other: 1 } } })),
        enqueuedAtMs: Date.now(),
      });
      push?.(synthetic(last.version - 1));
      push?.(synthetic(last.version + 5));
      await eventually(() => expect(conn.operations().twinRead).toBe(reads + 1), {
        timeoutMs: 2_000,
        intervalMs: 20,
      });
    } finally {
      unsubscribe();
      await session.stop();
    }
  });
});
