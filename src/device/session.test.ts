import fc from "fast-check";
import pino from "pino";
import { afterEach, describe, expect, it, vi } from "vitest";
import { encodeMessage } from "../protocol/codec.ts";
import { topics } from "../protocol/topics.ts";
import type { AckMessage, DeviceEventMessage, PresenceMessage, ReportedDocument } from "../protocol/types.ts";
import { command, desiredDocument, desiredPod, tombstone } from "./fixtures.ts";
import { startDeviceBroker, type DeviceBroker } from "../../test/support/device-broker.ts";
import { RuntimeRefusal, type Runtime } from "./runtime.ts";
import { DeviceSession, type BirthInfo, type DeviceSessionOptions } from "./session.ts";
import { SimRuntime } from "./sim-runtime.ts";
import { memoryStore, type SessionStore } from "./store.ts";

const logger = pino({ level: "silent" });
const ID = "dev-1";
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

async function online(
  broker: DeviceBroker,
  o: Partial<DeviceSessionOptions> & { store?: SessionStore } = {},
): Promise<DeviceSession> {
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
const state = (b: DeviceBroker) => b.retainedJson(topics.state(ID)) as PresenceMessage | undefined;
const acks = (b: DeviceBroker) => b.messagesOn<AckMessage>(topics.ack(ID));
const publishDesired = (b: DeviceBroker, doc: Parameters<typeof encodeMessage>[0]) =>
  b.publish(topics.desired(ID), encodeMessage(doc), { retain: true });
const until = <T>(probe: () => T) => vi.waitFor(probe, { timeout: 4_000, interval: 2 });

describe("DeviceSession", () => {
  it("subscribes before it publishes the retained birth, with its will armed", async () => {
    const broker = await newBroker();
    const session = await online(broker);
    const firstPublish = broker.trace.findIndex((t) => t.startsWith("publish"));
    const subscribed = broker.trace.slice(0, firstPublish);
    expect(subscribed).toEqual(
      expect.arrayContaining([
        `subscribe ${topics.desired(ID)}`,
        `subscribe ${topics.commands(ID)}`,
        `subscribe ${topics.bridge()}`,
      ]),
    );
    expect(broker.trace[firstPublish]).toBe(`publish ${topics.state(ID)}`);
    expect(state(broker)).toMatchObject({ state: "online", bootId: session.bootId, device: birth });
    const birthSeq = state(broker)?.seq;
    await session.goOffline();
    // The broker publishes the will once it sees the connection gone.
    await until(() => expect(state(broker)?.state).toBe("lost"));
    const lost = state(broker);
    // The will repeats the seq of the birth on its connection (docs/protocol.md § 5).
    expect(lost).toMatchObject({ state: "lost", bootId: session.bootId, seq: birthSeq });
    expect(lost?.device).toBeUndefined();
  });

  it("applies a desired document once, acks it in stages and reports the running pod", async () => {
    const broker = await newBroker();
    const pod = desiredPod({ uid: "p1" });
    await publishDesired(broker, desiredDocument({ deviceId: ID, generation: 3, pods: [pod] }));
    const session = await online(broker);
    await until(() => expect(reported(broker)?.appliedGeneration).toBe(3));
    expect(acks(broker).map((a) => a.kind === "ack" && a.stage)).toEqual(["received", "applied"]);
    expect(reported(broker)?.pods).toEqual([
      expect.objectContaining({ uid: "p1", hash: pod.hash, phase: "Running" }),
    ]);
    // Redelivered: as is, and as the retained copy after a reconnect. Not applied again, but its
    // final ack is repeated each time (docs/protocol.md § 4).
    const applied = () => acks(broker).filter((a) => a.kind === "ack" && a.stage === "applied");
    await publishDesired(broker, desiredDocument({ deviceId: ID, generation: 3, pods: [pod] }));
    await until(() => expect(applied()).toHaveLength(2));
    await session.goOffline();
    await session.goOnline();
    await until(() => expect(applied()).toHaveLength(3));
    expect(acks(broker).filter((a) => a.kind === "ack" && a.stage === "received")).toHaveLength(1);
    expect(session.applies).toBe(1);
    expect(session.appliedGenerations).toEqual([{ epoch: "epoch-1", generation: 3 }]);
  });

  it("counts as a change only a document that alters what runs, not one that drops a done tombstone", async () => {
    const broker = await newBroker();
    const oldPod = desiredPod({ uid: "old" });
    const newPod = desiredPod({ uid: "new" });
    await publishDesired(broker, desiredDocument({ deviceId: ID, generation: 1, pods: [oldPod] }));
    const session = await online(broker);
    await until(() => expect(reported(broker)?.appliedGeneration).toBe(1));
    await publishDesired(
      broker,
      desiredDocument({ deviceId: ID, generation: 2, pods: [newPod], tombstones: [tombstone(oldPod)] }),
    );
    await until(() => expect(reported(broker)?.appliedGeneration).toBe(2));
    await publishDesired(broker, desiredDocument({ deviceId: ID, generation: 3, pods: [newPod] }));
    await until(() => expect(reported(broker)?.appliedGeneration).toBe(3));
    expect(session.applies).toBe(3);
    expect(session.changes).toBe(2);
  });

  it("ignores an older generation of the same epoch and always applies a new epoch", async () => {
    const broker = await newBroker();
    const session = await online(broker);
    await publishDesired(broker, desiredDocument({ deviceId: ID, generation: 5 }));
    await until(() => expect(session.appliedGeneration).toBe(5));
    await publishDesired(broker, desiredDocument({ deviceId: ID, generation: 4 }));
    await publishDesired(broker, desiredDocument({ deviceId: ID, generation: 2, epoch: "epoch-2" }));
    await until(() => expect(session.epoch).toBe("epoch-2"));
    await until(() => expect(reported(broker)).toMatchObject({ epoch: "epoch-2", appliedGeneration: 2 }));
    expect(session.appliedGenerations).toEqual([
      { epoch: "epoch-1", generation: 5 },
      { epoch: "epoch-2", generation: 2 },
    ]);
  });

  it("stops and forgets a tombstoned pod and a pod no longer listed", async () => {
    const broker = await newBroker();
    const session = await online(broker);
    const [a, b] = [desiredPod({ uid: "a" }), desiredPod({ uid: "b" })];
    await publishDesired(broker, desiredDocument({ deviceId: ID, generation: 1, pods: [a, b] }));
    await until(() => expect(reported(broker)?.pods.map((p) => p.uid)).toEqual(["a", "b"]));
    await publishDesired(
      broker,
      desiredDocument({ deviceId: ID, generation: 2, pods: [b], tombstones: [tombstone(a)] }),
    );
    await until(() => expect(reported(broker)?.pods.map((p) => p.uid)).toEqual(["b"]));
    await publishDesired(broker, desiredDocument({ deviceId: ID, generation: 3 }));
    await until(() => expect(reported(broker)?.pods).toEqual([]));
    expect(session.applies).toBe(3);
  });

  it("acks `rejected` with the runtime's reason and still reports the observed generation", async () => {
    const broker = await newBroker();
    const runtime = new SimRuntime();
    runtime.apply = () => Promise.reject(new RuntimeRefusal("TooLarge", "does not fit"));
    await online(broker, { runtime });
    await publishDesired(
      broker,
      desiredDocument({ deviceId: ID, generation: 1, pods: [desiredPod({ uid: "x" })] }),
    );
    await until(() =>
      expect(acks(broker).at(-1)).toMatchObject({
        stage: "rejected",
        reason: "TooLarge",
        message: "does not fit",
      }),
    );
    expect(reported(broker)).toMatchObject({ observedGeneration: 1, appliedGeneration: 0 });
  });

  it("re-sends the final ack after the next birth when the connection dropped during the apply", async () => {
    const broker = await newBroker();
    const runtime = new SimRuntime();
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const apply = runtime.apply.bind(runtime);
    runtime.apply = async (pods, tombstones) => {
      await gate;
      return apply(pods, tombstones);
    };
    const session = await online(broker, { runtime });
    await publishDesired(broker, desiredDocument({ deviceId: ID, generation: 1 }));
    await until(() => expect(acks(broker).map((a) => a.kind === "ack" && a.stage)).toEqual(["received"]));
    await session.goOffline();
    release();
    await until(() => expect(session.appliedGeneration).toBe(1));
    expect(acks(broker)).toHaveLength(1);
    await session.goOnline();
    await until(() =>
      expect(acks(broker).map((a) => a.kind === "ack" && a.stage)).toEqual(["received", "applied"]),
    );
    const births = broker.messagesOn<PresenceMessage>(topics.state(ID)).filter((m) => m.state === "online");
    expect(acks(broker)[1]?.seq).toBeGreaterThan(births.at(-1)?.seq ?? Infinity);
  });

  it("refuses pods beyond its capacity, as the kubelet's admission does", async () => {
    const broker = await newBroker();
    await online(broker, { runtime: new SimRuntime({ capacity: { pods: "1" } }) });
    await publishDesired(
      broker,
      desiredDocument({
        deviceId: ID,
        generation: 1,
        pods: [desiredPod({ uid: "a" }), desiredPod({ uid: "b" })],
      }),
    );
    await until(() =>
      expect(reported(broker)?.pods.map((p) => [p.uid, p.phase, p.reason])).toEqual([
        ["a", "Running", undefined],
        ["b", "Pending", "OutOfpods"],
      ]),
    );
  });

  it("runs commands once, acks expired ones `expired` and unsupported ones `failed`", async () => {
    const broker = await newBroker();
    const runtime = new SimRuntime();
    const noExec: Runtime = {
      apply: (pods, tombstones) => runtime.apply(pods, tombstones),
      report: () => runtime.report(),
      onChange: (cb) => runtime.onChange(cb),
      restartApp: (uid, app) => runtime.restartApp(uid, app),
      stop: () => runtime.stop(),
    };
    await online(broker, { runtime: noExec });
    await publishDesired(
      broker,
      desiredDocument({ deviceId: ID, generation: 1, pods: [desiredPod({ uid: "p" })] }),
    );
    await until(() => expect(reported(broker)?.appliedGeneration).toBe(1));
    const send = (c: ReturnType<typeof command>) =>
      broker.publish(topics.command(ID, c.commandId), encodeMessage(c));
    const restart = command({
      deviceId: ID,
      commandId: "c1",
      command: "restart-app",
      podUid: "p",
      app: "main",
    });
    await send(restart);
    await send(restart);
    await send(
      command({ deviceId: ID, commandId: "c2", command: "restart-app", podUid: "p", app: "main", ttlMs: -1 }),
    );
    await send(
      command({ deviceId: ID, commandId: "c3", command: "exec", podUid: "p", app: "main", args: ["ls"] }),
    );
    await until(() =>
      expect(acks(broker).filter((a) => a.kind === "command-ack" && a.stage !== "received")).toHaveLength(3),
    );
    const outcome = Object.fromEntries(
      acks(broker).flatMap((a) =>
        a.kind === "command-ack" && a.stage !== "received" ? [[a.commandId, a.stage]] : [],
      ),
    );
    expect(outcome).toEqual({ c1: "done", c2: "expired", c3: "failed" });
    await until(() => expect(reported(broker)?.pods[0]?.apps[0]?.restartCount).toBe(1));
    expect(
      acks(broker).find((a) => a.kind === "command-ack" && a.commandId === "c3" && a.stage === "failed"),
    ).toMatchObject({
      message: expect.stringMatching(/^Unsupported:/) as unknown,
    });
  });

  it("acks `rejected` InvalidDocument for an invalid document whose version is readable", async () => {
    const broker = await newBroker();
    const session = await online(broker);
    const doc = { ...desiredDocument({ deviceId: ID, generation: 4 }), contentHash: "0".repeat(64) };
    await broker.publish(topics.desired(ID), JSON.stringify(doc), { retain: true });
    await until(() =>
      expect(acks(broker)).toMatchObject([{ generation: 4, stage: "rejected", reason: "InvalidDocument" }]),
    );
    expect(session.applies).toBe(0);
  });

  it("handles what arrives before its birth (the retained document, commands) after it", async () => {
    const broker = await newBroker();
    await publishDesired(
      broker,
      desiredDocument({ deviceId: ID, generation: 1, pods: [desiredPod({ uid: "p" })] }),
    );
    // Retained here only so that it is delivered together with the document, before the birth.
    const expired = command({
      deviceId: ID,
      commandId: "c1",
      command: "restart-app",
      podUid: "p",
      app: "main",
      ttlMs: -1,
    });
    await broker.publish(topics.command(ID, "c1"), encodeMessage(expired), { retain: true });
    await online(broker);
    await until(() => {
      expect(acks(broker).filter((a) => a.kind === "command-ack")).toMatchObject([{ stage: "expired" }]);
      expect(
        acks(broker)
          .filter((a) => a.kind === "ack")
          .map((a) => a.stage),
      ).toEqual(["received", "applied"]);
    });
    const birthSeq =
      broker.messagesOn<PresenceMessage>(topics.state(ID)).find((m) => m.state === "online")?.seq ?? Infinity;
    for (const a of acks(broker)) expect(a.seq).toBeGreaterThan(birthSeq);
  });

  it("turns an invalid message into a Warning event and ignores a cleared desired document", async () => {
    const broker = await newBroker();
    const session = await online(broker);
    await broker.publish(topics.desired(ID), "{not json", { retain: true });
    await broker.publish(topics.desired(ID), "", { retain: true });
    await until(() => expect(broker.messagesOn<DeviceEventMessage>(topics.evt(ID))).toHaveLength(1));
    expect(broker.messagesOn<DeviceEventMessage>(topics.evt(ID))[0]).toMatchObject({
      type: "Warning",
      reason: "MessageRejected",
    });
    expect(session.applies).toBe(0);
  });

  it("sleeps with `sleeping` and wakeAt (no will), and comes back with a birth", async () => {
    const broker = await newBroker();
    const session = await online(broker);
    const wakeAt = new Date(Date.now() + 3_600_000);
    await session.sleep(wakeAt);
    expect(state(broker)).toMatchObject({ state: "sleeping", wakeAt: wakeAt.toISOString() });
    expect(session.online).toBe(false);
    await session.goOnline();
    expect(state(broker)).toMatchObject({ state: "online" });
    // The clean disconnect discarded the will: nothing between `sleeping` and the next birth.
    expect(broker.messagesOn<PresenceMessage>(topics.state(ID)).map((m) => m.state)).toEqual([
      "online",
      "sleeping",
      "online",
    ]);
  });

  it("reboots with a new boot id and restarted sequence numbers, keeping only what it persisted", async () => {
    for (const persisted of [true, false]) {
      const broker = await newBroker();
      const store = persisted ? { store: memoryStore() } : {};
      const session = await online(broker, store);
      await publishDesired(
        broker,
        desiredDocument({ deviceId: ID, generation: 1, pods: [desiredPod({ uid: "p" })] }),
      );
      await until(() => expect(reported(broker)?.pods[0]?.phase).toBe("Running"));
      const before = { bootId: session.bootId, seq: reported(broker)?.seq ?? 0 };
      await session.reboot();
      await session.whenOnline();
      await until(() => expect(reported(broker)?.pods[0]?.phase).toBe("Running"));
      expect(session.bootId).not.toBe(before.bootId);
      expect(state(broker)?.seq).toBeLessThan(before.seq);
      expect(session.applies).toBe(persisted ? 1 : 2);
      await session.stop();
    }
  });

  it("continues sequence numbers and skips re-applying after a restart on the same boot", async () => {
    const broker = await newBroker();
    const store = memoryStore();
    const first = await online(broker, { store, bootId: "boot-a" });
    await publishDesired(
      broker,
      desiredDocument({ deviceId: ID, generation: 7, pods: [desiredPod({ uid: "p" })] }),
    );
    await until(() => expect(reported(broker)?.appliedGeneration).toBe(7));
    const lastSeq = Math.max(...broker.messagesOn<{ seq?: number }>(topics.ack(ID)).map((m) => m.seq ?? 0));
    await first.stop();
    const second = await online(broker, { store, bootId: "boot-a" });
    await until(() => expect(reported(broker)?.pods[0]?.phase).toBe("Running"));
    expect(state(broker)?.seq).toBeGreaterThan(lastSeq);
    expect(second.applies).toBe(0);
    expect(reported(broker)).toMatchObject({ bootId: "boot-a", appliedGeneration: 7 });
  });

  it("never applies an (epoch, generation) twice nor goes back within an epoch, and ends on the newest", async () => {
    await fc.assert(
      fc.asyncProperty(
        // Epochs only move forward (a new one is minted when devicelet lost its state).
        fc.array(
          fc.record({ epoch: fc.constantFrom("e1", "e2"), generation: fc.integer({ min: 1, max: 6 }) }),
          {
            minLength: 1,
            maxLength: 12,
          },
        ),
        async (unordered) => {
          const docs = [...unordered].sort((a, b) => a.epoch.localeCompare(b.epoch));
          const broker = await newBroker();
          const session = await online(broker);
          for (const d of docs) await publishDesired(broker, desiredDocument({ deviceId: ID, ...d }));
          const lastEpoch = docs.at(-1)?.epoch;
          const newest = Math.max(...docs.filter((d) => d.epoch === lastEpoch).map((d) => d.generation));
          await until(() => expect([session.epoch, session.appliedGeneration]).toEqual([lastEpoch, newest]));
          const seen = session.appliedGenerations.map((g) => `${g.epoch}/${g.generation}`);
          expect(new Set(seen).size).toBe(seen.length);
          session.appliedGenerations.forEach((g, i) => {
            const prev = session.appliedGenerations[i - 1];
            if (prev?.epoch === g.epoch) expect(g.generation).toBeGreaterThan(prev.generation);
          });
          await session.stop();
          sessions.splice(0);
          await broker.close();
          brokers.splice(0);
        },
      ),
      { numRuns: 40 },
    );
  });
});
