/**
 * How devicelet learns of reported changes on IoT Hub, measured at fleet size: polling alone
 * (sweeps, and watches after its own writes) against the Event Hubs-compatible endpoint with twin
 * change and connection state events routed to it. The same run for each, through the local
 * emulator held to one S1 unit's rates, with FEED_DEVICES (default 1,000) simulated devices on the
 * unmodified `azure-iot-device` SDK and their default 60 s heartbeat:
 *
 * 1. Idle cost: hub operations per minute over FEED_IDLE_SECONDS (default 60) with nothing to do,
 *    devicelet's (queries, twin reads) and the devices' (heartbeats), against S1's quotas.
 * 2. Latency of a change nobody announced: FEED_CHANGES devices (default 20), one every 1.5 s, go
 *    to sleep (a reported state change made on the device alone), then wake up again. Each time,
 *    from the device's call to the node's `DeviceConnected` condition changing, as a watcher on
 *    the API server sees it.
 *
 *   hack/npm run bench -- iothub-feed       # FEED_DEVICES=200 for a quick look
 *   FEED_MODES=events hack/npm run bench -- iothub-feed    # one mode only
 */
import { randomBytes } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import pino from "pino";
import { startIotHubEmulator } from "../hack/iothub-emulator/index.ts";
import { createKubeClient, Informer, type Node } from "../src/kube/index.ts";
import { fleetSpec, startSimulator, type Simulator } from "../src/device/simulator.ts";
import { deviceletConfig, EVENT_ROUTES, operationsSince, s1Rates } from "./iothub.ts";
import { controlPlane, percentile, spawnDevicelet, testenvDir, waitForNodes, waitUntil } from "./support.ts";

const DEVICES = Number(process.env.FEED_DEVICES ?? 1000);
const IDLE_SECONDS = Number(process.env.FEED_IDLE_SECONDS ?? 60);
const CHANGES = Number(process.env.FEED_CHANGES ?? 20);
const MODES = (process.env.FEED_MODES ?? "polling,events").split(",") as Mode[];
const HEARTBEAT_SECONDS = 60;
const DEVICE_ID_LABEL = "devicelet.dev/device-id";

type Mode = "polling" | "events";

/** `DeviceConnected` of each bench node by device id, with the time each value was first seen. */
async function watchConnected(selector: string, signal: AbortSignal) {
  const kube = createKubeClient({
    kubeconfigPath: path.join(testenvDir, "kubeconfig"),
    qps: 100,
    burst: 200,
    logger: pino({ level: "silent" }),
  });
  const seen = new Map<string, { value: string; at: number }>();
  const informer = new Informer<Node>({
    client: kube,
    logger: pino({ level: "silent" }),
    path: "/api/v1/nodes",
    labelSelector: selector,
  });
  const see = (node: Node) => {
    const id = node.metadata?.labels?.[DEVICE_ID_LABEL];
    const c = node.status?.conditions?.find((x) => x.type === "DeviceConnected");
    if (id === undefined || c === undefined) return;
    const value = `${c.status}/${c.reason ?? ""}`;
    if (seen.get(id)?.value !== value) seen.set(id, { value, at: performance.now() });
  };
  informer.onAdd(see);
  informer.onUpdate(see);
  void informer.start(signal);
  await informer.ready;
  return seen;
}

