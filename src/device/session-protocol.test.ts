/**
 * The device protocol's finer points on the session (docs/protocol.md §§ 4, 5, 7): messages to
 * refuse that arrive before the birth, rejections in the report, epoch changes, the will of a
 * library that keeps its first one, and command time to live from arrival.
 */
import pino from "pino";
import { afterEach, describe, expect, it, vi } from "vitest";
import { FakeClock } from "../base/fake-clock.ts";
import { encodeMessage } from "../protocol/codec.ts";
import { topics } from "../protocol/topics.ts";
import type { AckMessage, DeviceEventMessage, PresenceMessage, ReportedDocument } from "../protocol/types.ts";
import { CommandRunner, type CommandAck } from "./commands.ts";
import { command, desiredDocument, desiredPod } from "./fixtures.ts";
import { startDeviceBroker, type DeviceBroker } from "../../test/support/device-broker.ts";
import { RuntimeRefusal } from "./runtime.ts";
import { DeviceSession, type BirthInfo, type DeviceSessionOptions } from "./session.ts";
import { SimRuntime } from "./sim-runtime.ts";

const logger = pino({ level: "silent" });
const ID = "dev-2";
const birth: BirthInfo = {
  deviceClass: "gateway",
  os: "linux",
  arch: "arm64",
  capacity: { cpu: "2", memory: "1Gi", pods: "10" },
  capabilities: { maxMessageBytes: 65536, encodings: ["json"], runtime: "process", logs: true, exec: false },
};

const sessions: DeviceSession[] = [];
const brokers: DeviceBroker[] = [];
afterEach(async () => {
  await Promise.all(sessions.splice(0).map((s) => s.stop()));
  await Promise.all(brokers.splice(0).map((b) => b.close()));
});
async function newBroker(): Promise<DeviceBroker> {
  const broker = await startDeviceBroker();
  brokers.push(broker);
  return broker;
}

async function online(broker: DeviceBroker, o: Partial<DeviceSessionOptions> = {}): Promise<DeviceSession> {
  const session = new DeviceSession({
    deviceId: ID,
    link: broker.link(ID),
    runtime: new SimRuntime(),
    device: birth,
    logger,
    reportCoalesceMs: 1,
    ...o,
  });
  sessions.push(session);
  await session.start();
  await session.whenOnline();
  return session;
}

const reported = (b: DeviceBroker) => b.retainedJson(topics.reported(ID)) as ReportedDocument | undefined;
const acks = (b: DeviceBroker) =>
  b.messagesOn<AckMessage>(topics.ack(ID)).flatMap((a) => (a.kind === "ack" ? [a] : []));
const births = (b: DeviceBroker) =>
  b.messagesOn<PresenceMessage>(topics.state(ID)).filter((m) => m.state === "online");
const publishDesired = (b: DeviceBroker, doc: Parameters<typeof encodeMessage>[0]) =>
  b.publish(topics.desired(ID), encodeMessage(doc), { retain: true });
const until = <T>(probe: () => T) => vi.waitFor(probe, { timeout: 4_000, interval: 2 });

describe("DeviceSession, before the birth (§ 5)", () => {
  it("acks an invalid retained document that arrived before the birth `rejected`, after the birth", async () => {
    const broker = await newBroker();
    const doc = { ...desiredDocument({ deviceId: ID, generation: 4 }), contentHash: "0".repeat(64) };
    await broker.publish(topics.desired(ID), JSON.stringify(doc), { retain: true });
    await broker.publish(topics.command(ID, "c1"), "{not json", { retain: true });
    await online(broker);
    await until(() => {
      expect(acks(broker)).toMatchObject([{ generation: 4, stage: "rejected", reason: "InvalidDocument" }]);
      expect(broker.messagesOn<DeviceEventMessage>(topics.evt(ID))).toMatchObject([
        { reason: "MessageRejected" },
      ]);
    });
    const birthSeq = births(broker)[0]?.seq ?? Infinity;
    expect(acks(broker)[0]?.seq).toBeGreaterThan(birthSeq);
    expect(broker.messagesOn<DeviceEventMessage>(topics.evt(ID))[0]?.seq).toBeGreaterThan(birthSeq);
    // Rejected is the final answer: the report says so (§ 3.3 `rejection`).
    await until(() =>
      expect(reported(broker)).toMatchObject({
        observedGeneration: 4,
        appliedGeneration: 0,
        rejection: { generation: 4, reason: "InvalidDocument" },
      }),
    );
  });
});

