/**
 * A rejection is final for its (epoch, generation) across agent restarts too (docs/protocol.md § 4):
 * the agent keeps it in its state file, reports it again after a restart and only repeats the
 * `rejected` ack for the redelivered retained copy. A restart is a new session and runtime over the
 * same state file.
 */
import { mkdtempSync, readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import pino from "pino";
import { afterEach, describe, expect, it, vi } from "vitest";
import { encodeMessage } from "../protocol/codec.ts";
import { topics } from "../protocol/topics.ts";
import type { AckMessage, DesiredPod, ReportedDocument } from "../protocol/types.ts";
import { desiredDocument, desiredPod } from "./fixtures.ts";
import { startDeviceBroker, type DeviceBroker } from "../../test/support/device-broker.ts";
import { RuntimeRefusal } from "./runtime.ts";
import { DeviceSession, type BirthInfo } from "./session.ts";
import { SimRuntime } from "./sim-runtime.ts";
import { fileStore, type SessionStore } from "./store.ts";

const logger = pino({ level: "silent" });
const ID = "dev-r";
const birth: BirthInfo = {
  deviceClass: "gateway",
  os: "linux",
  arch: "arm64",
  capacity: { pods: "10" },
  capabilities: { maxMessageBytes: 65536, encodings: ["json"], runtime: "process", logs: true, exec: false },
};
const until = <T>(probe: () => T) => vi.waitFor(probe, { timeout: 4_000, interval: 2 });
const one = [desiredPod({ uid: "a" })];
const two = [desiredPod({ uid: "a" }), desiredPod({ uid: "b" })];

const sessions: DeviceSession[] = [];
const brokers: DeviceBroker[] = [];
afterEach(async () => {
  await Promise.all(sessions.splice(0).map((s) => s.stop()));
  await Promise.all(brokers.splice(0).map((b) => b.close()));
});

/** An agent run: a fresh session and runtime that refuses two pods, over `store`. */
async function run(broker: DeviceBroker, store: SessionStore) {
  const runtime = new SimRuntime();
  const apply = runtime.apply.bind(runtime);
  const applied: number[] = [];
  runtime.apply = (pods: readonly DesiredPod[], tombstones) => {
    applied.push(pods.length);
    if (pods.length === 2) return Promise.reject(new RuntimeRefusal("TooLarge", "does not fit"));
    return apply(pods, tombstones);
  };
  const session = new DeviceSession({
    deviceId: ID,
    link: broker.link(ID),
    runtime,
    device: birth,
    logger,
    store,
    reportCoalesceMs: 1,
  });
  sessions.push(session);
  await session.start();
  await session.whenOnline();
  return { session, applied };
}

async function setup() {
  const file = path.join(mkdtempSync(path.join(os.tmpdir(), "devicelet-rejection-")), "state.json");
  const broker = await startDeviceBroker();
  brokers.push(broker);
  const reported = () => broker.retainedJson(topics.reported(ID)) as ReportedDocument | undefined;
  const acks = () =>
    broker.messagesOn<AckMessage>(topics.ack(ID)).flatMap((a) => (a.kind === "ack" ? [a] : []));
  const publish = (generation: number, pods: DesiredPod[]) =>
    broker.publish(topics.desired(ID), encodeMessage(desiredDocument({ deviceId: ID, generation, pods })), {
      retain: true,
    });
  const stateFile = () => JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>;
  return { file, broker, reported, acks, publish, stateFile, store: () => fileStore(file, { logger }) };
}

describe("DeviceSession, a rejection across an agent restart (§ 4)", () => {
  it("keeps the rejection in the state file, reports it after a restart and does not evaluate the document again", async () => {
    const t = await setup();
    const first = await run(t.broker, t.store());
    await t.publish(1, one);
    await until(() => expect(t.reported()?.appliedGeneration).toBe(1));
    await t.publish(2, two);
    await until(() => expect(t.acks().at(-1)).toMatchObject({ generation: 2, stage: "rejected" }));
    await until(() => expect(t.stateFile()).toHaveProperty("rejection.generation", 2));
    // The reason and message, not the document's content.
    expect(t.stateFile()).toMatchObject({
      appliedGeneration: 1,
      rejection: { epoch: "epoch-1", generation: 2, reason: "TooLarge", message: "does not fit" },
    });
    expect(Object.keys(t.stateFile().rejection as object).sort()).toEqual([
      "epoch",
      "generation",
      "message",
      "reason",
    ]);
    await first.session.stop();
    const rejectedBefore = t.acks().filter((a) => a.stage === "rejected").length;

    // Restart: the retained generation 2 comes again; only its `rejected` ack is repeated.
    const second = await run(t.broker, t.store());
    await until(() =>
      expect(t.acks().filter((a) => a.stage === "rejected")).toHaveLength(rejectedBefore + 1),
    );
    await until(() =>
      expect(t.reported()).toMatchObject({
        observedGeneration: 2,
        appliedGeneration: 1,
        rejection: { generation: 2, reason: "TooLarge", message: "does not fit" },
        pods: [{ uid: "a" }],
      }),
    );
    expect(t.acks().at(-1)).toMatchObject({ generation: 2, stage: "rejected", reason: "TooLarge" });
    // The restore re-ran generation 1's pod; generation 2 was not evaluated again.
    expect(second.applied).toEqual([1]);

    // A newer document clears it, in the file too, so the next restart has none.
    await t.publish(3, one);
    await until(() => expect(t.reported()?.appliedGeneration).toBe(3));
    expect(t.reported()?.rejection).toBeUndefined();
    await until(() => expect(t.stateFile()).toMatchObject({ appliedGeneration: 3 }));
    expect(t.stateFile()).not.toHaveProperty("rejection");
    await second.session.stop();
    await run(t.broker, t.store());
    await until(() => expect(t.reported()).toMatchObject({ observedGeneration: 3, appliedGeneration: 3 }));
    expect(t.reported()?.rejection).toBeUndefined();
  });

  it("never stores a PersistFailed rejection: after a restart the document is evaluated again", async () => {
    const t = await setup();
    const store = t.store();
    let failing = false;
    const flaky: SessionStore = {
      load: () => store.load(),
      save: (state) => (failing ? Promise.reject(new Error("ENOSPC: no space left")) : store.save(state)),
    };
    const first = await run(t.broker, flaky);
    await t.publish(1, one);
    await until(() => expect(t.reported()?.appliedGeneration).toBe(1));
    failing = true;
    await t.publish(2, [desiredPod({ uid: "c" })]);
    await until(() => expect(t.acks().at(-1)).toMatchObject({ generation: 2, reason: "PersistFailed" }));
    await first.session.stop();
    expect(t.stateFile()).toMatchObject({ appliedGeneration: 1 });
    expect(t.stateFile()).not.toHaveProperty("rejection");

    failing = false;
    await run(t.broker, flaky);
    await until(() => expect(t.acks().at(-1)).toMatchObject({ generation: 2, stage: "applied" }));
    expect(t.reported()?.rejection).toBeUndefined();
  });
});