async function run(id: string, mode: Mode) {
  const emulator = await startIotHubEmulator({
    host: "127.0.0.1",
    ...(mode === "events" ? { routes: EVENT_ROUTES } : {}),
  });
  const dir = mkdtempSync(path.join(os.tmpdir(), `bench-feed-${id}-`));
  const { child } = spawnDevicelet(deviceletConfig(id, emulator, dir, mode === "events"));
  const stop = new AbortController();
  let sim: Simulator | undefined;
  try {
    const specs = fleetSpec({ gateways: 0, childrenPerGateway: 0, mcus: DEVICES, prefix: id });
    sim = await startSimulator({
      iothub: {
        connectionString: (d) => emulator.addDevice(d).connectionString,
        ca: emulator.ca,
        heartbeatSeconds: HEARTBEAT_SECONDS,
      },
      devices: specs,
      appStartMs: 50,
      logger: pino({ level: "warn" }),
      startTimeoutMs: 10 * 60_000,
    });
    const selector = `devicelet.dev/bench=${id}`;
    await waitForNodes(selector, DEVICES, 10 * 60_000);
    const connected = await watchConnected(selector, stop.signal);
    await waitUntil(
      "every node DeviceConnected=True",
      () => specs.every((d) => connected.get(d.id)?.value.startsWith("True/")),
      5 * 60_000,
      500,
    );
    emulator.hub.setThrottle(s1Rates());
    // Settle: the start-up sweeps and the births' watches are over.
    await new Promise((r) => setTimeout(r, 30_000));

    const before = emulator.hub.operations();
    await new Promise((r) => setTimeout(r, IDLE_SECONDS * 1000));
    const idle = operationsSince(emulator, before, 1).byClass;
    const perMinute = Object.fromEntries(
      Object.entries(idle)
        .filter(([, v]) => v > 0)
        .map(([k, v]) => [k, Math.round((v * 60) / IDLE_SECONDS)]),
    );

    // Spread over the fleet, so sweeps meet them at every point of their cycle.
    const changing = Array.from(
      { length: CHANGES },
      (_, i) => specs[Math.floor((i * DEVICES) / CHANGES)]?.id ?? "",
    );
    const latencies = async (what: string, act: (device: string) => Promise<void>) => {
      const started = new Map<string, { at: number; was: string }>();
      for (const device of changing) {
        started.set(device, { at: performance.now(), was: connected.get(device)?.value ?? "" });
        await act(device);
        await new Promise((r) => setTimeout(r, 1_500));
      }
      await waitUntil(
        `${what} seen on every node`,
        () => changing.every((d) => connected.get(d)?.value !== started.get(d)?.was),
        5 * 60_000,
        200,
      );
      return changing.map((d) => ((connected.get(d)?.at ?? 0) - (started.get(d)?.at ?? 0)) / 1000);
    };
    const simulator = sim;
    const asleep = await latencies("sleeping", (d) =>
      simulator.device(d).sleep(new Date(Date.now() + 3_600_000)),
    );
    const awake = await latencies("awake", async (d) => {
      void simulator.device(d).goOnline();
      await Promise.resolve();
    });
    const all = [...asleep, ...awake];
    const round = (s: number) => Math.round(s * 10) / 10;
    return {
      mode,
      devices: DEVICES,
      changeSeenP50s: round(percentile(all, 50)),
      changeSeenP99s: round(percentile(all, 99)),
      changeSeenMaxS: round(Math.max(...all)),
      idleOperationsPerMinute: perMinute,
      throttled: emulator.hub.throttled(),
    };
  } finally {
    stop.abort();
    await sim?.stop();
    child.kill("SIGTERM");
    await emulator.close();
  }
}

export async function benchIotHubFeed(): Promise<void> {
  const stop = await controlPlane();
  const id = `bf-${randomBytes(3).toString("hex")}`;
  try {
    const results = [];
    for (const mode of MODES) {
      const result = await run(`${id}${mode[0]}`, mode);
      console.log(JSON.stringify(result));
      results.push(result);
    }
    console.log(
      `\nhow devicelet learns of reported changes: ${DEVICES} simulated IoT Hub devices at one S1 unit's rates, ${CHANGES * 2} device-side changes`,
    );
    console.table(
      results.map((r) => ({ ...r, idleOperationsPerMinute: JSON.stringify(r.idleOperationsPerMinute) })),
    );
    writeFileSync(
      path.join(testenvDir, "bench-iothub-feed.json"),
      JSON.stringify({ date: new Date().toISOString(), results }, null, 2),
    );
  } finally {
    await stop();
  }
}
