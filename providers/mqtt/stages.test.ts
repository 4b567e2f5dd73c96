/**
 * Stage Events and device sync from what the provider holds (stages.ts): each stage told once per
 * version of a pod however often the device is looked at; a pod read back at start tells only
 * what happens after; under `notable` a pod Running in time tells no routine stage, a slow one
 * tells them from its deadline on (a timer looks again), a restart always; sync follows the
 * published generation against the applied one. Timers and the clock are vitest's fake ones.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { DesiredPod, ReportedDocument } from "../../src/protocol/types.ts";
import type { ProviderEvent } from "../../src/provider/types.ts";
import type { DeviceDesired, PodEntry } from "./desired.ts";
import type { Presence } from "./devices.ts";
import { Observations, type DesiredAck } from "./observations.ts";
import type { PodEventsConfig } from "./schema.ts";
import { Stages } from "./stages.ts";

beforeEach(() => {
  vi.useFakeTimers({ now: new Date("2026-11-01T10:00:00Z") });
});
afterEach(() => {
  vi.useRealTimers();
});

const ref = { namespace: "ns", name: "p", uid: "u1" };
const desiredPod = (hash: string): DesiredPod => ({
  uid: ref.uid,
  namespace: ref.namespace,
  name: ref.name,
  hash,
  restartPolicy: "Always",
  terminationGracePeriodSeconds: 30,
  apps: [
    { name: "a", image: "example/a:1" },
    { name: "b", image: "example/b:1" },
  ] as unknown as DesiredPod["apps"],
});

function rig(podEvents: PodEventsConfig = { stages: "notable", slowStageSeconds: 5 }) {
  const events: ProviderEvent[] = [];
  const syncs: string[] = [];
  const looks: string[] = [];
  let presence: Presence = "offline";
  const entry: PodEntry = {
    ref,
    desired: desiredPod("h1"),
    since: undefined,
    sent: false,
    lastSent: undefined,
    deferred: undefined,
    blocked: undefined,
  };
  const device = {
    deviceId: "gw-1",
    pods: new Map([[ref.uid, entry]]),
    published: undefined,
  } as unknown as DeviceDesired;
  const observations = new Observations();
  const stages: Stages = new Stages({
    desired: { device: (id) => (id === "gw-1" ? device : undefined) },
    registry: { get: () => undefined, effectivePresence: () => presence },
    observations,
    recordEvent: (e) => events.push(e),
    syncChanged: (id) => syncs.push(id),
    podEvents,
    // As the wiring's StatusCoalescer does, minus its few milliseconds of coalescing.
    lookAgain: (id) => {
      looks.push(id);
      stages.observe(id);
    },
    now: () => new Date(),
  });
  let seq = 0;
  const publish = (generation: number) => {
    device.published = { epoch: "e1", generation, contentHash: `c${generation}` };
    for (const e of device.pods.values()) e.since ??= { epoch: "e1", generation };
  };
  const ack = (generation: number, stage: DesiredAck["stage"]) =>
    observations.ack(
      {
        protocol: 1,
        kind: "ack",
        deviceId: "gw-1",
        bootId: "b",
        seq: ++seq,
        epoch: "e1",
        generation,
        stage,
        ...(stage === "rejected" ? { reason: "NoRoom", message: "flash full" } : {}),
      },
      "e1",
    );
  const report = (applied: number, running: string[], startedAt = "2026-11-01T10:00:05Z") =>
    observations.report({
      protocol: 1,
      kind: "reported",
      deviceId: "gw-1",
      bootId: "b",
      seq: ++seq,
      observedAt: new Date().toISOString(),
      epoch: "e1",
      observedGeneration: applied,
      appliedGeneration: applied,
      pods: [
        {
          uid: ref.uid,
          hash: entry.desired.hash,
          phase: "Running",
          apps: running.map((name) => ({
            name,
            image: `example/${name}:1`,
            status: { state: "running", startedAt },
            ready: true,
            restartCount: 0,
          })),
        },
      ],
    } satisfies ReportedDocument);
  /** A second pod on the same device, not yet published. */
  const secondPod = () => {
    const second = { ...entry, ref: { ...ref, name: "q", uid: "u2" }, since: undefined };
    device.pods.set("u2", second);
    return second;
  };
  return {
    stages,
    events,
    syncs,
    looks,
    entry,
    publish,
    ack,
    report,
    secondPod,
    online: () => (presence = "online"),
    tick: (ms: number) => vi.advanceTimersByTime(ms),
    reasons: () => events.map((e) => (e.series ? `${e.reason}/${e.series}` : e.reason)),
  };
}

