/**
 * Stage Events and device sync from what the provider holds (stages.ts): each stage told once per
 * version of a pod however often the device is looked at; a pod read back at start tells only
 * what happens after; sync follows the published generation against the applied one.
 */
import { describe, expect, it } from "vitest";
import type { DesiredPod, ReportedDocument } from "../../src/protocol/types.ts";
import type { ProviderEvent } from "../../src/provider/types.ts";
import type { DeviceDesired, PodEntry } from "./desired.ts";
import type { Presence } from "./devices.ts";
import { Observations, type DesiredAck } from "./observations.ts";
import { Stages } from "./stages.ts";

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

function rig() {
  const events: ProviderEvent[] = [];
  const syncs: string[] = [];
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
  let now = new Date("2026-11-01T10:00:00Z");
  const stages = new Stages({
    desired: { device: (id) => (id === "gw-1" ? device : undefined) },
    registry: { effectivePresence: () => presence },
    observations,
    recordEvent: (e) => events.push(e),
    syncChanged: (id) => syncs.push(id),
    now: () => now,
  });
  let seq = 0;
  const publish = (generation: number) => {
    device.published = { epoch: "e1", generation, contentHash: `c${generation}` };
    entry.since ??= { epoch: "e1", generation };
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
  const report = (applied: number, running: string[]) =>
    observations.report({
      protocol: 1,
      kind: "reported",
      deviceId: "gw-1",
      bootId: "b",
      seq: ++seq,
      observedAt: now.toISOString(),
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
            status: { state: "running", startedAt: "2026-11-01T10:00:05Z" },
            ready: true,
            restartCount: 0,
          })),
        },
      ],
    } satisfies ReportedDocument);
  return {
    stages,
    events,
    syncs,
    entry,
    publish,
    ack,
    report,
    online: () => (presence = "online"),
    tick: (ms: number) => (now = new Date(now.getTime() + ms)),
    reasons: () => events.map((e) => (e.series ? `${e.reason}/${e.series}` : e.reason)),
  };
}

describe("stage Events", () => {
  it("tells Queued, Delivered, Applied and Started per container, each once however often looked at", () => {
    const r = rig();
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
    expect(r.events[0]).toMatchObject({
      involved: { kind: "Pod", pod: ref, deviceId: "gw-1" },
      type: "Normal",
      message: "device gw-1 is offline; the change waits in its desired document",
    });
    expect(r.events[3]?.message).toBe("Started container a");
  });

  it("tells a rejection as a Warning with the device's reason, and a new version anew", () => {
    const r = rig();
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
    const r = rig();
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
