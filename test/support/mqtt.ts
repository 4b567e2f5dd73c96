/**
 * Test support for the MQTT provider: the real `devicelet run` CLI as a child process configured
 * with `provider.type: mqtt` against a harness Mosquitto, plus helpers to look at what the broker
 * holds (retained messages) and at the provider's counters (the metrics lines it logs).
 *
 *   const broker = await startBroker("mq1");
 *   const d = await startMqttDevicelet({ id, brokerUrl: broker.url, namespace: ns });
 *   const sim = await startSimulator({ brokerUrl: broker.url, devices: [...] });
 *   await retained(broker.url, "devicelet/v1/dev-1/desired");   // Buffer | undefined
 *   d.lastMetrics();                                             // from the log
 *   await d.kill(); await d.restart();
 */
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import mqtt, { type IClientOptions } from "mqtt";
import { ensureMosquitto, startMosquitto, type Broker } from "../../hack/testenv/mosquitto.ts";
import { ensurePki } from "../../src/testing/controlplane/pki.ts";
import { freePort, startDaemon, stopDaemon, waitFor } from "../../src/testing/controlplane/process.ts";
import type { MqttMetricsSnapshot } from "../../providers/mqtt/index.ts";
import type { DesiredDocument } from "../../src/protocol/types.ts";
import { expect } from "vitest";
import { eventually } from "./eventually.ts";
import { getJson } from "./kubectl.ts";
import { runDevicelet, type DeviceletProcess } from "./devicelet.ts";
import { pod } from "./workloads.ts";

/**
 * Runs every clean-up step even when some fail (or when a failed `beforeAll` left things unset),
 * then throws the first error: a broken start never leaves brokers or devicelets running.
 */
export async function stopAll(...steps: (() => Promise<unknown>)[]): Promise<void> {
  const errors: unknown[] = [];
  for (const step of steps) {
    try {
      await step();
    } catch (err) {
      errors.push(err);
    }
  }
  if (errors.length > 0) throw errors[0];
}

/** A Mosquitto of this test file's own, persistence on, in a fresh temporary folder. */
export const startBroker = (name: string): Promise<Broker> =>
  startMosquitto({ dir: mkdtempSync(path.join(os.tmpdir(), `devicelet-mosquitto-${name}-`)) });

export interface MutualTlsBroker {
  /** mqtts:// listener that requires a client certificate signed by the CA (for devicelet). */
  readonly tlsUrl: string;
  /** Plain listener (for the simulated devices, whose simulator takes no client certificate). */
  readonly url: string;
  readonly caFile: string;
  readonly client: { readonly cert: string; readonly key: string };
  stop(): Promise<void>;
}

/** A Mosquitto whose TLS listener demands mutual TLS, next to a plain one. */
export async function startMutualTlsBroker(name: string): Promise<MutualTlsBroker> {
  const dir = mkdtempSync(path.join(os.tmpdir(), `devicelet-mtls-${name}-`));
  mkdirSync(path.join(dir, "data"));
  const pki = ensurePki(path.join(dir, "pki"), [{ stem: "devicelet", commonName: "devicelet" }]);
  const [port, tlsPort] = [await freePort(), await freePort()];
  const conf = path.join(dir, "mosquitto.conf");
  writeFileSync(
    conf,
    [
      ...(process.getuid?.() === 0 ? ["user root"] : []),
      "per_listener_settings false",
      "allow_anonymous true",
      "log_dest stdout",
      `listener ${port} 127.0.0.1`,
      `listener ${tlsPort} 127.0.0.1`,
      `cafile ${pki.caCert}`,
      `certfile ${pki.cert("broker").cert}`,
      `keyfile ${pki.cert("broker").key}`,
      "require_certificate true",
      "",
    ].join("\n"),
  );
  const logFile = path.join(dir, "mosquitto.log");
  const daemon = startDaemon("mosquitto", ensureMosquitto(), ["-c", conf], logFile);
  const canConnect = (p: number) =>
    new Promise<boolean>((resolve) => {
      const socket = net.connect({ port: p, host: "127.0.0.1" });
      socket.once("connect", () => {
        socket.destroy();
        resolve(true);
      });
      socket.once("error", () => resolve(false));
    });
  await waitFor(`mosquitto on ${port}`, () => canConnect(port), 15_000, logFile);
  await waitFor(`mosquitto TLS on ${tlsPort}`, () => canConnect(tlsPort), 15_000, logFile);
  return {
    tlsUrl: `mqtts://127.0.0.1:${tlsPort}`,
    url: `mqtt://127.0.0.1:${port}`,
    caFile: pki.caCert,
    client: pki.cert("devicelet"),
    stop: () => stopDaemon(daemon),
  };
}

