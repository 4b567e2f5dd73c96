/**
 * Durability of applied state: nothing is acked `applied` that is not stored first, and a failed
 * store is a `rejected` ack with the runtime untouched, tried again on the next delivery.
 */
import pino from "pino";
import { afterEach, describe, expect, it, vi } from "vitest";
import { encodeMessage } from "../protocol/codec.ts";
import { topics } from "../protocol/topics.ts";
import type { AckMessage } from "../protocol/types.ts";
import { DesiredApplier, type DurableDesired } from "./applier.ts";
import { desiredDocument, desiredPod } from "./fixtures.ts";
import { startDeviceBroker, type DeviceBroker } from "../../test/support/device-broker.ts";
import type { DesiredAck } from "./outbox.ts";
import { DeviceSession, type BirthInfo } from "./session.ts";
import { SimRuntime } from "./sim-runtime.ts";
import { memoryStore, type SessionStore } from "./store.ts";

const logger = pino({ level: "silent" });
const ID = "dev-1";
const until = <T>(probe: () => T) => vi.waitFor(probe, { timeout: 4_000, interval: 2 });
const pod = desiredPod({ uid: "p1" });
const doc = desiredDocument({ deviceId: ID, epoch: "e1", generation: 1, pods: [pod] });

/** An applier whose storage fails while `failing` holds; `stored` is what storage holds. */
function applierWithStorage() {
  const runtime = new SimRuntime();
  const acks: (DesiredAck & { stored: number })[] = [];
  const storage = { failing: true, stored: undefined as DurableDesired | undefined };
  const applier: DesiredApplier = new DesiredApplier({
    runtime,
    ack: (ack) => acks.push({ ...ack, stored: storage.stored?.appliedGeneration ?? 0 }),
    persist: () => {
      if (storage.failing) return Promise.reject(new Error("ENOSPC: no space left on device"));
      storage.stored = applier.durable;
      return Promise.resolve();
    },
    report: () => undefined,
    canApply: () => true,
    logger,
  });
  return { applier, runtime, acks, storage };
}

describe("DesiredApplier durability", () => {
  it("acks `rejected` (PersistFailed) when the state cannot be stored, leaving the runtime alone", async () => {
    const { applier, runtime, acks } = applierWithStorage();
    applier.offer(doc);
    await until(() => expect(acks.map((a) => a.stage)).toEqual(["received", "rejected"]));
    expect(acks[1]).toMatchObject({ generation: 1, reason: "PersistFailed", message: /ENOSPC/ });
    expect(runtime.report()).toEqual([]);
    expect(applier).toMatchObject({ appliedGeneration: 0, observedGeneration: 0, applies: 0 });
  });

  it("tries the same document again on its next delivery, and acks `applied` only once it is stored", async () => {
    const { applier, runtime, acks, storage } = applierWithStorage();
    applier.offer(doc);
    await until(() => expect(acks.at(-1)?.stage).toBe("rejected"));
    storage.failing = false;
    applier.offer(doc); // the retained copy, redelivered on reconnect
    await until(() => expect(acks.at(-1)?.stage).toBe("applied"));
    expect(acks.map((a) => a.stage)).toEqual(["received", "rejected", "received", "applied"]);
    // Stored before the ack went out, with the document's pods.
    expect(acks.at(-1)?.stored).toBe(1);
    expect(storage.stored).toEqual({ epoch: "e1", appliedGeneration: 1, pods: [pod] });
    expect(runtime.report().map((p) => p.uid)).toEqual(["p1"]);
  });
});

describe("DeviceSession with failing storage", () => {
  const sessions: DeviceSession[] = [];
  const brokers: DeviceBroker[] = [];
  afterEach(async () => {
    await Promise.all(sessions.splice(0).map((s) => s.stop()));
    await Promise.all(brokers.splice(0).map((b) => b.close()));
  });
  const birth: BirthInfo = {
    deviceClass: "gateway",
    os: "linux",
    arch: "arm64",
    capacity: { pods: "10" },
    capabilities: {
      maxMessageBytes: 65536,
      encodings: ["json"],
      runtime: "process",
      logs: true,
      exec: false,
    },
  };

  it("never acks `applied` for a document whose state failed to save", async () => {
    const broker = await startDeviceBroker();
    brokers.push(broker);
    const storage = memoryStore();
    let saves = 0;
    let failing = false;
    const store: SessionStore = {
      load: () => storage.load(),
      save: (state) => {
        saves++;
        return failing ? Promise.reject(new Error("EIO: i/o error")) : storage.save(state);
      },
    };
    const runtime = new SimRuntime();
    const session = new DeviceSession({
      deviceId: ID,
      link: broker.link(ID),
      runtime,
      device: birth,
      logger,
      store,
    });
    sessions.push(session);
    await session.start();
    await session.whenOnline();
    await until(() => expect(saves).toBeGreaterThan(0));
    failing = true;
    await broker.publish(topics.desired(ID), encodeMessage(doc), { retain: true });
    const acks = () => broker.messagesOn<AckMessage>(topics.ack(ID));
    await until(() =>
      expect(acks().map((a) => a.kind === "ack" && a.stage)).toEqual(["received", "rejected"]),
    );
    expect(acks()[1]).toMatchObject({ generation: 1, reason: "PersistFailed" });
    expect(runtime.report()).toEqual([]);
    expect(storage.state?.appliedGeneration ?? 0).toBe(0);

    // Storage is back; the retained document comes again after a reconnect and is applied.
    failing = false;
    await session.goOffline();
    await session.goOnline();
    await until(() => expect(acks().at(-1)).toMatchObject({ kind: "ack", generation: 1, stage: "applied" }));
    expect(storage.state).toMatchObject({ epoch: "e1", appliedGeneration: 1, pods: [pod] });
    expect(runtime.report().map((p) => p.uid)).toEqual(["p1"]);
  });
});
