/**
 * Secrets end to end, on the Mosquitto configuration shipped in examples/mosquitto/: the control
 * plane, the real `devicelet run` (connected over mutual TLS as `_devicelet`, with a broker URL that
 * carries credentials), and two reference agents (`devicelet agent`) over mutual TLS with their own
 * certificates — one listed in `devices.secrets.allow`, one not. A Secret holding a long random
 * marker reaches a pod both as env and as a volume file.
 *
 * What must hold: the trusted device gets the value (its agent writes the file); the other device's
 * pod is held back with SecretRequiresTLS and its document never carries it; a spy on the plain
 * listener, subscribed to `#`, sees device traffic but never the value; and neither the value nor
 * the broker URL's password appears in any log line devicelet or the agents wrote, nor in any
 * ConfigMap, Event, Node, Lease or Pod of the cluster.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  existsSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  statSync,
  writeFileSync,
} from "node:fs";
import os from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import mqtt, { type MqttClient } from "mqtt";
import { parse, stringify } from "yaml";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startExampleBroker, type ExampleBroker } from "../support/example-broker.ts";
import { eventually } from "../support/eventually.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import {
  expectNodeCount,
  retained,
  startMqttDevicelet,
  stopAll,
  type RunningMqttDevicelet,
} from "../support/mqtt.ts";
import { uniqueName } from "../support/testenv.ts";
import { isReady, pod, type PodJson } from "../support/workloads.ts";

const id = uniqueName("secrets");
const ns = id;
const trusted = `${id}-trusted`;
const untrusted = `${id}-other`;
/** The Secret's value: long and random, so finding it anywhere means it leaked. */
const MARKER = `marker-${randomBytes(24).toString("hex")}`;
const MARKER_B64 = Buffer.from(MARKER).toString("base64");
/** The password in devicelet's broker URL (Mosquitto ignores it: the certificate is the identity). */
const URL_PASSWORD = `urlpass-${randomBytes(12).toString("hex")}`;
const agentCli = path.resolve(import.meta.dirname, "../../src/cli/agent.ts");

let broker: ExampleBroker | undefined;
let devicelet: RunningMqttDevicelet | undefined;
let spy: MqttClient | undefined;
const spied: { topic: string; payload: string }[] = [];
const agents = new Map<string, { child: ChildProcess; dir: string; logFile: string }>();

/** Starts `devicelet agent` as `deviceId` over mutual TLS with that device's certificate. */
function startAgent(b: ExampleBroker, deviceId: string): void {
  const dir = mkdtempSync(path.join(os.tmpdir(), `devicelet-agent-${deviceId}-`));
  const files = b.identity(deviceId);
  writeFileSync(
    path.join(dir, "agent.yaml"),
    stringify({
      broker: { url: b.tlsUrl, protocolVersion: 5, ca: b.caFile, cert: files.cert, key: files.key },
      device: { id: deviceId, capacity: { pods: "10", cpu: "2", memory: "1Gi" } },
      workDir: "pods",
      stateFile: "agent-state.json",
      willDelaySeconds: 0,
      log: { level: "debug" },
    }),
  );
  const launcher = `const { agentCommand } = await import(${JSON.stringify(pathToFileURL(agentCli).href)});
process.exitCode = await agentCommand(process.argv.slice(1));`;
  const logFile = path.join(dir, "agent.log");
  const out = openSync(logFile, "a");
  const child = spawn(
    process.execPath,
    ["--input-type=module", "-e", launcher, "--", "--config", path.join(dir, "agent.yaml")],
    { stdio: ["ignore", out, out] },
  );
  agents.set(deviceId, { child, dir, logFile });
}

async function stopAgent(deviceId: string): Promise<void> {
  const agent = agents.get(deviceId);
  if (!agent || agent.child.exitCode !== null || agent.child.signalCode !== null) return;
  const exited = new Promise((resolve) => agent.child.once("exit", resolve));
  agent.child.kill("SIGTERM");
  await exited;
}

