/**
 * The reference agent (`devicelet agent`, run as its own process) against a real Mosquitto over
 * TLS (test/support/agent.ts). The test plays devicelet: it publishes retained desired documents
 * and reads the agent's presence, reports and acks.
 */
import { existsSync, mkdtempSync, readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { DesiredPod, ReportedPod } from "../../src/protocol/types.ts";
import { desiredDocument, desiredPod, tombstone } from "../../src/device/fixtures.ts";
import { alive, LONG_RUNNING_APP, startAgentRig, type AgentRig } from "../support/agent.ts";
import { eventually } from "../support/eventually.ts";

const ID = `agent-${process.pid}`;
const node = process.execPath;
const dir = mkdtempSync(path.join(os.tmpdir(), "devicelet-agent-"));
const workDir = path.join(dir, "pods");
const bootId = readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();

let rig: AgentRig;
let seen: AgentRig["seen"];

beforeAll(async () => {
  rig = await startAgentRig({ id: ID, dir });
  seen = rig.seen;
});

afterAll(() => rig.close());

const startAgent = () => rig.startAgent();
const stopAgent = (signal: "SIGTERM" | "SIGKILL") => rig.stopAgent(signal);
const publishDesired = (
  generation: number,
  pods: DesiredPod[],
  tombstones = [] as ReturnType<typeof tombstone>[],
) => rig.publishDesired(desiredDocument({ deviceId: ID, epoch: "e1", generation, pods, tombstones }));
const acksSince = (index: number) => rig.acksSince(index);
const reportedPod = (uid: string): ReportedPod | undefined => seen.reported?.pods.find((p) => p.uid === uid);
const restarts = (uid: string) => reportedPod(uid)?.apps[0]?.restartCount ?? -1;
const script = (uid: string, restartPolicy: DesiredPod["restartPolicy"], code: string) =>
  desiredPod({
    uid,
    restartPolicy,
    terminationGracePeriodSeconds: 5,
    apps: [{ name: "main", command: [node, "-e", code] }],
  });
const pidOf = (uid: string) => Number(readFileSync(path.join(workDir, uid, "main", "pid"), "utf8"));
const longRunning = LONG_RUNNING_APP;

const pods = [
  script("always-0", "Always", "setTimeout(() => process.exit(0), 50)"),
  script("always-1", "Always", "setTimeout(() => process.exit(1), 50)"),
  script("onfailure-0", "OnFailure", "process.exit(0)"),
  script("onfailure-1", "OnFailure", "setTimeout(() => process.exit(1), 50)"),
  script("never-1", "Never", "process.exit(1)"),
  script("keeper", "Always", longRunning),
  script("doomed", "Always", longRunning),
];

describe("devicelet agent", () => {
  it("comes online with a retained birth carrying the kernel's boot id", () => {
    return startAgent().then(() => {
      expect(seen.state.at(-1)).toMatchObject({
        state: "online",
        bootId,
        device: { os: "linux", capabilities: { runtime: "process" } },
      });
    });
  });

  it("runs the apps and restarts them per restart policy, with growing restart counts and exit codes", async () => {
    await publishDesired(1, pods);
    await eventually(() =>
      expect(seen.acks).toContainEqual(expect.objectContaining({ generation: 1, stage: "applied" })),
    );
    await eventually(() => {
      for (const uid of ["always-0", "always-1", "onfailure-1"])
        expect(restarts(uid)).toBeGreaterThanOrEqual(2);
      expect(reportedPod("keeper")?.phase).toBe("Running");
    });
    const counts = Object.fromEntries(
      ["always-0", "always-1", "onfailure-1"].map((uid) => [uid, restarts(uid)]),
    );
    await eventually(() => {
      for (const [uid, n] of Object.entries(counts)) expect(restarts(uid)).toBeGreaterThan(n);
    });
    expect(reportedPod("always-0")?.apps[0]?.lastStatus).toMatchObject({
      state: "terminated",
      exitCode: 0,
      reason: "Completed",
    });
    expect(reportedPod("always-1")?.apps[0]?.lastStatus).toMatchObject({
      state: "terminated",
      exitCode: 1,
      reason: "Error",
    });
    expect(reportedPod("onfailure-0")).toMatchObject({
      phase: "Succeeded",
      apps: [{ restartCount: 0, status: { state: "terminated", exitCode: 0, reason: "Completed" } }],
    });
    expect(reportedPod("never-1")).toMatchObject({
      phase: "Failed",
      apps: [{ restartCount: 0, status: { state: "terminated", exitCode: 1, reason: "Error" } }],
    });
  });

  it("stops a tombstoned pod's process and drops the pod from its report", async () => {
    const pid = pidOf("doomed");
    expect(alive(pid)).toBe(true);
    await publishDesired(
      2,
      pods.filter((p) => p.uid !== "doomed"),
      [tombstone(pods[6] as DesiredPod, 5)],
    );
    await eventually(() => expect(seen.reported).toMatchObject({ appliedGeneration: 2 }));
    // `applied` may come before the stop is over; the pod leaves the report once it is gone.
    await eventually(() => {
      expect(reportedPod("doomed")).toBeUndefined();
      expect(existsSync(path.join(workDir, "doomed"))).toBe(false);
    });
    expect(alive(pid)).toBe(false);
  });

  it("after a clean restart runs the apps again without re-applying the same generation", async () => {
    const oldPid = pidOf("keeper");
    const lastSeq = Math.max(
      ...seen.state.map((s) => s.seq),
      seen.reported?.seq ?? 0,
      ...seen.acks.map((a) => a.seq),
    );
    expect(await stopAgent("SIGTERM")).toBe(0);
    await eventually(() => expect(seen.state.at(-1)).toMatchObject({ state: "offline", bootId }));
    expect(alive(oldPid)).toBe(false);
    const acksBefore = seen.acks.length;
    await startAgent();
    expect(seen.state.at(-1)).toMatchObject({ state: "online", bootId });
    expect(seen.state.at(-1)?.seq).toBeGreaterThan(lastSeq);
    await eventually(() => {
      expect(reportedPod("keeper")?.phase).toBe("Running");
      expect(pidOf("keeper")).not.toBe(oldPid);
    });
    expect(seen.reported).toMatchObject({ bootId, epoch: "e1", appliedGeneration: 2 });
    // Not applied again (no `received`), but the final ack is repeated for the retained copy (§ 4).
    await eventually(() => expect(acksSince(acksBefore)).toEqual([[2, "applied"]]));
  });

  it("after being killed, its will says lost and a new agent replaces the orphaned apps", async () => {
    const orphan = pidOf("keeper");
    await stopAgent("SIGKILL");
    await eventually(() => expect(seen.state.at(-1)).toMatchObject({ state: "lost", bootId }));
    expect(alive(orphan)).toBe(true);
    const acksBefore = seen.acks.length;
    await startAgent();
    await eventually(() => {
      expect(pidOf("keeper")).not.toBe(orphan);
      expect(reportedPod("keeper")?.phase).toBe("Running");
    });
    await eventually(() => expect(alive(orphan)).toBe(false));
    await eventually(() => expect(acksSince(acksBefore)).toEqual([[2, "applied"]]));
    const newPid = pidOf("keeper");
    expect(await stopAgent("SIGTERM")).toBe(0);
    expect(alive(newPid)).toBe(false);
  });

  it("killed while a pod stops, it kills the orphaned apps and removes folders no longer wanted at its next start", async () => {
    const kept = pods.filter((p) => p.uid !== "doomed");
    const stubborn = desiredPod({
      uid: "stubborn",
      terminationGracePeriodSeconds: 120,
      apps: [{ name: "main", command: [node, "-e", longRunning.replace("process.exit(0)", "undefined")] }],
    });
    const fresh = script("fresh", "Always", longRunning);
    await startAgent();
    await publishDesired(3, [...kept, stubborn]);
    await eventually(() => expect(reportedPod("stubborn")?.phase).toBe("Running"));
    // The app writes its pid file itself, a moment after it is reported running.
    const stubbornPid = await eventually(() => {
      const pid = pidOf("stubborn");
      expect(pid).toBeGreaterThan(0);
      return pid;
    });
    // Generation 4 stops `stubborn` (it ignores SIGTERM: a two-minute stop) and starts `fresh`;
    // `applied` does not wait for the stop (docs/protocol.md § 4): `stubborn` is still Terminating.
    const acksBefore = seen.acks.length;
    await publishDesired(4, [...kept, fresh], [tombstone(stubborn, 120)]);
    await eventually(() => {
      expect(acksSince(acksBefore)).toEqual([
        [4, "received"],
        [4, "applied"],
      ]);
      expect(alive(pidOf("fresh"))).toBe(true);
      expect(reportedPod("stubborn")).toMatchObject({ reason: "Terminating" });
    });
    const freshPid = pidOf("fresh");
    await stopAgent("SIGKILL");
    expect(alive(stubbornPid)).toBe(true);
    expect(alive(freshPid)).toBe(true);
    // While the agent is down, devicelet deletes `fresh` too.
    await publishDesired(5, kept, [tombstone(stubborn, 1), tombstone(fresh, 1)]);

    await startAgent();
    await eventually(() => expect(seen.reported).toMatchObject({ appliedGeneration: 5 }));
    // The orphans are killed first, their folders removed after: wait for both.
    await eventually(() => {
      expect(alive(stubbornPid)).toBe(false);
      expect(alive(freshPid)).toBe(false);
      expect(existsSync(path.join(workDir, "stubborn"))).toBe(false);
      expect(existsSync(path.join(workDir, "fresh"))).toBe(false);
    });
    expect(reportedPod("keeper")?.phase).toBe("Running");
    expect(seen.reported?.pods.map((p) => p.uid).sort()).toEqual(kept.map((p) => p.uid).sort());
  });
});
