/**
 * docs/protocol.md § 4 on the reference agent (`devicelet agent`, its own process) against a real
 * Mosquitto: after a reboot (a real SIGKILL of the agent, every app process gone as in a power
 * cycle, and a new kernel boot id) the agent runs the pods of the document it applied again and
 * reports them Running, without applying the retained document a second time; an agent that lost
 * its state file instead applies the retained document again. The test plays devicelet.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import mqtt, { type MqttClient } from "mqtt";
import { stringify } from "yaml";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startMosquitto, type Broker } from "../../hack/testenv/mosquitto.ts";
import { desiredDocument, desiredPod } from "../../src/device/fixtures.ts";
import { encodeMessage } from "../../src/protocol/codec.ts";
import { topics, TOPIC_ROOT } from "../../src/protocol/topics.ts";
import type { AckMessage, PresenceMessage, ReportedDocument } from "../../src/protocol/types.ts";
import { eventually } from "../support/eventually.ts";

const ID = `dpa-${process.pid}`;
const node = process.execPath;
const agentCli = path.resolve(import.meta.dirname, "../../src/cli/agent.ts");
const dir = mkdtempSync(path.join(os.tmpdir(), "devicelet-dpa-"));
const workDir = path.join(dir, "pods");
const configFile = path.join(dir, "agent.yaml");
const bootIdFile = path.join(dir, "boot_id");
const stateFile = path.join(dir, "agent-state.json");

let broker: Broker;
let devicelet: MqttClient;
let agent: ChildProcess | undefined;
const seen = {
  state: [] as PresenceMessage[],
  reported: undefined as ReportedDocument | undefined,
  acks: [] as AckMessage[],
};

const longRunning =
  'require("fs").writeFileSync(process.env.DEVICELET_APP_DIR + "/pid", String(process.pid)); process.on("SIGTERM", () => process.exit(0)); setInterval(() => {}, 1000)';
const pod = desiredPod({
  uid: "keeper",
  terminationGracePeriodSeconds: 5,
  apps: [{ name: "main", command: [node, "-e", longRunning] }],
});

beforeAll(async () => {
  broker = await startMosquitto({ dir: path.join(dir, "mosquitto") });
  writeFileSync(path.join(dir, "ca.pem"), broker.ca);
  writeFileSync(bootIdFile, "boot-1\n");
  writeFileSync(
    configFile,
    stringify({
      broker: { url: broker.tlsUrl, ca: "ca.pem" },
      device: { id: ID, capacity: { pods: "10" } },
      workDir: "pods",
      stateFile: "agent-state.json",
      bootIdFile,
      restartBackoff: { initialMs: 200, maxMs: 1000 },
      willDelaySeconds: 0,
      log: { level: "debug" },
    }),
  );
  devicelet = await mqtt.connectAsync(broker.url, { clientId: `devicelet-${process.pid}` });
  devicelet.on("message", (_topic, payload) => {
    if (payload.length === 0) return;
    const message = JSON.parse(payload.toString()) as
      PresenceMessage | ReportedDocument | AckMessage | { kind: "desired" | "event" };
    if (message.kind === "presence") seen.state.push(message);
    else if (message.kind === "reported") seen.reported = message;
    else if (message.kind === "ack" || message.kind === "command-ack") seen.acks.push(message);
  });
  await devicelet.subscribeAsync(`${TOPIC_ROOT}/${ID}/#`, { qos: 1 });
});

afterAll(async () => {
  if (agent && agent.exitCode === null) await stopAgent("SIGTERM");
  await devicelet.endAsync();
  await broker.stop();
});

async function startAgent(bootId: string): Promise<void> {
  const launcher = `const { agentCommand } = await import(${JSON.stringify(pathToFileURL(agentCli).href)});
process.exitCode = await agentCommand(process.argv.slice(1));`;
  const log = openSync(path.join(dir, "agent.log"), "a");
  agent = spawn(node, ["--input-type=module", "-e", launcher, "--", "--config", configFile], {
    stdio: ["ignore", log, log],
  });
  await eventually(() => expect(seen.state.at(-1)).toMatchObject({ state: "online", bootId }), {
    timeoutMs: 30_000,
  });
}

async function stopAgent(signal: "SIGTERM" | "SIGKILL"): Promise<void> {
  const child = agent;
  if (!child || child.exitCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill(signal);
  await exited;
}

const pidOf = () => Number(readFileSync(path.join(workDir, "keeper", "main", "pid"), "utf8"));
/** The app writes its pid file itself, a moment after it is reported running. */
const appPid = () =>
  eventually(() => {
    const pid = pidOf();
    expect(pid).toBeGreaterThan(0);
    expect(alive(pid)).toBe(true);
    return pid;
  });
const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};
const acksSince = (index: number) =>
  seen.acks.slice(index).flatMap((a) => (a.kind === "ack" ? [[a.generation, a.stage]] : []));

/** A power cycle: the agent dies (SIGKILL), so do its apps, and the kernel gets a new boot id. */
async function powerCycle(bootId: string): Promise<void> {
  const apps = await appPid();
  await stopAgent("SIGKILL");
  process.kill(-apps, "SIGKILL");
  await eventually(() => expect(alive(apps)).toBe(false));
  writeFileSync(bootIdFile, `${bootId}\n`);
}

describe("the agent across a reboot (docs/protocol.md § 4)", () => {
  it("runs the applied pods again at a new boot, Running, without applying the retained document again", async () => {
    await startAgent("boot-1");
    const doc = desiredDocument({ deviceId: ID, epoch: "e1", generation: 3, pods: [pod] });
    await devicelet.publishAsync(topics.desired(ID), encodeMessage(doc), { qos: 1, retain: true });
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