describe("DeviceSession, rejections and epochs (§ 4)", () => {
  it("does not evaluate a redelivered rejected document again and reports the rejection until a later one", async () => {
    const broker = await newBroker();
    const runtime = new SimRuntime();
    const apply = runtime.apply.bind(runtime);
    const applied: number[] = [];
    runtime.apply = (pods, tombstones) => {
      applied.push(pods.length);
      if (pods.length === 2) return Promise.reject(new RuntimeRefusal("TooLarge", "does not fit"));
      return apply(pods, tombstones);
    };
    const session = await online(broker, { runtime });
    const one = [desiredPod({ uid: "a" })];
    const two = [desiredPod({ uid: "a" }), desiredPod({ uid: "b" })];
    await publishDesired(broker, desiredDocument({ deviceId: ID, generation: 1, pods: one }));
    await until(() => expect(reported(broker)?.appliedGeneration).toBe(1));
    await publishDesired(broker, desiredDocument({ deviceId: ID, generation: 2, pods: two }));
    await until(() =>
      expect(reported(broker)).toMatchObject({
        observedGeneration: 2,
        appliedGeneration: 1,
        rejection: { generation: 2, reason: "TooLarge", message: "does not fit" },
        pods: [{ uid: "a" }],
      }),
    );
    // The retained copy again, after a reconnect: its `rejected` ack is repeated, nothing re-run.
    await session.goOffline();
    await session.goOnline();
    await until(() => expect(acks(broker).filter((a) => a.stage === "rejected")).toHaveLength(2));
    expect(applied).toEqual([1, 2]);
    await publishDesired(broker, desiredDocument({ deviceId: ID, generation: 3, pods: one }));
    await until(() => expect(reported(broker)?.appliedGeneration).toBe(3));
    expect(reported(broker)?.rejection).toBeUndefined();
  });

  it("across an epoch change reports the new epoch with appliedGeneration 0 until it applies one", async () => {
    const broker = await newBroker();
    const runtime = new SimRuntime();
    const apply = runtime.apply.bind(runtime);
    let refuse = false;
    runtime.apply = (pods, tombstones) =>
      refuse ? Promise.reject(new RuntimeRefusal("TooLarge", "no")) : apply(pods, tombstones);
    await online(broker, { runtime });
    const pods = [desiredPod({ uid: "a" })];
    await publishDesired(broker, desiredDocument({ deviceId: ID, epoch: "e1", generation: 9, pods }));
    await until(() => expect(reported(broker)).toMatchObject({ epoch: "e1", appliedGeneration: 9 }));
    refuse = true;
    await publishDesired(broker, desiredDocument({ deviceId: ID, epoch: "e2", generation: 1, pods }));
    await until(() =>
      expect(reported(broker)).toMatchObject({
        epoch: "e2",
        observedGeneration: 1,
        appliedGeneration: 0,
        rejection: { generation: 1 },
        pods: [{ uid: "a", phase: "Running" }],
      }),
    );
  });
});

