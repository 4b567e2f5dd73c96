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
 * For the burst it also prints where the time went, from devicelet's own histograms
 * (`devicelet_pod_start_stage_seconds` by stage, `devicelet_desired_issue_seconds`, delivery and
 * apply) scraped at the end, the API requests and writes per pod by request, and the CPU seconds
 * each process used during the burst (devicelet, Mosquitto, the control plane, and this process,
 * which runs the simulated devices and the measuring watcher).
 *
 * Sizes can be lowered for a quick look: BENCH_GATEWAYS, BENCH_PODS, BENCH_STORM_DEVICES.
 * `BENCH_PARTS=storm` (or `burst`) runs one part only; `BENCH_STORM_DEVICES=5000` the larger storm.
 * `BENCH_DEVICELET_LOG=info` raises devicelet's log level (warn by default; the log stays in the
 * `devicelet-bench-*` temporary folder).
 */
import { mkdtempSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { randomBytes } from "node:crypto";
import pino from "pino";
import { startMosquitto } from "../hack/testenv/mosquitto.ts";
import { freePort } from "../src/testing/controlplane/process.ts";
import { parsePrometheus, sampleSum } from "../test/support/prometheus.ts";
import { histograms, since, summarize } from "./prometheus.ts";
import { cpuSeconds } from "./usage.ts";
import { fleetSpec, startSimulator, type Simulator } from "../src/device/simulator.ts";
import {
  boundPodsOfVersion,
  burstDeployment,
  controlPlane,
  controlPlanePids,
  kubectl,
  kubectlAsync,
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
/**
 * Pods of a warm-up burst run and deleted before the measured one (BENCH_BURST_WARMUP; 0: none,
 * the measured burst is the first after every process started).
 */
const WARMUP_PODS = Number(process.env.BENCH_BURST_WARMUP ?? 0);
const PARTS = new Set((process.env.BENCH_PARTS ?? "burst,storm").split(",").map((p) => p.trim()));

/** The processes whose CPU the burst reports, by name. */
function processes(o: { devicelet: number; mosquitto: number }): Record<string, number> {
  return { devicelet: o.devicelet, mosquitto: o.mosquitto, ...controlPlanePids() };
}

const cpuOf = (pids: Record<string, number>): Record<string, number> => ({
  ...Object.fromEntries(Object.entries(pids).map(([name, pid]) => [name, cpuSeconds(pid)])),
  "bench (simulator, watcher)": (process.cpuUsage().user + process.cpuUsage().system) / 1e6,
});

/** Where a pod start's time went, from devicelet's own histograms. */
/** The stages of the pod starts between two scrapes of devicelet's metrics (`before` may be ""). */
function breakdown(metricsText: string, before: string) {
  const delta = (name: string, label?: string) =>
    since(histograms(metricsText, name, label), histograms(before, name, label));
  const stages = delta("devicelet_pod_start_stage_seconds", "stage");
  const one = (name: string) => delta(name).get("");
  return [
    { part: "watch: bound → seen by devicelet's watch", ...summarize(stages.get("watch")) },
    { part: "queue: seen bound → handed to the provider", ...summarize(stages.get("queue")) },
    { part: "provider: createPod call", ...summarize(stages.get("provider")) },
    { part: "device: handed to provider → Running pushed", ...summarize(stages.get("device")) },
    { part: "  of which: change → document issued", ...summarize(one("devicelet_desired_issue_seconds")) },
    {
      part: "  of which: issued → device acked receipt",
      ...summarize(one("devicelet_desired_delivery_seconds")),
    },
    { part: "  of which: issued → device applied", ...summarize(one("devicelet_desired_apply_seconds")) },
    { part: "status: Running pushed (and createPod done) → written", ...summarize(stages.get("status")) },
    { part: "whole: bound → Running written (devicelet)", ...summarize(one("devicelet_pod_start_seconds")) },
  ];
}

function deviceletConfig(id: string, brokerUrl: string, devices: number, metricsPort = 0) {
  // Each node renews its Lease every 10 s: the heartbeat lane needs a tenth of the fleet a second,
  // with room for node status (the default, 200 a second, is for 1,000 nodes).
  const heartbeatQps = Math.max(200, Math.ceil(devices / 5));
  return {
    kubeconfig: path.join(testenvDir, "devicelet.kubeconfig"),
    metrics: { port: metricsPort, bindAddress: "127.0.0.1" },
    nodes: { extraLabels: { "devicelet.dev/bench": id } },
    // A thousand nodes renew a hundred leases a second; give the rest room.
    api: { qps: 400, burst: 800, heartbeatQps, heartbeatBurst: 2 * heartbeatQps },
    log: { level: process.env.BENCH_DEVICELET_LOG ?? "warn" },
    provider: {
      type: "mqtt",
      config: { broker: { url: brokerUrl, clientId: `devicelet-${id}` }, devices: { allow: [`${id}-*`] } },
    },
  };
}

async function burst(id: string, brokerUrl: string, mosquittoPid: number) {
  const metricsPort = await freePort();
  const { child } = spawnDevicelet(deviceletConfig(id, brokerUrl, GATEWAYS, metricsPort));
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
    const scrape = async () => (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    if (WARMUP_PODS > 0) {
      // Every process on the pods' path runs its code for the first time in the first burst after
      // it starts; a warm-up burst, deleted before the measured one, tells that apart.
      const warm = `${id}-warm`;
      await measureBurst({
        username: "devicelet",
        namespace: warm,
        pods: WARMUP_PODS,
        manifest: burstDeployment({
          namespace: warm,
          replicas: WARMUP_PODS,
          nodeSelector: { "devicelet.dev/bench": id },
          tolerationKey: "virtual-kubelet.io/provider",
        }),
      });
      await kubectlAsync(["delete", "namespace", warm, "--wait=true", "--timeout=5m"]);
    }
    // Also starts devicelet's event-loop delay sample afresh (each scrape resets it).
    const metricsBefore = await scrape();
    const podWatchersEnded = async () =>
      sampleSum(
        parsePrometheus(await kubectlAsync(["get", "--raw", "/metrics"])),
        "apiserver_terminated_watchers_total",
        {
          resource: "pods",
        },
      );
    const endedBefore = await podWatchersEnded();
    const ns = `${id}-burst`;
    const pids = processes({ devicelet: child.pid ?? 0, mosquitto: mosquittoPid });
    const cpuBefore = cpuOf(pids);
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
    const cpuAfter = cpuOf(pids);
    const cpu = Object.fromEntries(
      Object.entries(cpuAfter).map(([name, s]) => [name, Math.round((s - (cpuBefore[name] ?? 0)) * 10) / 10]),
    );
    const metricsText = await scrape();
    const podWatchesEnded = (await podWatchersEnded()) - endedBefore;
    const samples = parsePrometheus(metricsText);
    const lag = (what: string) =>
      Math.round(sampleSum(samples, `devicelet_nodejs_eventloop_lag_${what}_seconds`) * 1000);
    const eventLoopDelayMs = { p50: lag("p50"), p99: lag("p99"), max: lag("max") };
    return {
      result,
      stages: breakdown(metricsText, metricsBefore),
      cpu,
      eventLoopDelayMs,
      podWatchesEnded,
    };
  } finally {
    await sim.stop();
    child.kill("SIGTERM");
    kubectl(["delete", "namespace", `${id}-burst`, "--wait=false", "--ignore-not-found"]);
    // devicelet leaves its nodes when it stops (they go NotReady): the bench removes them.
    kubectl(["delete", "nodes", "-l", `devicelet.dev/bench=${id}`, "--wait=false"]);
  }
}

async function storm(id: string, brokerUrl: string) {
  const metricsPort = await freePort();
  const { child, logFile } = spawnDevicelet(deviceletConfig(id, brokerUrl, STORM_DEVICES, metricsPort));
  // For a look while it runs (a storm at 5,000 devices takes a quarter of an hour).
  console.log(`storm: devicelet metrics on http://127.0.0.1:${metricsPort}/metrics, log in ${logFile}`);
  const devices = fleetSpec({ gateways: 0, childrenPerGateway: 0, mcus: STORM_DEVICES, prefix: id });
  let sim: Simulator | undefined;
  const ns = `${id}-storm`;
  try {
    // From the first device connecting to the last node registered.
    const registering = performance.now();
    sim = await startSimulator({
      brokerUrl,
      devices,
      appStartMs: APP_START_MS,
      logger: pino({ level: "warn" }),
    });
    // About 20 nodes a second register through the broker at 5,000 devices here.
    await waitForNodes(`devicelet.dev/bench=${id}`, STORM_DEVICES, Math.max(300_000, STORM_DEVICES * 150));
    const registeredSeconds = (performance.now() - registering) / 1000;
    console.log(
      `storm: ${STORM_DEVICES} devices connected and their nodes registered in ${registeredSeconds.toFixed(1)} s`,
    );
    return await measureStorm({
      namespace: ns,
      username: "devicelet",
      sim,
      // Every device now has a queued change: its old pod tombstoned and a new pod bound to it.
      queued: async () => (await boundPodsOfVersion(ns, "2")) >= STORM_DEVICES,
      // Let devicelet publish the queued documents.
      reconnecting: () => new Promise((r) => setTimeout(r, 3_000)),
    });
  } finally {
    await sim?.stop();
    child.kill("SIGTERM");
    kubectl(["delete", "namespace", ns, "--wait=false", "--ignore-not-found"]);
    kubectl(["delete", "nodes", "-l", `devicelet.dev/bench=${id}`, "--wait=false"]);
  }
}

export async function benchMqtt(): Promise<void> {
  const stop = await controlPlane();
  const broker = await startMosquitto({ dir: mkdtempSync(path.join(os.tmpdir(), "bench-mosquitto-")) });
  const id = `bm-${randomBytes(3).toString("hex")}`;
  try {
    const record: Record<string, unknown> = { date: new Date().toISOString() };
    if (PARTS.has("burst")) {
      const {
        result: burstResult,
        stages,
        cpu,
        eventLoopDelayMs,
        podWatchesEnded,
      } = await burst(`${id}b`, broker.url, broker.pid());
      console.log(
        `\nburst: ${PODS} pods over ${GATEWAYS} simulated gateways through Mosquitto (app start ${APP_START_MS} ms)`,
      );
      console.table(
        [burstResult].map(
          ({ apiRequestsByVerb: _v, apiRequestsByRequest: _r, slowest: _s, startedAt: _a, ...r }) => r,
        ),
      );
      console.log("API requests by request:", burstResult.apiRequestsByRequest);
      console.log(
        `the slowest 1 % of starts (bound at, seconds into the burst from ${burstResult.startedAt} → ms to Running):`,
        burstResult.slowest.map((s) => `${s.pod} ${s.boundAtSeconds}s→${s.ms}`).join(", "),
      );
      console.log(
        "\nwhere a pod start went, from devicelet's own histograms (p50/p99 estimated from buckets):",
      );
      console.table(stages);
      console.log("CPU seconds during the burst, by process (2 cores):", cpu);
      console.log("devicelet's event-loop delay during the burst (ms):", eventLoopDelayMs);
      console.log(
        "pod watches the API server ended as too slow during the burst (any client's):",
        podWatchesEnded,
      );
      Object.assign(record, { burst: burstResult, stages, cpu, eventLoopDelayMs, podWatchesEnded });
    }
    if (PARTS.has("storm")) {
      const stormResult = await storm(`${id}s`, broker.url);
      console.log(`\nreconnect storm: ${STORM_DEVICES} devices with a queued change reconnect at once`);
      const { apiRequestsByRequest: stormRequests, ...stormRow } = stormResult;
      console.table([
        {
          ...stormRow,
          changesPerDevice: JSON.stringify(stormResult.changesPerDevice),
          documentsPerDevice: JSON.stringify(stormResult.documentsPerDevice),
        },
      ]);
      console.log("API requests by request from the reconnect until all ran:", stormRequests);
      record.storm = stormResult;
    }
    writeFileSync(path.join(testenvDir, "bench-mqtt.json"), JSON.stringify(record, null, 2));
  } finally {
    await broker.stop();
    await stop();
  }
}
