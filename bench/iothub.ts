/**
 * IoT Hub benchmark, through the local IoT Hub emulator (hack/iothub-emulator) with simulated
 * devices on the unmodified `azure-iot-device` SDK, on the harness control plane:
 *
 * 1. Burst, hub unthrottled: 1,000 pods over 100 devices — time until all Running, p50/p99 from
 *    bound to Running, API requests per pod, and hub operations per pod (devicelet's and the
 *    devices', counted by the emulator per operation class). What devicelet itself costs.
 * 2. Burst, hub throttled to one S1 unit's rates (quotas.ts): the same, as a real one-unit S1
 *    hub would let it go, with the 429s counted.
 * 3. The same at S1 rates with the Event Hubs-compatible endpoint read and twin change and
 *    connection state events routed to it: what the event feed saves in twin reads and time.
 *    (BENCH_BURST=0 leaves out 1–3.)
 * 4. Reconnect storm at S1 rates (BENCH_STORM=0 leaves it out): STORM_DEVICES devices, each with
 *    one pod, go offline; each pod is replaced while they are away; all reconnect at once (the
 *    hub refuses connects over 100 a second, and the SDK tries again). Time until every device
 *    applied its change and every new pod is Running, applies per device, and the hub operations
 *    spent from the reconnect on, devicelet's and the devices'.
 *
 * Sizes can be lowered for a quick look: BENCH_DEVICES, BENCH_PODS, BENCH_STORM_DEVICES.
 */
import { randomBytes } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import pino from "pino";
import {
  startIotHubEmulator,
  type IotHubEmulator,
  type ThrottleRates,
} from "../hack/iothub-emulator/index.ts";
import { hubThrottles } from "../providers/iothub/quotas.ts";
import { fleetSpec, startSimulator, type Simulator } from "../src/device/simulator.ts";
import { decodeTwinDocument } from "../src/protocol/iothub-twin.ts";
import {
  boundPodsOfVersion,
  burstDeployment,
  controlPlane,
  kubectl,
  measureBurst,
  measureStorm,
  spawnDevicelet,
  testenvDir,
  waitForNodes,
} from "./support.ts";

const DEVICES = Number(process.env.BENCH_DEVICES ?? 100);
const PODS = Number(process.env.BENCH_PODS ?? 1000);
const STORM_DEVICES = Number(process.env.BENCH_STORM_DEVICES ?? 1000);
const APP_START_MS = 50;
/** The agent's default heartbeat. */
const HEARTBEAT_SECONDS = 60;

/** One S1 unit's throttles in the emulator's operation classes. */
export function s1Rates(): ThrottleRates {
  const s1 = hubThrottles("S1", 1);
  return {
    query: s1.queriesPerMinute / 60,
    twinRead: s1.twinReadsPerSecond,
    twinUpdate: s1.twinUpdatesPerSecond,
    methods: s1.methodsPerSecond,
    deviceConnect: 100,
    deviceToCloud: 100,
    registry: 100 / 60,
  };
}

/**
 * devicelet's config for a bench against `emulator`, with the provider's defaults. With `events`,
 * it also reads the emulator's Event Hubs-compatible endpoint (start the emulator with the twin
 * change and connection state routes for twin changes to come that way).
 */
export function deviceletConfig(id: string, emulator: IotHubEmulator, dir: string, events = false) {
  const secret = path.join(dir, "connection-string");
  const caFile = path.join(dir, "hub-ca.pem");
  writeFileSync(secret, emulator.serviceConnectionString, { mode: 0o600 });
  writeFileSync(caFile, emulator.ca);
  const feed = {
    connectionString: emulator.eventHubsConnectionString,
    customEndpointAddress: emulator.eventHubsWebSocketEndpointAddress,
    caFile,
  };
  return {
    kubeconfig: path.join(testenvDir, "devicelet.kubeconfig"),
    nodes: { extraLabels: { "devicelet.dev/bench": id } },
    api: { qps: 400, burst: 800 },
    log: { level: process.env.BENCH_LOG_LEVEL ?? "warn" },
    provider: {
      type: "iothub",
      // The defaults: a one-unit S1 hub's share, sweeps at most every 15 s, watches for 30 s.
      config: {
        hub: { connectionStringFile: secret, endpoint: emulator.serviceUrl, caFile },
        devices: { allow: [`${id}-*`] },
        ...(events ? { events: feed } : {}),
      },
    },
  };
}

/** Hub operations since `before`, per class, and their sum per pod. */
export function operationsSince(
  emulator: IotHubEmulator,
  before: Readonly<Record<string, number>>,
  pods: number,
) {
  const now = emulator.hub.operations();
  const byClass = Object.fromEntries(
    Object.entries(now).map(([k, v]) => [k, v - (before[k] ?? 0)]),
  ) as Record<string, number>;
  const total = Object.values(byClass).reduce((a, b) => a + b, 0);
  return { byClass, perPod: Math.round((total / pods) * 100) / 100 };
}

/** Routes that bring twin changes and connection states to the Event Hubs-compatible endpoint. */
export const EVENT_ROUTES = { twinChangeEvents: true, deviceConnectionStateEvents: true };