describe("DeviceSession, reported refresh (§ 3.3)", () => {
  it("re-publishes an unchanged report at a random point of the refresh interval's last fifth", async () => {
    // random 0 → after 80% of the interval; random 0.5 → after 90%: devices started together
    // spread their refreshes over a fifth of it rather than sending them all in one second.
    for (const [random, dueMs] of [
      [0, 8_000],
      [0.5, 9_000],
    ] as const) {
      const broker = await newBroker();
      const clock = new FakeClock(Date.now());
      await online(broker, { clock, reportRefreshMs: 10_000, random: () => random });
      const reports = () => broker.messagesOn<ReportedDocument>(topics.reported(ID));
      await until(() => expect(reports()).toHaveLength(1));
      clock.advance(dueMs - 1);
      // Nothing due yet: give a publish the time it would take to arrive, then look.
      await new Promise((r) => setTimeout(r, 100));
      expect(reports()).toHaveLength(1);
      clock.advance(1);
      await until(() => expect(reports()).toHaveLength(2));
      const [first, refresh] = reports();
      expect(refresh?.seq).toBeGreaterThan(first?.seq ?? Infinity);
      expect({ ...refresh, seq: 0, observedAt: "" }).toEqual({ ...first, seq: 0, observedAt: "" });
      // The refresh re-arms the timer: the next one is due a whole jittered interval later.
      clock.advance(dueMs - 1);
      await new Promise((r) => setTimeout(r, 100));
      expect(reports()).toHaveLength(2);
      clock.advance(1);
      await until(() => expect(reports()).toHaveLength(3));
      await Promise.all(sessions.splice(0).map((x) => x.stop()));
    }
  });
});

describe("DeviceSession wills (§ 5)", () => {
  it("re-arms the will with the coming birth's seq before each CONNECT, or keeps the first when asked", async () => {
    for (const keepFirstWill of [false, true]) {
      const broker = await newBroker();
      const session = await online(broker, { keepFirstWill });
      await session.goOffline();
      await session.goOnline();
      await session.goOffline();
      const will = () => broker.retainedJson(topics.state(ID)) as PresenceMessage | undefined;
      // The broker publishes the will once it sees the connection gone.
      await until(() => expect(will()).toMatchObject({ state: "lost", bootId: session.bootId }));
      const [first, second] = births(broker);
      expect(second?.seq).toBeGreaterThan(first?.seq ?? Infinity);
      expect(will()?.seq).toBe(keepFirstWill ? first?.seq : second?.seq);
      await session.stop();
    }
  });
});

describe("CommandRunner time to live (§ 7)", () => {
  function runner(o: { wallClock: boolean; now: () => number }) {
    const outcomes: CommandAck[] = [];
    const runtime = new SimRuntime();
    const r = new CommandRunner({
      runtime,
      now: o.now,
      wallClock: o.wallClock,
      reboot: () => Promise.resolve(),
      ack: (a) => outcomes.push(a),
      logger,
    });
    return { r, outcomes };
  }
  const reboot = (commandId: string, ttlMs: number, ttlSeconds?: number) => ({
    ...command({ deviceId: ID, commandId, command: "reboot", ttlMs }),
    ...(ttlSeconds === undefined ? {} : { ttlSeconds }),
  });

  it("counts ttlSeconds from arrival, and ignores expiresAt on a device without a wall clock", async () => {
    let now = Date.now();
    const { r, outcomes } = runner({ wallClock: false, now: () => now });
    // expiresAt long past (this device's clock cannot be trusted), time to live not run out: runs.
    r.handle(reboot("c1", -3_600_000, 30), now);
    // Arrived 31 s ago and waited (for the birth, say): expired.
    const arrived = now;
    now += 31_000;
    r.handle(reboot("c2", 60_000, 30), arrived);
    await vi.waitFor(() => expect(outcomes.filter((a) => a.stage !== "received")).toHaveLength(2));
    const final = Object.fromEntries(
      outcomes.filter((a) => a.stage !== "received").map((a) => [a.commandId, a.stage]),
    );
    expect(final).toEqual({ c1: "done", c2: "expired" });
  });

  it("with a wall clock, expires by either expiresAt or ttlSeconds", async () => {
    const now = Date.now();
    const { r, outcomes } = runner({ wallClock: true, now: () => now });
    r.handle(reboot("c1", -60_000, 30), now);
    r.handle(reboot("c2", 60_000, 30), now - 31_000);
    r.handle(reboot("c3", 60_000, 30), now);
    await vi.waitFor(() => expect(outcomes.filter((a) => a.stage !== "received")).toHaveLength(3));
    const final = Object.fromEntries(
      outcomes.filter((a) => a.stage !== "received").map((a) => [a.commandId, a.stage]),
    );
    expect(final).toEqual({ c1: "expired", c2: "expired", c3: "done" });
  });
});
