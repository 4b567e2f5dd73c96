/**
 * `npm start`: the one-command demo on the embedded default. Starts (or reuses) the local control
 * plane, an embedded MQTT broker, devicelet with the MQTT provider, and a simulated fleet — five
 * gateways with room for twelve pods each and their child microcontrollers, plus standalone
 * microcontrollers — then applies the Deployments in examples/demo/, shows progress until they are
 * Running, and prints what to try next. Ctrl-C (or closing its terminal) stops everything it
 * started, by process id.
 *
 * `npm start -- --transport iothub` runs the same demo over Azure IoT Hub instead: the local IoT Hub
 * emulator (hack/iothub-emulator), devicelet with the IoT Hub provider, and simulated devices on
 * the `azure-iot-device` SDK — five gateways and four standalone microcontrollers, since IoT Hub
 * carries no bridged children (docs/iothub.md).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, openSync, readdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import pino from "pino";
import { stringify } from "yaml";
import { startIotHubEmulator } from "./iothub-emulator/index.ts";
import { startEmbeddedBroker } from "../src/broker/embedded.ts";
import { fleetSpec, startSimulator } from "../src/device/simulator.ts";
import { down, running, up } from "../src/testing/controlplane/controlplane.ts";
import { kubectlRunner } from "../src/testing/controlplane/kubectl.ts";

const repoRoot = path.resolve(import.meta.dirname, "..");
const dir = process.env.DEVICELET_TESTENV_DIR ?? path.join(repoRoot, ".testenv");
const demoDir = path.join(dir, "demo");
const namespace = "devicelet-demo";
const say = (message: string) => console.log(`\x1b[1m[demo]\x1b[0m ${message}`);

const transportArg = process.argv.indexOf("--transport");
const transport = transportArg >= 0 ? process.argv[transportArg + 1] : "mqtt";
if (transport !== "mqtt" && transport !== "iothub") {
  console.error(`usage: npm start [-- --transport mqtt|iothub] (not ${String(transport)})`);
  process.exit(2);
}
const overIotHub = transport === "iothub";

const stack: (() => Promise<void>)[] = [];
let stopping = false;
async function stopAll(code: number) {
  if (stopping) return;
  stopping = true;
  say("stopping everything the demo started…");
  for (const stop of stack.reverse()) {
    try {
      await stop();
    } catch (err) {
      console.error(err);
    }
  }
  process.exit(code);
}
process.once("SIGINT", () => void stopAll(0));
process.once("SIGTERM", () => void stopAll(0));
// The terminal closed: its hang-up would otherwise end this process with nothing stopped, and the
// control plane's etcd and API server, started detached, would run on. Writes to the closed
// terminal then fail (EIO); the clean-up goes on without them.
process.once("SIGHUP", () => void stopAll(0));
process.stdout.on("error", () => undefined);
process.stderr.on("error", () => undefined);

try {
  mkdirSync(demoDir, { recursive: true });
  const reused = await running(dir);
  say(
    reused
      ? "reusing the local control plane"
      : "starting the local control plane (the first run on a machine also builds it: about six minutes)",
  );
  const state = await up({ dir });
  if (!reused) stack.push(() => down({ dir }).then(() => undefined));
  const kubectl = kubectlRunner(dir, state.binDir);

  const prefix = "demo";
  const devices = overIotHub
    ? fleetSpec({ gateways: 5, childrenPerGateway: 0, mcus: 4, prefix, podsPerGateway: 12 })
    : fleetSpec({ gateways: 5, childrenPerGateway: 2, mcus: 2, prefix, podsPerGateway: 12 });
  const { provider, fleet } = overIotHub ? await iothubTransport() : await mqttTransport();
  // The API server will not proxy to a loopback kubelet address (400 "address not allowed"), so the
  // kubelet API is served on this machine's own address when it has one; it answers only callers
  // that authenticate (the API server's client certificate, or a token), over TLS.
  const kubeletAddress = machineAddress();
  const configFile = path.join(demoDir, "devicelet.yaml");
  writeFileSync(
    configFile,
    stringify({
      kubeconfig: path.join(dir, "devicelet.kubeconfig"),
      log: { level: "info" },
      nodes: { extraLabels: { "devicelet.dev/demo": "true" } },
      // 8081 may be taken on a workstation: any free loopback port (its URL is in the log).
      health: { port: 0, bindAddress: "127.0.0.1" },
      metrics: { port: 0, bindAddress: "127.0.0.1" },
      // A local cluster has nobody to approve the serving certificate's CSR: devicelet approves its
      // own (the harness grants its identity the chart's approver role, kubeletApi.tls.csr.approve).
      kubelet:
        kubeletAddress === undefined
          ? { serve: false }
          : { address: kubeletAddress, tls: { source: "csr", csrApprove: true } },
      provider,
    }),
  );
  const logFile = path.join(demoDir, "devicelet.log");
  const devicelet: ChildProcess = spawn(
    process.execPath,
    [path.join(repoRoot, "bin/devicelet.js"), "run", "--config", configFile],
    {
      stdio: ["ignore", openSync(logFile, "w"), openSync(logFile, "a")],
    },
  );
  // Listened for at once: a terminal's hang-up reaches devicelet too (the whole foreground process
  // group), and it can be gone, killed by the signal (exitCode still null), before the clean-up
  // asks, so waiting for an "exit" event then would wait forever.
  const deviceletExited = new Promise((resolve) => devicelet.once("exit", resolve));
  stack.push(async () => {
    if (devicelet.exitCode === null && devicelet.signalCode === null) devicelet.kill("SIGTERM");
    await deviceletExited;
  });
  devicelet.once("exit", (code) => {
    if (!stopping) {
      console.error(`devicelet exited unexpectedly (${String(code)}); its log: ${logFile}`);
      void stopAll(1);
    }
  });
  say(`devicelet started (log: ${logFile})`);

  const simulator = await startSimulator({
    ...fleet,
    devices,
    appStartMs: 400,
    appStartJitterMs: 400,
    logger: pino({ level: "warn" }),
  });
  stack.push(() => simulator.stop());
  say(
    overIotHub
      ? `simulated fleet online: ${devices.length} IoT Hub devices (5 gateways, 4 microcontrollers)`
      : `simulated fleet online: ${devices.length} devices (5 gateways, 10 child microcontrollers, 2 standalone)`,
  );

  await waitFor("device nodes", async () => {
    const names = (await kubectl(["get", "nodes", "-l", "devicelet.dev/demo=true", "-o", "name"]))
      .trim()
      .split("\n")
      .filter(Boolean);
    process.stdout.write(`\r  device nodes registered: ${names.length}/${devices.length}   `);
    return names.length >= devices.length;
  });
  process.stdout.write("\n");

  for (const file of readdirSync(path.join(repoRoot, "examples/demo")).sort((a, b) =>
    a === "namespace.yaml" ? -1 : b === "namespace.yaml" ? 1 : a.localeCompare(b),
  )) {
    await kubectl(["apply", "-f", path.join(repoRoot, "examples/demo", file)]);
  }
  say(
    "applied examples/demo/ (namespace devicelet-demo: telemetry on gateways, firmware on microcontrollers)",
  );

  await waitFor("pods Running", async () => {
    const pods = JSON.parse(await kubectl(["get", "pods", "-n", namespace, "-o", "json"])) as {
      items: { status: { phase?: string } }[];
    };
    const runningPods = pods.items.filter((p) => p.status.phase === "Running").length;
    process.stdout.write(`\r  pods Running: ${runningPods}/${pods.items.length}   `);
    return pods.items.length >= 19 && runningPods === pods.items.length;
  });
  process.stdout.write("\n");

  say(`all Running. In another shell, try:

  source ${path.join(dir, "env")}
  kubectl get nodes -L devicelet.dev/device-class,devicelet.dev/gateway
  kubectl get pods -n ${namespace} -o wide
  kubectl describe node ${devices[0]?.id ?? "demo-gw-0"}          # DeviceConnected, capacity, lease
  kubectl -n ${namespace} scale deployment/telemetry --replicas=30
  kubectl -n ${namespace} set env deployment/sensor-firmware REPORT_EVERY_SECONDS=10
  kubectl get events -n ${namespace} --sort-by=.lastTimestamp
${
  overIotHub
    ? `
  (kubectl logs and exec are not carried over IoT Hub yet: docs/iothub.md, "Not carried yet".)`
    : kubeletAddress === undefined
      ? `
  (kubectl logs and exec need a non-loopback address for devicelet's kubelet API, and this machine
  has none; docs/kubelet-api.md shows how the tests use a network namespace instead.)`
      : `  POD=$(kubectl get pods -n ${namespace} -l app=telemetry -o jsonpath='{.items[0].metadata.name}')
  kubectl logs -n ${namespace} $POD --tail=5 --timestamps
  kubectl exec -n ${namespace} $POD -- hostname
  echo hello | kubectl exec -i -n ${namespace} $POD -- cat
  kubectl get --raw /api/v1/nodes/${devices[0]?.id ?? "demo-gw-0"}/proxy/stats/summary`
}

Ctrl-C stops the fleet, devicelet, the ${overIotHub ? "IoT Hub emulator" : "broker"}${reused ? "" : " and the control plane"}.`);
  await new Promise(() => undefined);
} catch (err) {
  console.error(err);
  await stopAll(1);
}

/** The embedded MQTT broker: the provider's config and the simulator's target. */
async function mqttTransport() {
  const broker = await startEmbeddedBroker();
  stack.push(() => broker.close());
  say(`embedded MQTT broker on ${broker.url}`);
  return {
    provider: {
      type: "mqtt",
      config: { broker: { url: broker.url, clientId: "devicelet-demo" }, devices: { allow: ["demo-*"] } },
    },
    fleet: { brokerUrl: broker.url, protocolVersion: 4 as const },
  };
}