/** Every regular file under `dir`, recursively, with its content (none when `dir` does not exist). */
function filesUnder(dir: string): { path: string; content: string }[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile())
    .map((e) => path.join(e.parentPath, e.name))
    .map((p) => ({ path: p, content: readFileSync(p, "utf8") }));
}

beforeAll(async () => {
  await kubectl(["create", "namespace", ns]);
  broker = await startExampleBroker(id, { identities: ["_devicelet", trusted, untrusted] });
  const b = broker;
  // The spy: the plain listener's one user, subscribed to everything it may see.
  spy = await mqtt.connectAsync(b.url, { ...b.monitor, protocolVersion: 5, reconnectPeriod: 0 });
  spy.on("message", (topic, payload) => spied.push({ topic, payload: payload.toString("utf8") }));
  await spy.subscribeAsync("#", { qos: 1 });
  const self = b.identity("_devicelet");
  const url = b.tlsUrl.replace("mqtts://", `mqtts://_devicelet:${URL_PASSWORD}@`);
  devicelet = await startMqttDevicelet({
    id,
    brokerUrl: url,
    namespace: ns,
    provider: {
      broker: {
        url,
        protocolVersion: 5,
        clientId: `devicelet-${id}`,
        reconnect: { minDelayMs: 100, maxDelayMs: 2000 },
        tls: { ca: b.caFile, cert: self.cert, key: self.key },
      },
      devices: { allow: [`${id}-*`], secrets: { allow: [trusted] } },
    },
  });
  startAgent(b, trusted);
  startAgent(b, untrusted);
  await expectNodeCount(devicelet.nodeSelector, 2);
});

afterAll(async () => {
  await stopAll(
    ...[...agents.keys()].map((deviceId) => () => stopAgent(deviceId)),
    async () => devicelet?.stop(),
    async () => spy?.endAsync(),
    async () => broker?.stop(),
    async () => kubectl(["delete", "namespace", ns, "--wait=false", "--ignore-not-found"]),
  );
});

const secretPod = (name: string, node: string) =>
  pod({
    namespace: ns,
    name,
    testId: id,
    node,
    spec: `  volumes: [{ name: token, secret: { secretName: token } }]
  containers:
    - name: app
      image: example/app:1
      command: [${JSON.stringify(process.execPath)}, -e, "setInterval(() => {}, 1000)"]
      env: [{ name: TOKEN, valueFrom: { secretKeyRef: { name: token, key: value } } }]
      volumeMounts: [{ name: token, mountPath: /etc/token }]`,
  });

const getPod = (name: string) => getJson<PodJson>(["pod", name, "-n", ns]);

/** The retained payload on `topic`, read with devicelet's identity (only it may read `desired`). */
async function retainedOverTls(topic: string): Promise<string | undefined> {
  const b = broker as ExampleBroker;
  const files = b.identity("_devicelet");
  const found = await retained(b.tlsUrl, topic, {
    ca: readFileSync(b.caFile),
    cert: readFileSync(files.cert),
    key: readFileSync(files.key),
  });
  return found?.toString("utf8");
}

