/**
 * Test support for the reference agent: `devicelet agent` run as its own process against a real
 * Mosquitto over TLS, with the test playing devicelet over a plain MQTT client that records what
 * the agent publishes under its topics (presence, the latest report, acks). One rig per test file:
 * it owns the broker, the client and the agent process, and `close()` ends all three.
 *
 *   const rig = await startAgentRig({ id, dir, config: { bootIdFile } });
 *   await rig.startAgent();                      // resolves at a new `online`
 *   await rig.publishDesired(desiredDocument({ deviceId: id, ... }));
 *   await eventually(() => expect(rig.seen.reported).toMatchObject({ appliedGeneration: 1 }));
 *   await rig.stopAgent("SIGKILL");
 *   await rig.close();
 */
import { spawn, type ChildProcess } from "node:child_process";
import { openSync, writeFileSync } from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import mqtt, { type MqttClient } from "mqtt";
import { expect } from "vitest";
import { stringify } from "yaml";
import { startMosquitto, type Broker } from "../../hack/testenv/mosquitto.ts";
import { encodeMessage } from "../../src/protocol/codec.ts";
import { topics, TOPIC_ROOT } from "../../src/protocol/topics.ts";
import type {
  AckMessage,
  DesiredDocument,
  PresenceMessage,
  ReportedDocument,
} from "../../src/protocol/types.ts";
import { eventually } from "./eventually.ts";

const agentCli = path.resolve(import.meta.dirname, "../../src/cli/agent.ts");

/** An app that writes its pid to `$DEVICELET_APP_DIR/pid`, runs until SIGTERM, then exits 0. */
export const LONG_RUNNING_APP =
  'require("fs").writeFileSync(process.env.DEVICELET_APP_DIR + "/pid", String(process.pid)); process.on("SIGTERM", () => process.exit(0)); setInterval(() => {}, 1000)';

/** Whether a process of that pid exists. */
export const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** What the agent published, as the test (devicelet) saw it; the arrays only grow. */
export interface AgentSeen {
  readonly state: PresenceMessage[];
  reported: ReportedDocument | undefined;
  readonly acks: AckMessage[];
}

export interface AgentRig {
  readonly seen: AgentSeen;
  /** Where the agent's config, state, log and `pods/` work folder are. */
  readonly dir: string;
  readonly workDir: string;
  /** The test's own client, as devicelet. */
  readonly devicelet: MqttClient;
  /**
   * Spawns the agent and resolves once it is online: with `bootId`, once the latest presence is
   * `online` with that boot id; without, at the first `online` published after the call.
   */
  startAgent(options?: { readonly bootId?: string }): Promise<void>;
  /** Signals the agent and resolves with its exit code once it exited (at once when it has). */
  stopAgent(signal: "SIGTERM" | "SIGKILL"): Promise<number | null>;
  /** Publishes `doc` retained on the device's `desired` topic. */
  publishDesired(doc: DesiredDocument): Promise<void>;
  /** `[generation, stage]` of every desired-document ack seen from `index` (of `seen.acks`) on. */
  acksSince(index: number): (number | string)[][];
  /** An agent still running gets SIGTERM; then the client and the broker stop. */
  close(): Promise<void>;
}

/**
 * Starts Mosquitto under `dir`, writes the agent's config (`dir/agent.yaml`: its defaults, with
 * `config` merged over them at the top level) and connects the devicelet client. The agent itself
 * starts at {@link AgentRig.startAgent}.
 */
export async function startAgentRig(o: {
  readonly id: string;
  readonly dir: string;
  readonly config?: Readonly<Record<string, unknown>>;
}): Promise<AgentRig> {
  const { id, dir } = o;
  const configFile = path.join(dir, "agent.yaml");
  const broker: Broker = await startMosquitto({ dir: path.join(dir, "mosquitto") });
  writeFileSync(path.join(dir, "ca.pem"), broker.ca);
  writeFileSync(
    configFile,
    stringify({
      broker: { url: broker.tlsUrl, ca: "ca.pem" },
      device: { id, capacity: { pods: "10" } },
      workDir: "pods",
      stateFile: "agent-state.json",
      restartBackoff: { initialMs: 200, maxMs: 1000 },
      willDelaySeconds: 0,
      log: { level: "debug" },
      ...o.config,
    }),
  );
  const seen: AgentSeen = { state: [], reported: undefined, acks: [] };
  const devicelet = await mqtt.connectAsync(broker.url, { clientId: `devicelet-${process.pid}` });
  devicelet.on("message", (_topic, payload) => {
    if (payload.length === 0) return;
    // Everything under the device's topics: our own desired documents and its events too.
    const message = JSON.parse(payload.toString()) as
      PresenceMessage | ReportedDocument | AckMessage | { kind: "desired" | "event" };
    if (message.kind === "presence") seen.state.push(message);
    else if (message.kind === "reported") seen.reported = message;
    else if (message.kind === "ack" || message.kind === "command-ack") seen.acks.push(message);
  });
  await devicelet.subscribeAsync(`${TOPIC_ROOT}/${id}/#`, { qos: 1 });

  let agent: ChildProcess | undefined;
  const running = () => agent !== undefined && agent.exitCode === null && agent.signalCode === null;
  const stopAgent = async (signal: "SIGTERM" | "SIGKILL"): Promise<number | null> => {
    const child = agent;
    if (!child) return null;
    if (!running()) return child.exitCode;
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    child.kill(signal);
    return exited;
  };
  return {
    seen,
    dir,
    workDir: path.join(dir, "pods"),
    devicelet,
    async startAgent(options = {}) {
      const launcher = `const { agentCommand } = await import(${JSON.stringify(pathToFileURL(agentCli).href)});
process.exitCode = await agentCommand(process.argv.slice(1));`;
      const log = openSync(path.join(dir, "agent.log"), "a");
      const before = seen.state.length;
      agent = spawn(process.execPath, ["--input-type=module", "-e", launcher, "--", "--config", configFile], {
        stdio: ["ignore", log, log],
      });
      const { bootId } = options;
      await eventually(
        () =>
          bootId === undefined
            ? expect(seen.state.slice(before).some((s) => s.state === "online")).toBe(true)
            : expect(seen.state.at(-1)).toMatchObject({ state: "online", bootId }),
        { timeoutMs: 30_000 },
      );
    },
    stopAgent,
    async publishDesired(doc) {
      await devicelet.publishAsync(topics.desired(id), encodeMessage(doc), { qos: 1, retain: true });
    },
    acksSince: (index) =>
      seen.acks.slice(index).flatMap((a) => (a.kind === "ack" ? [[a.generation, a.stage]] : [])),
    async close() {
      if (running()) await stopAgent("SIGTERM");
      await devicelet.endAsync();
      await broker.stop();
    },
  };
}