async function burst(id: string, throttle: ThrottleRates | undefined, events = false) {
  const emulator = await startIotHubEmulator({
    host: "127.0.0.1",
    ...(events ? { routes: EVENT_ROUTES } : {}),
  });
  const dir = mkdtempSync(path.join(os.tmpdir(), `bench-iothub-${id}-`));
  const { child } = spawnDevicelet(deviceletConfig(id, emulator, dir, events));
  let sim: Simulator | undefined;
  try {
    sim = await startSimulator({
      iothub: {
        connectionString: (d) => emulator.addDevice(d).connectionString,
        ca: emulator.ca,
        heartbeatSeconds: HEARTBEAT_SECONDS,
      },
      devices: fleetSpec({
        gateways: DEVICES,
        childrenPerGateway: 0,
        mcus: 0,
        prefix: id,
        podsPerGateway: Math.ceil((PODS / DEVICES) * 2),
      }),
      appStartMs: APP_START_MS,
      logger: pino({ level: "warn" }),
    });
    await waitForNodes(`devicelet.dev/bench=${id}`, DEVICES);
    if (throttle) emulator.hub.setThrottle(throttle);
    const before = emulator.hub.operations();
    const throttledBefore = emulator.hub.throttled();
    const ns = `${id}-burst`;
    const result = await measureBurst({
      username: "devicelet",
      namespace: ns,
      pods: PODS,
      manifest: burstDeployment({
        namespace: ns,
        replicas: PODS,
        nodeSelector: { "devicelet.dev/bench": id },
        tolerationKey: "virtual-kubelet.io/provider",
      }),
    });
    const ops = operationsSince(emulator, before, PODS);
    const throttled = emulator.hub.throttled() - throttledBefore;
    kubectl(["delete", "namespace", ns, "--wait=false", "--ignore-not-found"]);
    return { ...result, hubOperationsPerPod: ops.perPod, hubOperations: ops.byClass, throttled };
  } finally {
    await sim?.stop();
    child.kill("SIGTERM");
    await emulator.close();
  }
}

async function storm(id: string) {
  const emulator = await startIotHubEmulator({ host: "127.0.0.1" });
  const dir = mkdtempSync(path.join(os.tmpdir(), `bench-iothub-${id}-`));
  const { child } = spawnDevicelet(deviceletConfig(id, emulator, dir));
  const devices = fleetSpec({ gateways: 0, childrenPerGateway: 0, mcus: STORM_DEVICES, prefix: id });
  let sim: Simulator | undefined;
  const ns = `${id}-storm`;
  try {
    sim = await startSimulator({
      iothub: {
        connectionString: (d) => emulator.addDevice(d).connectionString,
        ca: emulator.ca,
        heartbeatSeconds: HEARTBEAT_SECONDS,
      },
      devices,
      appStartMs: APP_START_MS,
      logger: pino({ level: "warn" }),
      startTimeoutMs: 10 * 60_000,
    });
    await waitForNodes(`devicelet.dev/bench=${id}`, STORM_DEVICES);
    emulator.hub.setThrottle(s1Rates());
    let opsBefore: Record<string, number> = {};
    let throttledBefore = 0;
    const result = await measureStorm({
      namespace: ns,
      sim,
      // The twins hold the queued changes: every device's document carries its new pod.
      queued: async () =>
        (await boundPodsOfVersion(ns, "2")) >= STORM_DEVICES &&
        devices.every((d) => {
          const text = decodeTwinDocument(
            (emulator.hub.twin(d.id) as { properties: { desired: Record<string, unknown> } }).properties
              .desired["devicelet"],
          );
          return text !== undefined && text.includes('"CONFIG_VERSION":"2"');
        }),
      reconnecting: () => {
        opsBefore = emulator.hub.operations();
        throttledBefore = emulator.hub.throttled();
      },
    });
    const ops = operationsSince(emulator, opsBefore, STORM_DEVICES);
    return { ...result, hubOperations: ops.byClass, throttled: emulator.hub.throttled() - throttledBefore };
  } finally {
    await sim?.stop();
    child.kill("SIGTERM");
    await emulator.close();
    kubectl(["delete", "namespace", ns, "--wait=false", "--ignore-not-found"]);
  }
}

export async function benchIotHub(): Promise<void> {
  const stop = await controlPlane();
  const id = `bh-${randomBytes(3).toString("hex")}`;
  try {
    const results: Record<string, unknown> = { date: new Date().toISOString() };
    if (process.env.BENCH_BURST !== "0") {
      const runs = {
        unthrottled: await burst(`${id}f`, undefined),
        s1: await burst(`${id}t`, s1Rates()),
        s1Events: await burst(`${id}e`, s1Rates(), true),
      };
      console.log(
        `\nburst: ${PODS} pods over ${DEVICES} simulated IoT Hub devices through the emulator (app start ${APP_START_MS} ms)`,
      );
      const row = (
        {
          apiRequestsByVerb: _v,
          apiRequestsByRequest: _r,
          slowest: _s,
          startedAt: _a,
          hubOperations,
          ...r
        }: (typeof runs)["s1"],
        hub: string,
      ) => ({
        hub,
        ...r,
        hubOperations: JSON.stringify(hubOperations),
      });
      console.table([
        row(runs.unthrottled, "unthrottled, polling"),
        row(runs.s1, "one S1 unit, polling"),
        row(runs.s1Events, "one S1 unit, events"),
      ]);
      results["burst"] = runs;
    }
    if (process.env.BENCH_STORM !== "0") {
      const stormResult = await storm(`${id}s`);
      console.log(`\nreconnect storm at one S1 unit's rates: ${STORM_DEVICES} devices with a queued change`);
      console.table([
        {
          ...stormResult,
          changesPerDevice: JSON.stringify(stormResult.changesPerDevice),
          documentsPerDevice: JSON.stringify(stormResult.documentsPerDevice),
          hubOperations: JSON.stringify(stormResult.hubOperations),
        },
      ]);
      results["storm"] = stormResult;
    }
    writeFileSync(path.join(testenvDir, "bench-iothub.json"), JSON.stringify(results, null, 2));
  } finally {
    await stop();
  }
}
