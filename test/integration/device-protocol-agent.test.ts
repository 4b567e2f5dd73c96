/**
 * docs/protocol.md § 4 on the reference agent (`devicelet agent`, its own process) against a real
 * Mosquitto: after a reboot (a real SIGKILL of the agent, every app process gone as in a power
 * cycle, and a new kernel boot id) the agent runs the pods of the document it applied again and
 * reports them Running, without applying the retained document a second time; an agent that lost
 * its state file instead applies the retained document again. A rejection survives an agent
 * restart: it is reported again and the retained rejected document only has its ack repeated. The
 * test plays devicelet.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { desiredDocument, desiredPod } from "../../src/device/fixtures.ts";
import { topics } from "../../src/protocol/topics.ts";
import { alive, LONG_RUNNING_APP, startAgentRig, type AgentRig } from "../support/agent.ts";
import { eventually } from "../support/eventually.ts";
import { killGroup } from "../support/kill.ts";

const ID = `dpa-${process.pid}`;
const node = process.execPath;
const dir = mkdtempSync(path.join(os.tmpdir(), "devicelet-dpa-"));
const workDir = path.join(dir, "pods");
const bootIdFile = path.join(dir, "boot_id");
const stateFile = path.join(dir, "agent-state.json");

let rig: AgentRig;
let seen: AgentRig["seen"];

const pod = desiredPod({
  uid: "keeper",
  terminationGracePeriodSeconds: 5,
  apps: [{ name: "main", command: [node, "-e", LONG_RUNNING_APP] }],
});

beforeAll(async () => {
  writeFileSync(bootIdFile, "boot-1\n");
  rig = await startAgentRig({ id: ID, dir, config: { bootIdFile } });
  seen = rig.seen;
});

afterAll(() => rig.close());

const startAgent = (bootId: string) => rig.startAgent({ bootId });
const stopAgent = async (signal: "SIGTERM" | "SIGKILL") => {
  await rig.stopAgent(signal);
};

const pidOf = () => Number(readFileSync(path.join(workDir, "keeper", "main", "pid"), "utf8"));
/** The app writes its pid file itself, a moment after it is reported running. */
const appPid = () =>
  eventually(() => {
    const pid = pidOf();
    expect(pid).toBeGreaterThan(0);
    expect(alive(pid)).toBe(true);
    return pid;
  });
const acksSince = (index: number) => rig.acksSince(index);

/** A power cycle: the agent dies (SIGKILL), so do its apps, and the kernel gets a new boot id. */
async function powerCycle(bootId: string): Promise<void> {
  const apps = await appPid();
  await stopAgent("SIGKILL");
  expect(killGroup(apps)).toBe(true);
  await eventually(() => expect(alive(apps)).toBe(false));
  writeFileSync(bootIdFile, `${bootId}\n`);
}

describe("the agent across a reboot (docs/protocol.md § 4)", () => {
  it("runs the applied pods again at a new boot, Running, without applying the retained document again", async () => {
    await startAgent("boot-1");
    await rig.publishDesired(desiredDocument({ deviceId: ID, epoch: "e1", generation: 3, pods: [pod] }));
    await eventually(() =>
      expect(seen.reported).toMatchObject({
        appliedGeneration: 3,
        pods: [{ uid: "keeper", phase: "Running" }],
      }),
    );
    const before = await appPid();
    await powerCycle("boot-2");
    const acksBefore = seen.acks.length;
    await startAgent("boot-2");
    await eventually(() => {
      expect(seen.reported).toMatchObject({
        bootId: "boot-2",
        epoch: "e1",
        appliedGeneration: 3,
        pods: [{ uid: "keeper", hash: pod.hash, phase: "Running", apps: [{ status: { state: "running" } }] }],
      });
      expect(pidOf()).not.toBe(before);
      expect(alive(pidOf())).toBe(true);
    });
    // Kept from storage, so not applied again: only the final ack is repeated (§ 4).
    await eventually(() => expect(acksSince(acksBefore)).toEqual([[3, "applied"]]));
  });

  it("without its state file, applies the retained document again at the next boot", async () => {
    await powerCycle("boot-3");
    rmSync(stateFile);
    const acksBefore = seen.acks.length;
    await startAgent("boot-3");
    await eventually(() => {
      expect(seen.reported).toMatchObject({
        bootId: "boot-3",
        appliedGeneration: 3,
        pods: [{ uid: "keeper", phase: "Running" }],
      });
      expect(alive(pidOf())).toBe(true);
    });
    await eventually(() =>
      expect(acksSince(acksBefore)).toEqual([
        [3, "received"],
        [3, "applied"],
      ]),
    );
    await stopAgent("SIGTERM");
  });
});

describe("the agent across a restart after a rejection (docs/protocol.md § 4)", () => {
  it("reports the stored rejection again and only repeats its `rejected` ack for the retained copy", async () => {
    await startAgent("boot-3");
    // Readable epoch and generation, wrong content hash: rejected `InvalidDocument`.
    const invalid = desiredDocument({ deviceId: ID, epoch: "e1", generation: 4, pods: [pod] });
    const payload = JSON.stringify({ ...invalid, contentHash: "0".repeat(64) });
    const retain = (message: string) =>
      rig.devicelet.publishAsync(topics.desired(ID), message, { qos: 1, retain: true });
    await retain(payload);
    const rejected = {
      observedGeneration: 4,
      appliedGeneration: 3,
      rejection: { generation: 4, reason: "InvalidDocument" },
    };
    await eventually(() => expect(seen.reported).toMatchObject(rejected));
    await eventually(() =>
      expect(JSON.parse(readFileSync(stateFile, "utf8"))).toMatchObject({
        rejection: { epoch: "e1", generation: 4, reason: "InvalidDocument" },
      }),
    );
    await stopAgent("SIGKILL");
    // No retained document this time: what the agent reports comes from its state file alone.
    await retain("");
    seen.reported = undefined;
    await startAgent("boot-3");
    await eventually(() =>
      expect(seen.reported).toMatchObject({ ...rejected, pods: [{ uid: "keeper", phase: "Running" }] }),
    );
    // The retained copy again: its `rejected` ack is repeated, and the rejection stays.
    const acksBefore = seen.acks.length;
    await retain(payload);
    await eventually(() => expect(acksSince(acksBefore)).toEqual([[4, "rejected"]]));
    expect(seen.reported).toMatchObject(rejected);
    await stopAgent("SIGTERM");
  });
});
