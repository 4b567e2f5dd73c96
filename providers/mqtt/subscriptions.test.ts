/**
 * DeviceSubscriptions against a connection that records each SUBSCRIBE and UNSUBSCRIBE and can
 * refuse filters or fail: what a shard asks the broker for, in how many packets, and how it
 * recovers. The same behaviour against Mosquitto is in shards.test.ts.
 */
import pino from "pino";
import { afterEach, describe, expect, it, vi } from "vitest";
import { topics } from "../../src/protocol/topics.ts";
import { SubscriptionsRefused } from "./connection.ts";
import { MqttMetrics } from "./metrics.ts";
import {
  DeviceSubscriptions,
  FILTERS_PER_DEVICE,
  MAX_FILTER_BYTES_PER_PACKET,
  MAX_FILTERS_PER_PACKET,
  packetsOf,
} from "./subscriptions.ts";

const logger = pino({ level: "silent" });

/** Holds the filters the way a broker would; `refuse` names filters it answers 0x80 for. */
class RecordingConnection {
  readonly held = new Set<string>();
  readonly subscribes: string[][] = [];
  readonly unsubscribes: string[][] = [];
  readonly refuse = new Set<string>();
  connected = true;
  fail = false;
  isConnected = () => this.connected;
  subscribe(filters: readonly string[]): Promise<void> {
    this.subscribes.push([...filters]);
    if (this.fail) return Promise.reject(new Error("Connection closed"));
    const refused = filters.filter((f) => this.refuse.has(f));
    for (const f of filters) if (!this.refuse.has(f)) this.held.add(f);
    return refused.length > 0 ? Promise.reject(new SubscriptionsRefused(refused)) : Promise.resolve();
  }
  unsubscribe(filters: readonly string[]): Promise<void> {
    this.unsubscribes.push([...filters]);
    for (const f of filters) this.held.delete(f);
    return Promise.resolve();
  }
}

const inShardA = (id: string) => id.endsWith("-a");
const birth = Buffer.from("{}"); // admit looks at the topic and whether the payload is empty only

/** Serving shard A unless told otherwise (`{}`: every device). */
function setup({ owns }: { owns?: (id: string) => boolean } = { owns: inShardA }) {
  const connection = new RecordingConnection();
  const metrics = new MqttMetrics();
  const subs = new DeviceSubscriptions({
    connection,
    owns,
    allowed: (id) => !id.startsWith("refused"),
    metrics,
    logger,
    random: () => 0.5,
  });
  return { connection, metrics, subs };
}

afterEach(() => {
  vi.useRealTimers();
});

describe("topics of one device", () => {
  it("are the wildcard filters with the device's id in place of +, but for state (discovery)", () => {
    const perDevice = topics.fromDevice("+");
    expect([topics.state("+"), ...perDevice].sort()).toEqual([...topics.fromDevices()].sort());
    expect(FILTERS_PER_DEVICE).toBe(5);
  });
});

describe("packetsOf", () => {
  it("keeps each device's filters in one packet, within the filter and byte limits", () => {
    const short = Array.from({ length: 1667 }, (_, i) => `gw-${String(i).padStart(6, "0")}`);
    const packets = packetsOf(short);
    expect(packets.length).toBe(Math.ceil((1667 * FILTERS_PER_DEVICE) / MAX_FILTERS_PER_PACKET));
    expect(packets.flat()).toEqual(short);
    // The longest ids a device may have (128 characters): the byte limit cuts first.
    const long = Array.from({ length: 1667 }, (_, i) => `d${String(i).padStart(127, "0")}`);
    for (const ids of packetsOf(long)) {
      const filters = ids.flatMap((id) => topics.fromDevice(id));
      expect(filters.length).toBeLessThanOrEqual(MAX_FILTERS_PER_PACKET);
      expect(filters.reduce((n, f) => n + Buffer.byteLength(f) + 3, 0)).toBeLessThanOrEqual(
        MAX_FILTER_BYTES_PER_PACKET,
      );
    }
    expect(packetsOf(long).flat()).toEqual(long);
  });
});

