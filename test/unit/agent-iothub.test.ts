/**
 * `devicelet agent` in IoT Hub mode, run as its own process against the local IoT Hub emulator
 * (the device connects with a connection string and trusts the emulator's CA from `caFile`). The
 * test plays the provider from the service side: it writes desired documents into the twin and
 * reads the agent's reported section. No control plane is involved.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, openSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { stringify } from "yaml";
import { startIotHubEmulator, type IotHubEmulator } from "../../hack/iothub-emulator/index.ts";
import { emulatorRegistry, writeDesiredText } from "../../hack/iothub-emulator/service-sdk.ts";
import { parseAgentConfig } from "../../src/device/agent.ts";
import { desiredDocument, desiredPod } from "../../src/device/fixtures.ts";
import { decodeTwinDocument, IOTHUB_MAPPING } from "../../src/device/iothub-link.ts";
import { encodeMessage } from "../../src/protocol/codec.ts";
import type {
  AckMessage,
  DesiredDocument,
  PresenceMessage,
  ReportedDocument,
} from "../../src/protocol/types.ts";
import { eventually } from "../support/eventually.ts";

const agentCli = path.resolve(import.meta.dirname, "../../src/cli/agent.ts");
const ID = `iot-agent-${process.pid}`;
const dir = mkdtempSync(path.join(os.tmpdir(), "devicelet-agent-iothub-"));
const workDir = path.join(dir, "pods");

/** Appends a line to `$DEVICELET_APP_DIR/starts` at each start, then runs until SIGTERM. */
const COUNTING_APP =
  'require("fs").appendFileSync(process.env.DEVICELET_APP_DIR + "/starts", "start\\n"); process.on("SIGTERM", () => process.exit(0)); setInterval(() => {}, 1000)';
const pod = (uid: string) =>
  desiredPod({
    uid,
    restartPolicy: "Always",
    terminationGracePeriodSeconds: 5,
    apps: [{ name: "main", command: [process.execPath, "-e", COUNTING_APP] }],
  });
const starts = (uid: string) => {
  try {
    return readFileSync(path.join(workDir, uid, "main", "starts"), "utf8").split("\n").length - 1;
  } catch {
    return 0;
  }
};

let emulator: IotHubEmulator;
let agent: ChildProcess | undefined;

beforeAll(async () => {
  emulator = await startIotHubEmulator();
  const { connectionString } = emulator.addDevice(ID);
  writeFileSync(path.join(dir, "connection-string"), `${connectionString}\n`, { mode: 0o600 });
  writeFileSync(path.join(dir, "hub-ca.pem"), emulator.ca);
  writeFileSync(
    path.join(dir, "agent.yaml"),
    stringify({
      iothub: { connectionStringFile: "connection-string", caFile: "hub-ca.pem", heartbeatSeconds: 5 },
      device: { capacity: { pods: "10" } },
      workDir: "pods",
      stateFile: "agent-state.json",
      restartBackoff: { initialMs: 200, maxMs: 1000 },
      willDelaySeconds: 0,
      log: { level: "debug" },
    }),
  );
});

afterAll(async () => {
  await stopAgent("SIGTERM");
  await emulator.close();
});

function startAgent(): void {
  const launcher = `const { agentCommand } = await import(${JSON.stringify(pathToFileURL(agentCli).href)});
process.exitCode = await agentCommand(process.argv.slice(1));`;
  const log = openSync(path.join(dir, "agent.log"), "a");
  agent = spawn(
    process.execPath,
    ["--input-type=module", "-e", launcher, "--", "--config", path.join(dir, "agent.yaml")],
    { stdio: ["ignore", log, log] },
  );
}

async function stopAgent(signal: "SIGTERM" | "SIGKILL"): Promise<void> {
  const child = agent;
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once("exit", resolve));
  child.kill(signal);
  await exited;
}

const registry = () => emulatorRegistry(emulator);
const twin = async () => (await registry().getTwin(ID)).responseBody;
async function reported<T>(key: string): Promise<T | undefined> {
  const text = decodeTwinDocument(((await twin()).properties.reported as Record<string, unknown>)[key]);
  return text === undefined ? undefined : (JSON.parse(text) as T);
}

/** The provider's write: the document under the desired key, conditional on the twin's etag. */
const writeDesired = (doc: DesiredDocument) =>
  writeDesiredText(registry(), ID, encodeMessage(doc).toString());