describe("Secrets end to end on examples/mosquitto", () => {
  it("reaches the trusted device over mutual TLS, as env and as a file, and is held back for the other", async () => {
    await kubectl(["create", "secret", "generic", "token", "-n", ns, `--from-literal=value=${MARKER}`]);
    await apply(secretPod("on-trusted", trusted));
    await apply(secretPod("on-other", untrusted));
    await eventually(async () => expect(isReady(await getPod("on-trusted"))).toBe(true));
    // The trusted agent wrote the Secret's file: the value crossed broker and TLS to it.
    const workDir = path.join(agents.get(trusted)?.dir ?? "", "pods");
    const written = filesUnder(workDir).filter((f) => f.content === MARKER);
    expect(written).toHaveLength(1);
    expect(statSync(written[0]?.path ?? "").mode & 0o077).toBe(0);
    const other = await eventually(async () => {
      const got = await getPod("on-other");
      expect(got.status.containerStatuses?.[0]?.state.waiting?.reason).toBe("SecretRequiresTLS");
      return got;
    });
    expect(other.status.containerStatuses?.[0]?.state.waiting?.message).toContain("devices.secrets.allow");
    expect(
      filesUnder(path.join(agents.get(untrusted)?.dir ?? "", "pods")).map((f) => f.content),
    ).not.toContain(MARKER);
    expect((await retainedOverTls(`devicelet/v1/${untrusted}/desired`)) ?? "").not.toContain(MARKER);
  });

  it("never shows the value on the plain listener, which does see device traffic", async () => {
    // The marker published after the pods went out arrives after anything they caused.
    const b = broker as ExampleBroker;
    const files = b.identity("_devicelet");
    const self = await mqtt.connectAsync(b.tlsUrl, {
      ca: readFileSync(b.caFile),
      cert: readFileSync(files.cert),
      key: readFileSync(files.key),
      reconnectPeriod: 0,
    });
    const barrier = `barrier-${randomBytes(6).toString("hex")}`;
    await self.publishAsync(`devicelet/v1/${trusted}/reported`, barrier, { qos: 1 });
    await self.endAsync();
    await eventually(() => expect(spied.some((m) => m.payload === barrier)).toBe(true));
    expect(spied.some((m) => m.topic === `devicelet/v1/${trusted}/state`)).toBe(true);
    const reports = spied.filter(
      (m) => m.topic === `devicelet/v1/${trusted}/reported` && m.payload !== barrier,
    );
    expect(reports.length).toBeGreaterThan(0);
    expect(spied.filter((m) => m.payload.includes(MARKER) || m.payload.includes(MARKER_B64))).toEqual([]);
    expect(spied.filter((m) => m.topic.endsWith("/desired"))).toEqual([]);
  });

  it("after a restart that no longer trusts the device, re-publishes its document without the Secret", async () => {
    const d = devicelet as RunningMqttDevicelet;
    expect(await retainedOverTls(`devicelet/v1/${trusted}/desired`)).toContain(MARKER);
    await d.stop();
    const config = parse(readFileSync(d.configFile, "utf8")) as {
      provider: { config: { devices: { secrets: { allow: string[] } } } };
    };
    config.provider.config.devices.secrets.allow = [];
    writeFileSync(d.configFile, stringify(config));
    await d.restart();
    const held = await eventually(async () => {
      const got = await getPod("on-trusted");
      expect(got.status.containerStatuses?.[0]?.state.waiting?.reason).toBe("SecretRequiresTLS");
      return got;
    });
    expect(held.status.phase).toBe("Pending");
    await eventually(async () =>
      expect(await retainedOverTls(`devicelet/v1/${trusted}/desired`)).not.toContain(MARKER),
    );
  });

  it("leaves neither the value nor the broker password in any log line or API object", async () => {
    const logs = [
      readFileSync((devicelet as RunningMqttDevicelet).logFile, "utf8"),
      ...[...agents.values()].map((a) => readFileSync(a.logFile, "utf8")),
    ].join("\n");
    expect(logs).toContain("connected to broker"); // the log is the one we think it is
    expect(logs).toContain("devicelet is running");
    const objects = [
      await kubectl(["get", "configmaps,events,pods,leases", "-A", "-o", "json"]),
      await kubectl(["get", "nodes", "-o", "json"]),
    ].join("\n");
    const nodeJson = await getJson<{ status: { conditions: { type: string; message: string }[] } }>([
      "node",
      trusted,
    ]);
    const transport = nodeJson.status.conditions.find((c) => c.type === "TransportConnected");
    // The URL is shown, without its credentials.
    expect(transport?.message).toContain(` to ${(broker as ExampleBroker).tlsUrl}`);
    for (const needle of [MARKER, MARKER_B64, URL_PASSWORD]) {
      expect(logs.includes(needle), `${needle.slice(0, 12)}… in a log`).toBe(false);
      expect(objects.includes(needle), `${needle.slice(0, 12)}… in an API object`).toBe(false);
    }
  });
});