describe("DeviceSubscriptions", () => {
  it("without an ownership predicate: the wildcard filters, every message admitted, nothing per device", async () => {
    const { connection, metrics, subs } = setup({});
    expect(subs.filters()).toEqual(topics.fromDevices());
    expect(subs.admit(topics.state("gw-1-b"), birth)).toBe(true);
    expect(subs.admit(topics.reported("gw-1-b"), birth)).toBe(true);
    subs.learn(["gw-2-a"]);
    subs.started();
    expect(await subs.settled(1_000)).toBe(true);
    expect(connection.subscribes).toEqual([]);
    expect(metrics.snapshot()).toMatchObject({ subscriptions: 6, notOwned: 0, subscribePackets: 1 });
  });

  it("asks for devices' retained states and reports again: beside the wildcard and dropped after, or a shard's own filters anew", async () => {
    const every = setup({});
    every.subs.started();
    await every.subs.reread(["gw-1", "gw-2"]);
    const passing = [
      topics.state("gw-1"),
      topics.reported("gw-1"),
      topics.state("gw-2"),
      topics.reported("gw-2"),
    ];
    expect(every.connection.subscribes).toEqual([passing]);
    expect(every.connection.unsubscribes).toEqual([passing]);
    expect(every.connection.held.size).toBe(0); // the wildcard filters stay the only ones

    const shard = setup();
    shard.subs.started();
    shard.subs.admit(topics.state("gw-1-a"), birth);
    expect(await shard.subs.settled(1_000)).toBe(true);
    const before = {
      subscribes: shard.connection.subscribes.length,
      unsubscribes: shard.connection.unsubscribes.length,
    };
    // Its own filters only for a device it holds: one not learned yet gets its `state` read only.
    await shard.subs.reread(["gw-1-a", "gw-2-a"]);
    expect(shard.connection.subscribes.slice(before.subscribes)).toEqual([
      [topics.state("gw-1-a"), topics.state("gw-2-a"), ...topics.fromDevice("gw-1-a")],
    ]);
    expect(shard.connection.unsubscribes.slice(before.unsubscribes)).toEqual([
      [topics.state("gw-1-a"), topics.state("gw-2-a")],
    ]);
    expect([...shard.connection.held].sort()).toEqual([...topics.fromDevice("gw-1-a")].sort());
  });

  // 300 devices: more than one re-read packet, none past the broker's filter limit.
  it("re-reads a fleet in packets of at most MAX_FILTERS_PER_PACKET filters", async () => {
    const shard = setup();
    shard.subs.started();
    const ids = Array.from({ length: 300 }, (_, i) => `gw-${i}-a`);
    for (const id of ids) shard.subs.admit(topics.state(id), birth);
    expect(await shard.subs.settled(1_000)).toBe(true);
    const before = shard.connection.subscribes.length;
    await shard.subs.reread(ids);
    const packets = shard.connection.subscribes.slice(before);
    expect(packets.length).toBeGreaterThan(1);
    for (const p of packets) expect(p.length).toBeLessThanOrEqual(MAX_FILTERS_PER_PACKET);
    expect(packets.flat().filter((f) => f.endsWith("/reported")).length).toBe(300);
  });

  it("a shard subscribes per owned device, learned from `state`, in few packets; others are dropped", async () => {
    const { connection, metrics, subs } = setup();
    expect(subs.filters()).toEqual([topics.state("+")]);
    subs.started();
    for (let i = 0; i < 300; i++) {
      expect(subs.admit(topics.state(`gw-${i}-a`), birth)).toBe(true);
      expect(subs.admit(topics.state(`gw-${i}-b`), birth)).toBe(false);
    }
    expect(subs.admit(topics.reported("gw-1-b"), birth)).toBe(false);
    expect(subs.admit(topics.ioOut("gw-1-b", "s-1"), birth)).toBe(false);
    expect(subs.admit(topics.desired("gw-1-b"), birth)).toBe(false);
    expect(subs.admit(topics.bridge(), birth)).toBe(true); // devicelet's own
    expect(subs.admit(topics.state("refused-a"), birth)).toBe(true); // Inbound refuses it
    expect(await subs.settled(1_000)).toBe(true);

    const wanted = Array.from({ length: 300 }, (_, i) => topics.fromDevice(`gw-${i}-a`)).flat();
    expect([...connection.held].sort()).toEqual(wanted.sort());
    expect(connection.subscribes.length).toBe(2); // 1,500 filters: 1,000 + 500
    expect(metrics.snapshot()).toMatchObject({
      subscriptions: 1 + 300 * FILTERS_PER_DEVICE,
      notOwned: 303,
      subscribePackets: 3,
    });
  });

  it("learns owned devices from read-back documents, and forgets a device whose state is cleared", async () => {
    const { connection, subs } = setup();
    subs.learn(["gw-1-a", "gw-2-b", "gw-3-a"]);
    expect(await subs.settled(1_000)).toBe(true);
    expect(subs.heldDevices()).toEqual(["gw-1-a", "gw-3-a"]);
    expect(subs.admit(topics.state("gw-1-a"), Buffer.alloc(0))).toBe(true); // retired
    expect(await subs.settled(1_000)).toBe(true);
    expect(connection.unsubscribes).toEqual([topics.fromDevice("gw-1-a")]);
    expect(subs.heldDevices()).toEqual(["gw-3-a"]);
    subs.admit(topics.state("gw-1-a"), birth); // born again
    expect(await subs.settled(1_000)).toBe(true);
    expect([...subs.heldDevices()].sort()).toEqual(["gw-1-a", "gw-3-a"]);
  });

  it("subscribes everything again after a connect without a session; only what is pending with one", async () => {
    const { connection, metrics, subs } = setup();
    subs.started();
    subs.learn(["gw-1-a", "gw-2-a"]);
    expect(await subs.settled(1_000)).toBe(true);
    connection.held.clear(); // the broker lost the session
    connection.subscribes.length = 0;

    subs.resume(true); // a session present: nothing to do
    expect(await subs.settled(1_000)).toBe(true);
    expect(connection.subscribes).toEqual([]);

    subs.resubscribe();
    expect(await subs.settled(1_000)).toBe(true);
    await vi.waitFor(() => expect(metrics.snapshot().subscriptions).toBe(11));
    expect(connection.subscribes).toContainEqual([topics.state("+")]);
    expect([...connection.held].sort()).toEqual(
      [topics.state("+"), ...topics.fromDevice("gw-1-a"), ...topics.fromDevice("gw-2-a")].sort(),
    );
  });

  it("tries refused and failed filters again with backoff, and at once on the next connect", async () => {
    vi.useFakeTimers();
    const { connection, metrics, subs } = setup();
    subs.started();
    connection.refuse.add(topics.ack("gw-2-a"));
    subs.learn(["gw-1-a", "gw-2-a"]);
    await vi.advanceTimersByTimeAsync(0);
    expect(subs.heldDevices()).toEqual(["gw-1-a"]); // gw-2-a was granted in part: not held
    expect(metrics.snapshot().subscriptions).toBe(1 + FILTERS_PER_DEVICE);

    connection.refuse.clear();
    await vi.advanceTimersByTimeAsync(1_000); // the first retry: about a second
    expect([...subs.heldDevices()].sort()).toEqual(["gw-1-a", "gw-2-a"]);

    // Lost while disconnected; tried again as soon as the connection is back.
    connection.connected = false;
    connection.fail = true;
    subs.learn(["gw-3-a"]);
    await vi.advanceTimersByTimeAsync(0);
    expect(subs.heldDevices()).not.toContain("gw-3-a");
    connection.connected = true;
    connection.fail = false;
    subs.resume(true);
    await vi.advanceTimersByTimeAsync(0);
    expect(subs.heldDevices()).toContain("gw-3-a");
    expect(metrics.snapshot().subscriptions).toBe(1 + 3 * FILTERS_PER_DEVICE);
  });

  it("settled says false when the broker does not acknowledge in time", async () => {
    const { connection, subs } = setup();
    connection.connected = false;
    subs.learn(["gw-1-a"]);
    expect(await subs.settled(20)).toBe(false);
    subs.stop();
  });
});