describe("stage Events", () => {
  it("tells Queued, Delivered, Applied and Started per container, each once however often looked at", () => {
    const r = rig({ stages: "all", slowStageSeconds: 5 });
    r.stages.expect("gw-1", ref.uid, "h1");
    r.stages.observe("gw-1");
    r.publish(1);
    r.stages.observe("gw-1");
    r.online();
    r.ack(1, "received");
    r.stages.observe("gw-1");
    r.stages.observe("gw-1");
    r.ack(1, "applied");
    r.report(1, ["a"]);
    r.stages.observe("gw-1");
    r.report(1, ["a", "b"]);
    r.stages.observe("gw-1");
    r.stages.observe("gw-1");
    expect(r.reasons()).toEqual(["Queued", "Delivered", "Applied", "Started/a", "Started/b"]);
    // Nothing to time under `all`.
    expect(vi.getTimerCount()).toBe(0);
    expect(r.events[0]).toMatchObject({
      involved: { kind: "Pod", pod: ref, deviceId: "gw-1" },
      type: "Normal",
      message: "device gw-1 is offline; the change waits in its desired document",
    });
    expect(r.events[3]?.message).toBe("Started container a");
  });

  it("tells a rejection as a Warning with the device's reason, and a new version anew", () => {
    const r = rig({ stages: "all", slowStageSeconds: 5 });
    r.online();
    r.stages.expect("gw-1", ref.uid, "h1");
    r.publish(1);
    r.ack(1, "received");
    r.ack(1, "rejected");
    r.stages.observe("gw-1");
    r.stages.observe("gw-1");
    expect(r.reasons()).toEqual(["Rejected"]);
    expect(r.events[0]).toMatchObject({
      type: "Warning",
      message: expect.stringContaining("NoRoom: flash full") as string,
    });
    // The pod changed: its stages are told again.
    r.entry.desired = desiredPod("h2");
    r.entry.since = undefined;
    r.stages.expect("gw-1", ref.uid, "h2");
    r.publish(2);
    r.ack(2, "received");
    r.stages.observe("gw-1");
    expect(r.reasons()).toEqual(["Rejected", "Delivered"]);
  });

  it("tells nothing a pod read back at start had already reached, only what comes after", () => {
    const r = rig({ stages: "all", slowStageSeconds: 5 });
    r.online();
    r.publish(1);
    r.ack(1, "applied");
    r.stages.observe("gw-1");
    expect(r.events).toEqual([]);
    r.report(1, ["a"]);
    r.stages.observe("gw-1");
    expect(r.reasons()).toEqual(["Started/a"]);
  });

  it("tells TombstoneConfirmed on the pod, naming its device", () => {
    const r = rig();
    r.stages.tombstoneConfirmed("gw-1", ref, 3);
    expect(r.events).toEqual([
      {
        involved: { kind: "Pod", pod: ref, deviceId: "gw-1" },
        type: "Normal",
        reason: "TombstoneConfirmed",
        message: "device gw-1 confirmed the pod's apps are stopped and gone (generation 3)",
      },
    ]);
  });
});

