/**
 * `devicelet agent` in IoT Hub mode with its other credentials and transport, each run as its own
 * process against the local IoT Hub emulator: an X.509 certificate (and refused ones) over MQTT,
 * and a SAS key over MQTT over WebSockets. The test plays the provider from the service side, as
 * agent-iothub.test.ts does, and reads refusals where the hub makes them (the refused CONNECTs and
 * the connection changes the emulator records). Then the configuration rules of the credentials.
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, mkdtempSync, openSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { stringify } from "yaml";
import {
  makeDeviceCertificate,
  startIotHubEmulator,
  type HubChange,
  type IotHubEmulator,
  type RefusedConnect,
} from "../../hack/iothub-emulator/index.ts";
import { emulatorRegistry, writeDesiredText } from "../../hack/iothub-emulator/service-sdk.ts";
import { ConfigError } from "../../src/config/load.ts";
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
const root = mkdtempSync(path.join(os.tmpdir(), "devicelet-agent-iothub-auth-"));
const APP = 'process.on("SIGTERM", () => process.exit(0)); setInterval(() => {}, 1000)';

let emulator: IotHubEmulator;
const refusals: RefusedConnect[] = [];
const connections: Extract<HubChange, { kind: "connection" }>[] = [];
const agents: ChildProcess[] = [];

beforeAll(async () => {
  emulator = await startIotHubEmulator();
  emulator.onConnectRefused((refused) => refusals.push(refused));
  emulator.hub.onChange((change) => {
    if (change.kind === "connection") connections.push(change);
  });
});
afterEach(async () => {
  await Promise.all(
    agents.splice(0).map(async (child) => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGTERM");
      await exited;
    }),
  );
});
afterAll(async () => {
  await emulator.close();
});

/**
 * Writes `{root}/{deviceId}/` with the connection string, the hub's CA and the agent's config
 * (`iothub` merged over the defaults here) and spawns the agent on it.
 */
function runAgent(o: {
  deviceId: string;
  connectionString: string;
  iothub?: Record<string, unknown>;
  files?: Record<string, string>;
}): void {
  const dir = path.join(root, o.deviceId);
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, "connection-string"), `${o.connectionString}\n`, { mode: 0o600 });
  writeFileSync(path.join(dir, "hub-ca.pem"), emulator.ca);
  for (const [name, text] of Object.entries(o.files ?? {}))
    writeFileSync(path.join(dir, name), text, { mode: 0o600 });
  writeFileSync(
    path.join(dir, "agent.yaml"),
    stringify({
      iothub: {
        connectionStringFile: "connection-string",
        caFile: "hub-ca.pem",
        heartbeatSeconds: 5,
        ...o.iothub,
      },
      workDir: "pods",
      stateFile: "agent-state.json",
      willDelaySeconds: 0,
      log: { level: "debug" },
    }),
  );
  const launcher = `const { agentCommand } = await import(${JSON.stringify(pathToFileURL(agentCli).href)});
process.exitCode = await agentCommand(process.argv.slice(1));`;
  const log = openSync(path.join(dir, "agent.log"), "a");
  agents.push(
    spawn(
      process.execPath,
      ["--input-type=module", "-e", launcher, "--", "--config", path.join(dir, "agent.yaml")],
      {
        stdio: ["ignore", log, log],
      },
    ),
  );
}

const registry = () => emulatorRegistry(emulator);
async function reported<T>(deviceId: string, key: string): Promise<T | undefined> {
  const twin = (await registry().getTwin(deviceId)).responseBody;
  const text = decodeTwinDocument((twin.properties.reported as Record<string, unknown>)[key]);
  return text === undefined ? undefined : (JSON.parse(text) as T);
}
const online = (deviceId: string) =>
  eventually(
    async () =>
      expect(await reported<PresenceMessage>(deviceId, IOTHUB_MAPPING.reported.state)).toMatchObject({
        state: "online",
      }),
    { timeoutMs: 30_000 },
  );

describe("devicelet agent over IoT Hub with X.509", () => {
  it("comes online with a self-signed certificate and an encrypted key", async () => {
    const deviceId = `x509-agent-${process.pid}`;
    const certificate = makeDeviceCertificate({ deviceId });
    const encryptedKey = execFileSync("openssl", ["pkey", "-aes256", "-passout", "pass:open sesame"], {
      input: certificate.key,
    }).toString();
    const { connectionString } = emulator.addDevice(deviceId, {
      x509: { primaryThumbprint: certificate.thumbprint },
    });
    runAgent({
      deviceId,
      connectionString,
      iothub: { x509: { certFile: "device.pem", keyFile: "device.key", passphraseFile: "passphrase" } },
      files: { "device.pem": certificate.cert, "device.key": encryptedKey, passphrase: "open sesame\n" },
    });
    await online(deviceId);
    expect((await registry().get(deviceId)).responseBody).toMatchObject({
      connectionState: "Connected",
      authentication: { type: "selfSigned" },
    });
    expect(refusals.filter((r) => r.deviceId === deviceId)).toEqual([]);
  });

  it("never comes online with a certificate the hub does not hold, nor with an expired one", async () => {
    const wrongId = `x509-wrong-${process.pid}`;
    const expiredId = `x509-expired-${process.pid}`;
    const held = makeDeviceCertificate({ deviceId: wrongId });
    const wrong = makeDeviceCertificate({ deviceId: wrongId });
    const expired = makeDeviceCertificate({ deviceId: expiredId, days: -1 });
    for (const [deviceId, thumbprint, certificate] of [
      [wrongId, held.thumbprint, wrong],
      [expiredId, expired.thumbprint, expired],
    ] as const) {
      const { connectionString } = emulator.addDevice(deviceId, { x509: { primaryThumbprint: thumbprint } });
      runAgent({
        deviceId,
        connectionString,
        iothub: { x509: { certFile: "device.pem", keyFile: "device.key" } },
        files: { "device.pem": certificate.cert, "device.key": certificate.key },
      });
    }
    // Two refusals each: the first connect and the retry after it, both with the certificate.
    const refusedOf = (deviceId: string) => refusals.filter((r) => r.deviceId === deviceId);
    await eventually(
      () => {
        expect(refusedOf(wrongId).length).toBeGreaterThanOrEqual(2);
        expect(refusedOf(expiredId).length).toBeGreaterThanOrEqual(2);
      },
      { timeoutMs: 20_000 },
    );
    for (const deviceId of [wrongId, expiredId]) {
      expect(new Set(refusedOf(deviceId).map((r) => `${r.returnCode} ${r.certificate}`))).toEqual(
        new Set(["5 true"]),
      );
      expect(connections.filter((c) => c.deviceId === deviceId)).toEqual([]);
      expect((await registry().get(deviceId)).responseBody.connectionState).toBe("Disconnected");
      expect(await reported(deviceId, IOTHUB_MAPPING.reported.state)).toBeUndefined();
    }
  });
});