/**
 * The local IoT Hub emulator, with one device identity per simulated device: the provider reaches
 * its service API over HTTPS (trusting the emulator's CA), the devices its MQTT endpoint.
 */
async function iothubTransport() {
  const emulator = await startIotHubEmulator({ host: "127.0.0.1" });
  stack.push(() => emulator.close());
  const caFile = path.join(demoDir, "iothub-ca.pem");
  const secretFile = path.join(demoDir, "iothub-connection-string");
  writeFileSync(caFile, emulator.ca);
  writeFileSync(secretFile, emulator.serviceConnectionString, { mode: 0o600 });
  say(
    `IoT Hub emulator: ${emulator.hostName} (service API ${emulator.serviceUrl}, devices ${emulator.mqttUrl})`,
  );
  return {
    provider: {
      type: "iothub",
      config: {
        hub: {
          connectionStringFile: secretFile,
          endpoint: emulator.serviceUrl,
          caFile,
          sweepIntervalSeconds: 5,
        },
        devices: { allow: ["demo-*"] },
      },
    },
    fleet: {
      iothub: {
        connectionString: (id: string) => emulator.addDevice(id).connectionString,
        ca: emulator.ca,
        heartbeatSeconds: 15,
      },
    },
  };
}

/** The first IPv4 address of this machine that is not loopback or link-local, if any. */
function machineAddress(): string | undefined {
  for (const list of Object.values(os.networkInterfaces())) {
    for (const a of list ?? []) {
      if (a.family === "IPv4" && !a.internal && !a.address.startsWith("169.254.")) return a.address;
    }
  }
  return undefined;
}

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs = 180_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(500);
  }
}