describe("stage Events, notable (the default)", () => {
  it("records nothing on the healthy path, and leaves no timer once the pod is Running", () => {
    const r = rig();
    r.online();
    r.stages.expect("gw-1", ref.uid, "h1");
    r.stages.observe("gw-1");
    r.publish(1);
    r.stages.observe("gw-1");
    expect(vi.getTimerCount()).toBe(1);
    r.tick(300);
    r.ack(1, "received");
    r.stages.observe("gw-1");
    r.ack(1, "applied");
    r.report(1, ["a", "b"]);
    r.stages.observe("gw-1");
    expect(vi.getTimerCount()).toBe(0);
    r.tick(60_000);
    r.stages.observe("gw-1");
    expect(r.events).toEqual([]);
    expect(r.looks).toEqual([]);
  });

  it("tells a slow pod's stages from its deadline on: those reached at once, the later as they come", () => {
    const r = rig();
    r.online();
    r.stages.expect("gw-1", ref.uid, "h1");
    r.stages.observe("gw-1");
    // Its time counts from the publish (waiting for its turn to go out is not the device's doing).
    r.tick(3_000);
    r.publish(1);
    r.stages.observe("gw-1");
    r.ack(1, "received");
    r.stages.observe("gw-1");
    r.tick(4_999);
    expect(r.events).toEqual([]);
    // No device message comes: the timer has the device looked at again.
    r.tick(1);
    expect(r.looks).toEqual(["gw-1"]);
    expect(r.reasons()).toEqual(["Delivered"]);
    expect(r.events[0]).toMatchObject({
      involved: { kind: "Pod", pod: ref, deviceId: "gw-1" },
      type: "Normal",
      message: "device gw-1 received its desired document (generation 1)",
    });
    expect(vi.getTimerCount()).toBe(0);
    r.stages.observe("gw-1");
    r.ack(1, "applied");
    r.stages.observe("gw-1");
    expect(r.reasons()).toEqual(["Delivered", "Applied"]);
    r.report(1, ["a"]);
    r.stages.observe("gw-1");
    r.report(1, ["a", "b"]);
    r.stages.observe("gw-1");
    r.stages.observe("gw-1");
    expect(r.reasons()).toEqual(["Delivered", "Applied", "Started/a", "Started/b"]);
  });

  it("tells Queued at once and a restart always, but not the routine of a pod Running in time", () => {
    const r = rig();
    r.stages.expect("gw-1", ref.uid, "h1");
    r.publish(1);
    r.stages.observe("gw-1");
    expect(r.reasons()).toEqual(["Queued"]);
    r.online();
    r.ack(1, "applied");
    r.report(1, ["a", "b"]);
    r.stages.observe("gw-1");
    expect(r.reasons()).toEqual(["Queued"]);
    // Both containers start again: a second start in the pod's life is news.
    r.tick(20_000);
    r.report(1, ["a", "b"], "2026-11-01T10:00:20Z");
    r.stages.observe("gw-1");
    r.stages.observe("gw-1");
    expect(r.reasons()).toEqual(["Queued", "Started/a", "Started/b"]);
    // A new version that runs in time: its containers' new starts are restarts, the rest routine.
    r.entry.desired = desiredPod("h2");
    r.entry.since = undefined;
    r.stages.expect("gw-1", ref.uid, "h2");
    r.publish(2);
    r.ack(2, "applied");
    r.report(2, ["a"], "2026-11-01T10:00:21Z");
    r.stages.observe("gw-1");
    r.tick(60_000);
    expect(r.reasons()).toEqual(["Queued", "Started/a", "Started/b", "Started/a"]);
  });

  it("counts a queued change's time from its device coming online, not from its publish", () => {
    const r = rig();
    r.stages.expect("gw-1", ref.uid, "h1");
    r.publish(1);
    r.stages.observe("gw-1");
    // Away for a minute: not slow, only queued.
    r.tick(60_000);
    r.stages.observe("gw-1");
    expect(r.reasons()).toEqual(["Queued"]);
    r.online();
    r.stages.observe("gw-1");
    r.tick(1_000);
    r.ack(1, "applied");
    r.report(1, ["a", "b"]);
    r.stages.observe("gw-1");
    r.tick(60_000);
    expect(r.reasons()).toEqual(["Queued"]);

    // Back, but not running in time: slow from the moment it came online.
    const s = rig();
    s.stages.expect("gw-1", ref.uid, "h1");
    s.publish(1);
    s.stages.observe("gw-1");
    s.tick(60_000);
    s.online();
    s.ack(1, "received");
    s.stages.observe("gw-1");
    s.tick(4_000);
    expect(s.reasons()).toEqual(["Queued"]);
    s.tick(1_500);
    expect(s.reasons()).toEqual(["Queued", "Delivered"]);
  });

  it("tells a read-back pod's later routine stages only when it is slow", () => {
    const fast = rig();
    fast.online();
    fast.publish(1);
    fast.ack(1, "received");
    fast.stages.observe("gw-1");
    fast.ack(1, "applied");
    fast.report(1, ["a"]);
    fast.stages.observe("gw-1");
    fast.tick(60_000);
    expect(fast.events).toEqual([]);

    const slow = rig();
    slow.online();
    slow.publish(1);
    slow.ack(1, "received");
    slow.stages.observe("gw-1");
    slow.tick(5_000);
    // Delivered was reached when it was read back: taken as told.
    expect(slow.events).toEqual([]);
    slow.ack(1, "applied");
    slow.report(1, ["a"]);
    slow.stages.observe("gw-1");
    expect(slow.reasons()).toEqual(["Applied", "Started/a"]);
  });

  it("keeps one timer per device, at the earliest deadline of its pods still being timed", () => {
    const r = rig();
    r.online();
    r.stages.expect("gw-1", ref.uid, "h1");
    r.publish(1);
    r.stages.observe("gw-1");
    r.tick(2_000);
    const second = r.secondPod();
    r.stages.expect("gw-1", second.ref.uid, "h1");
    r.publish(2);
    r.stages.observe("gw-1");
    expect(vi.getTimerCount()).toBe(1);
    // The first pod runs in time: the timer moves to the second pod's deadline.
    r.ack(2, "applied");
    r.report(2, ["a", "b"]);
    r.stages.observe("gw-1");
    expect(vi.getTimerCount()).toBe(1);
    r.tick(3_000);
    expect(r.looks).toEqual([]);
    r.tick(2_000);
    expect(r.looks).toEqual(["gw-1"]);
    expect(r.events.map((e) => [e.reason, e.involved.kind === "Pod" && e.involved.pod.uid])).toEqual([
      ["Delivered", "u2"],
      ["Applied", "u2"],
    ]);
    expect(vi.getTimerCount()).toBe(0);
  });

  it("clears its timers on stop and sets none after", () => {
    const r = rig();
    r.online();
    r.stages.expect("gw-1", ref.uid, "h1");
    r.publish(1);
    r.stages.observe("gw-1");
    expect(vi.getTimerCount()).toBe(1);
    r.stages.stop();
    expect(vi.getTimerCount()).toBe(0);
    r.tick(1_000);
    r.stages.observe("gw-1");
    expect(vi.getTimerCount()).toBe(0);
    r.tick(60_000);
    expect(r.looks).toEqual([]);
  });
});