describe("devicelet agent over IoT Hub, MQTT over WebSockets", () => {
  it("comes online with its SAS key, applies a desired document and reports", async () => {
    const deviceId = `ws-agent-${process.pid}`;
    const { webSocketConnectionString } = emulator.addDevice(deviceId);
    runAgent({ deviceId, connectionString: webSocketConnectionString, iothub: { transport: "mqttWs" } });
    await online(deviceId);

    const doc: DesiredDocument = desiredDocument({
      deviceId,
      epoch: "e1",
      generation: 1,
      pods: [desiredPod({ uid: "w", apps: [{ name: "main", command: [process.execPath, "-e", APP] }] })],
    });
    await writeDesiredText(registry(), deviceId, encodeMessage(doc).toString());
    await eventually(
      async () => {
        const report = await reported<ReportedDocument>(deviceId, IOTHUB_MAPPING.reported.reported);
        expect(report).toMatchObject({ epoch: "e1", appliedGeneration: 1 });
        expect(report?.pods).toEqual([expect.objectContaining({ uid: "w", phase: "Running" })]);
      },
      { timeoutMs: 30_000 },
    );
    expect(await reported<AckMessage>(deviceId, IOTHUB_MAPPING.reported.ack)).toMatchObject({
      generation: 1,
      stage: "applied",
    });
    const log = readFileSync(path.join(root, deviceId, "agent.log"), "utf8");
    expect(log).toMatch(/"transport":"mqttWs"/);
  });
});

describe("agent configuration: IoT Hub credentials", () => {
  const problems = (config: Record<string, unknown>): string[] => {
    try {
      parseAgentConfig(stringify(config), "agent.yaml");
    } catch (err) {
      if (err instanceof ConfigError) return err.problems.map((p) => `${p.path}: ${p.message}`);
      throw err;
    }
    return [];
  };
  const sas = "HostName=h.example;DeviceId=gw-1;SharedAccessKey=a2V5";
  const x509 = "HostName=h.example;DeviceId=gw-1;x509=true";
  const files = { certFile: "gw.pem", keyFile: "gw.key" };

  it("takes a SAS key or an X.509 certificate, over mqtt by default or mqttWs", () => {
    expect(problems({ iothub: { connectionString: sas } })).toEqual([]);
    expect(problems({ iothub: { connectionString: x509, x509: files, transport: "mqttWs" } })).toEqual([]);
    const config = parseAgentConfig(
      stringify({ iothub: { connectionString: x509, x509: files } }),
      "/etc/d/agent.yaml",
    );
    expect(config.iothub).toMatchObject({
      transport: "mqtt",
      x509: { certFile: "/etc/d/gw.pem", keyFile: "/etc/d/gw.key" },
    });
  });

  it("refuses both credential forms and neither, listing every problem at once", () => {
    const both = problems({
      iothub: { connectionString: sas, x509: { certFile: "gw.pem" }, transport: "amqp" },
      device: { id: "gw-2" },
    });
    expect(both).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^\/iothub\/x509\/keyFile: is required/),
        expect.stringMatching(/^\/iothub\/transport: must be one of: mqtt, mqttWs/),
        expect.stringMatching(/device.id gw-2 differs from the connection string's DeviceId gw-1/),
        expect.stringMatching(/^\/iothub: exactly one of a SAS key and x509 is allowed/),
      ]),
    );
    expect(both).toHaveLength(4);
    expect(both.join("\n")).not.toContain("a2V5");

    expect(problems({ iothub: { connectionString: "HostName=h.example;DeviceId=gw-1" } })).toEqual([
      expect.stringMatching(/^\/iothub: exactly one of a SAS key and x509 is required/),
    ]);
    expect(problems({ iothub: { connectionString: x509 } })).toEqual([
      expect.stringMatching(
        /^\/iothub: the connection string says x509=true, but no x509 certificate and key/,
      ),
    ]);
    expect(
      problems({ iothub: { connectionString: "HostName=h.example;DeviceId=gw-1", x509: files } }),
    ).toEqual([
      expect.stringMatching(
        /^\/iothub: with x509 \(certFile, keyFile\), the connection string must say x509=true/,
      ),
    ]);
  });
});