const connected = () =>
  eventually(async () => expect((await registry().get(ID)).responseBody.connectionState).toBe("Connected"), {
    timeoutMs: 30_000,
  });

describe("devicelet agent over IoT Hub", () => {
  it("comes online as the connection string's device, without logs or exec", async () => {
    startAgent();
    await eventually(
      async () =>
        expect(await reported<PresenceMessage>(IOTHUB_MAPPING.reported.state)).toMatchObject({
          state: "online",
          device: { os: "linux", capabilities: { runtime: "process", logs: false, exec: false } },
        }),
      { timeoutMs: 30_000 },
    );
  });

  it("runs the pods of a desired document written into the twin", async () => {
    await writeDesired(desiredDocument({ deviceId: ID, epoch: "e1", generation: 1, pods: [pod("a")] }));
    await eventually(async () => {
      const report = await reported<ReportedDocument>(IOTHUB_MAPPING.reported.reported);
      expect(report).toMatchObject({ epoch: "e1", appliedGeneration: 1 });
      expect(report?.pods).toEqual([expect.objectContaining({ uid: "a", phase: "Running" })]);
    });
    expect(await reported<AckMessage>(IOTHUB_MAPPING.reported.ack)).toMatchObject({
      generation: 1,
      stage: "applied",
    });
    // Running is reported once the process is spawned, maybe before it wrote its line.
    await eventually(() => expect(starts("a")).toBe(1));
  });

  it("applies a document written while it was killed exactly once after it restarts", async () => {
    await stopAgent("SIGKILL");
    await eventually(async () =>
      expect((await registry().get(ID)).responseBody.connectionState).toBe("Disconnected"),
    );
    await writeDesired(
      desiredDocument({ deviceId: ID, epoch: "e1", generation: 2, pods: [pod("a"), pod("b")] }),
    );
    startAgent();
    await connected();
    await eventually(async () => {
      const report = await reported<ReportedDocument>(IOTHUB_MAPPING.reported.reported);
      expect(report).toMatchObject({ epoch: "e1", appliedGeneration: 2 });
      expect(report?.pods.map((p) => [p.uid, p.phase])).toEqual([
        ["a", "Running"],
        ["b", "Running"],
      ]);
    });
    // The new pod started once; the stored pod ran again at start (the kill took its process) and
    // was not restarted a third time by applying generation 2 over it.
    await eventually(() => expect([starts("a"), starts("b")]).toEqual([2, 1]));
    const report = await reported<ReportedDocument>(IOTHUB_MAPPING.reported.reported);
    expect(report?.pods.map((p) => p.apps[0]?.restartCount)).toEqual([0, 0]);
    const state: unknown = JSON.parse(readFileSync(path.join(dir, "agent-state.json"), "utf8"));
    expect(state).toMatchObject({ epoch: "e1", appliedGeneration: 2 });
  });
});

describe("agent configuration: broker or iothub", () => {
  const parse = (config: Record<string, unknown>) => () => parseAgentConfig(stringify(config), "agent.yaml");
  const hub = { connectionString: "HostName=h.example;DeviceId=gw-1;SharedAccessKey=a2V5" };

  it("takes exactly one of broker and iothub", () => {
    expect(parse({ device: { id: "gw-1" } })).toThrow(/exactly one of broker \(MQTT\) and iothub/);
    expect(parse({ broker: { url: "mqtts://b:8883" }, iothub: hub, device: { id: "gw-1" } })).toThrow(
      /exactly one of broker \(MQTT\) and iothub/,
    );
    expect(parse({ broker: { url: "mqtts://b:8883" } })).toThrow(
      /\/device: must have required property 'id'/,
    );
    expect(parse({ iothub: { ...hub, connectionStringFile: "cs" } })).toThrow(
      /\/iothub: exactly one of connectionString and connectionStringFile/,
    );
  });

  it("takes the device id from the connection string and refuses a different one", () => {
    expect(parse({ iothub: hub })().iothub).toMatchObject({ heartbeatSeconds: 60 });
    expect(parse({ iothub: hub, device: { id: "gw-2" } })).toThrow(
      /device.id gw-2 differs from the connection string's DeviceId gw-1/,
    );
    const error = (() => {
      try {
        parse({ iothub: hub, device: { id: "gw-2" } })();
      } catch (err) {
        return (err as Error).message;
      }
      return "";
    })();
    expect(error).not.toContain("a2V5");
  });
});