describe("device sync", () => {
  it("is unknown until something was published or reported, then follows applied against published", () => {
    const r = rig();
    r.stages.observe("gw-1");
    expect(r.stages.sync("gw-1")).toBeUndefined();
    r.publish(1);
    r.stages.observe("gw-1");
    const behindSince = r.stages.sync("gw-1")?.behindSince;
    expect(r.stages.sync("gw-1")).toEqual({ desiredGeneration: 1, appliedGeneration: 0, behindSince });
    r.tick(5_000);
    r.publish(2);
    r.stages.observe("gw-1");
    // Still behind since the first time it fell behind.
    expect(r.stages.sync("gw-1")).toEqual({ desiredGeneration: 2, appliedGeneration: 0, behindSince });
    r.online();
    r.ack(2, "received");
    r.ack(2, "rejected");
    r.stages.observe("gw-1");
    expect(r.stages.sync("gw-1")?.rejected).toEqual({
      generation: 2,
      reason: "NoRoom",
      message: "flash full",
    });
    r.ack(2, "applied");
    r.stages.observe("gw-1");
    r.stages.observe("gw-1");
    expect(r.stages.sync("gw-1")).toEqual({ desiredGeneration: 2, appliedGeneration: 2 });
    // Told once per change, not per look.
    expect(r.syncs).toHaveLength(4);
  });
});
