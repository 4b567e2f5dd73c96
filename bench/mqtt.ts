/**
 * MQTT benchmark, through Mosquitto with simulated devices on the harness control plane:
 *
 * 1. Burst: 1,000 pods over 100 simulated gateways — time until all Running, p50/p99 from bound to
 *    Running (the device reports the app running after `APP_START_MS`).
 * 2. Reconnect storm: 1,000 microcontrollers each running one pod go offline; each pod is replaced
 *    by a new one on the same device while they are away, so each device has a queued change (a
 *    tombstone and a new pod); then all reconnect at once. Reports time until every device has applied and every
 *    new pod is Running, and applies per device since the reconnect (must be exactly one).
 *
 * Sizes can be lowered for a quick look: BENCH_GATEWAYS, BENCH_PODS, BENCH_STORM_DEVICES.
 */
import { mkdtempSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { randomBytes } from "node:crypto";
import pino from "pino";
import { startMosquitto } from "../hack/testenv/mosquitto.ts";
import { fleetSpec, startSimulator, type Simulator } from "../src/device/simulator.ts";
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

const GATEWAYS = Number(process.env.BENCH_GATEWAYS ?? 100);
const PODS = Number(process.env.BENCH_PODS ?? 1000);
const STORM_DEVICES = Number(process.env.BENCH_STORM_DEVICES ?? 1000);
const APP_START_MS = 50;

function deviceletConfig(id: string, brokerUrl: string) {
  return {
    kubeconfig: path.join(testenvDir, "devicelet.kubeconfig"),
    nodes: { extraLabels: { "devicelet.dev/bench": id } },
    // A thousand nodes renew a hundred leases a second; give the rest room.
    api: { qps: 400, burst: 800 },
    log: { level: "warn" },
    provider: {
      type: "mqtt",
      config: { broker: { url: brokerUrl, clientId: `devicelet-${id}` }, devices: { allow: [`${id}-*`] } },
    },
  };
}

async function burst(id: string, brokerUrl: string) {
  const { child } = spawnDevicelet(deviceletConfig(id, brokerUrl));
  const sim = await startSimulator({
    brokerUrl,
    devices: fleetSpec({
      gateways: GATEWAYS,
      childrenPerGateway: 0,
      mcus: 0,
      prefix: id,
      podsPerGateway: Math.ceil((PODS / GATEWAYS) * 2),
    }),
    appStartMs: APP_START_MS,
    logger: pino({ level: "warn" }),
  });
  try {
    await waitForNodes(`devicelet.dev/bench=${id}`, GATEWAYS);
    const ns = `${id}-burst`;
    return await measureBurst({
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
  } finally {
    await sim.stop();
    child.kill("SIGTERM");
    kubectl(["delete", "namespace", `${id}-burst`, "--wait=false", "--ignore-not-found"]);
  }
}

async function storm(id: string, brokerUrl: string) {
  const { child } = spawnDevicelet(deviceletConfig(id, brokerUrl));
  const devices = fleetSpec({ gateways: 0, childrenPerGateway: 0, mcus: STORM_DEVICES, prefix: id });
  let sim: Simulator | undefined;
  const ns = `${id}-storm`;
  try {
    sim = await startSimulator({
      brokerUrl,
      devices,
      appStartMs: APP_START_MS,
      logger: pino({ level: "warn" }),
    });
    await waitForNodes(`devicelet.dev/bench=${id}`, STORM_DEVICES);
    return await measureStorm({
      namespace: ns,
      sim,
      // Every device now has a queued change: its old pod tombstoned and a new pod bound to it.
      queued: () => boundPodsOfVersion(ns, "2") >= STORM_DEVICES,
      // Let devicelet publish the queued documents.
      reconnecting: () => new Promise((r) => setTimeout(r, 3_000)),
    });
  } finally {
    await sim?.stop();
    child.kill("SIGTERM");
    kubectl(["delete", "namespace", ns, "--wait=false", "--ignore-not-found"]);
  }
}

export async function benchMqtt(): Promise<void> {
  const stop = await controlPlane();
  const broker = await startMosquitto({ dir: mkdtempSync(path.join(os.tmpdir(), "bench-mosquitto-")) });
  const id = `bm-${randomBytes(3).toString("hex")}`;
  try {
    const burstResult = await burst(`${id}b`, broker.url);
    console.log(
      `\nburst: ${PODS} pods over ${GATEWAYS} simulated gateways through Mosquitto (app start ${APP_START_MS} ms)`,
    );
    console.table([burstResult].map(({ apiRequestsByVerb: _v, ...r }) => r));
    const stormResult = await storm(`${id}s`, broker.url);
    console.log(`\nreconnect storm: ${STORM_DEVICES} devices with a queued change reconnect at once`);
    console.table([
      {
        ...stormResult,
        changesPerDevice: JSON.stringify(stormResult.changesPerDevice),
        documentsPerDevice: JSON.stringify(stormResult.documentsPerDevice),
      },
    ]);
    writeFileSync(
      path.join(testenvDir, "bench-mqtt.json"),
      JSON.stringify({ date: new Date().toISOString(), burst: burstResult, storm: stormResult }, null, 2),
    );
  } finally {
    await broker.stop();
    await stop();
  }
}