export interface MqttDeviceletOptions {
  /** Unique per test file: the node label `devicelet.dev/test=<id>` and the log folder. */
  readonly id: string;
  readonly brokerUrl: string;
  /** Namespace of devicelet's state ConfigMaps (the test's namespace, so they go with it). */
  readonly namespace: string;
  /** Merged over the provider config written here (broker url, allow `<id>-*`, fast metrics). */
  readonly provider?: Record<string, unknown>;
  readonly core?: Record<string, unknown>;
  /** Nodes expected to register before start resolves (default: none awaited). */
  readonly expectNodes?: number;
  /** Wait for "devicelet is running" (default true); false for a standby replica, which never logs it. */
  readonly waitForRunning?: boolean;
  /** Node.js flags for the devicelet process. */
  readonly nodeFlags?: readonly string[];
}

export interface RunningMqttDevicelet extends DeviceletProcess {
  /** The counters of the last `mqtt provider metrics` / `stopped` line, if any. */
  lastMetrics(): MqttMetricsSnapshot | undefined;
}

export async function startMqttDevicelet(options: MqttDeviceletOptions): Promise<RunningMqttDevicelet> {
  const process_ = await runDevicelet({
    id: options.id,
    expectNodes: options.expectNodes,
    waitForRunning: options.waitForRunning ?? true,
    ...(options.nodeFlags ? { nodeFlags: options.nodeFlags } : {}),
    config: () => ({
      state: { namespace: options.namespace },
      pods: { statusDebounceMs: 50 },
      ...options.core,
      provider: {
        type: "mqtt",
        config: {
          broker: {
            url: options.brokerUrl,
            clientId: `devicelet-${options.id}`,
            reconnect: { minDelayMs: 100, maxDelayMs: 2000 },
          },
          devices: { allow: [`${options.id}-*`] },
          metricsLogIntervalSeconds: 1,
          ...options.provider,
        },
      },
    }),
  });
  return {
    ...process_,
    lastMetrics: () =>
      process_
        .logLines()
        .filter((l) => l.metrics !== undefined)
        .map((l) => l.metrics as MqttMetricsSnapshot)
        .at(-1),
  };
}

/**
 * The retained message on `topic` (undefined when there is none), read with a fresh clean
 * session: subscribe, then wait for a marker published after the SUBACK, as the provider does.
 */
export async function retained(
  brokerUrl: string,
  topic: string,
  options: IClientOptions = {},
): Promise<Buffer | undefined> {
  const client = await mqtt.connectAsync(brokerUrl, { ...options, clean: true, reconnectPeriod: 0 });
  try {
    // Under the protocol root, so a broker whose ACL confines clients to it allows the marker too.
    const marker = `devicelet/v1/_test/${randomBytes(6).toString("hex")}`;
    let found: Buffer | undefined;
    const done = new Promise<void>((resolve) => {
      client.on("message", (t, payload, packet) => {
        if (t === topic && packet.retain && payload.length > 0) found = payload;
        if (t === marker) resolve();
      });
    });
    await client.subscribeAsync([topic, marker], { qos: 1 });
    await client.publishAsync(marker, "x", { qos: 1 });
    await done;
    return found;
  } finally {
    await client.endAsync();
  }
}

/** The retained desired document of a device, parsed (undefined when there is none). */
export async function retainedDesired(
  brokerUrl: string,
  deviceId: string,
): Promise<DesiredDocument | undefined> {
  const payload = await retained(brokerUrl, `devicelet/v1/${deviceId}/desired`);
  return payload === undefined ? undefined : (JSON.parse(payload.toString("utf8")) as DesiredDocument);
}

/** Events of a namespace (core/v1), as kubectl returns them. */
export interface EventJson {
  reason: string;
  type: string;
  message: string;
  count?: number;
  involvedObject: { kind: string; name: string; uid?: string };
}

export const eventsOf = async (namespace: string) =>
  (await getJson<{ items: EventJson[] }>(["events", "-n", namespace])).items;

/** Waits until exactly `count` nodes carry `selector` (each simulated device became one). */
export async function expectNodeCount(selector: string, count: number): Promise<void> {
  await eventually(async () =>
    expect((await getJson<{ items: unknown[] }>(["nodes", "-l", selector])).items).toHaveLength(count),
  );
}

/** A one-container pod pinned to `node` (a device id is its node name here). */
export const barePod = (o: {
  namespace: string;
  testId: string;
  name: string;
  node: string;
  graceSeconds?: number;
}) =>
  pod({
    namespace: o.namespace,
    name: o.name,
    testId: o.testId,
    node: o.node,
    spec: `${o.graceSeconds === undefined ? "" : `  terminationGracePeriodSeconds: ${o.graceSeconds}\n`}  containers:\n    - { name: app, image: example/app:1 }`,
  });

/** The DeviceConnected condition status of a node. */
export const deviceConnectedOf = async (node: string) =>
  (
    await getJson<{ status: { conditions: { type: string; status: string }[] } }>(["node", node])
  ).status.conditions.find((c) => c.type === "DeviceConnected")?.status;
