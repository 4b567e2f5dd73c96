/**
 * `npm run bench -- soak [--minutes N] [--seed S] [--gateways G] [--settle SECONDS]`: the real
 * `devicelet run` (MQTT provider), a real Mosquitto and a simulated fleet of gateways on the
 * harness control plane, under a steady stream of changes, while seeded random faults kill
 * devicelet (SIGKILL), stop Mosquitto, stop the kube-apiserver and take devices offline or restart
 * them. Then everything is restored, the system is left quiet to settle, and the audit prints:
 *
 *   changes lost: 0
 *   generations applied twice: 0
 *   pods resurrected after delete: 0
 *   nodes ever NotReady: 0
 *   pods evicted: 0
 *
 * and exits non-zero when any is not 0. It kills the API server, so it uses a control plane of its
 * own: `$DEVICELET_TESTENV_DIR`, else /tmp/devicelet-soak-testenv (started here, and stopped at the
 * end, when none runs there). Every process it starts is stopped at the end, on SIGINT too.
 */
import { randomBytes } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs } from "node:util";
import pino from "pino";
import { stringify } from "yaml";
import {
  down,
  readState,
  running,
  startApiServer,
  stopApiServer,
  up,
} from "../src/testing/controlplane/controlplane.ts";
import { startMosquitto } from "../hack/testenv/mosquitto.ts";
import { fleetSpec, startSimulator } from "../src/device/simulator.ts";
import { seededRandom } from "../test/support/seeded-random.ts";
import { auditSoak, expectedFromKubernetes, type KubePodView, type SoakAudit } from "./soak-audit.ts";
import { injectFaults, type FaultTargets } from "./soak-faults.ts";
import { applyWorkloads, CONFIG_MAP, runLoad, type Fleet, type Kubectl } from "./soak-load.ts";
import { DeviceletChild, kubectlFor } from "./soak-processes.ts";
import { startRecorder, type Recorder } from "./soak-recorder.ts";

const TAINT_KEY = "virtual-kubelet.io/provider";

function options(argv: string[]) {
  const { values } = parseArgs({
    args: argv,
    options: {
      minutes: { type: "string", default: "10" },
      seed: { type: "string" },
      gateways: { type: "string", default: "20" },
      settle: { type: "string", default: "180" },
    },
  });
  const number = (name: string, value: string) => {
    const n = Number(value);
    if (!Number.isFinite(n) || n < 0) throw new Error(`--${name} must be a number ≥ 0, not ${value}`);
    return n;
  };
  return {
    minutes: number("minutes", values.minutes),
    seed: values.seed === undefined ? randomBytes(4).readUInt32BE() : number("seed", values.seed),
    gateways: Math.max(1, Math.floor(number("gateways", values.gateways))),
    settleSeconds: number("settle", values.settle),
  };
}

const log = (line: string) => {
  console.error(`[soak ${new Date().toISOString().slice(11, 19)}] ${line}`);
};

async function until(what: string, check: () => Promise<boolean>, timeoutMs: number, signal: AbortSignal) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (signal.aborted) throw new Error(`interrupted while waiting for ${what}`);
    if (await check().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(1_000);
  }
}

/** The audit over what was recorded and what Kubernetes and the devices hold now. */
async function audit(
  kubectl: Kubectl,
  fleet: Fleet,
  recorder: Recorder,
  devices: () => { device: string; running: string[] }[],
): Promise<SoakAudit> {
  const pods = JSON.parse(await kubectl(["get", "pods", "-n", fleet.namespace, "-o", "json"])) as {
    items: KubePodView[];
  };
  const configMap = JSON.parse(
    await kubectl(["get", "configmap", CONFIG_MAP, "-n", fleet.namespace, "-o", "json"]),
  ) as { data?: Record<string, string> };
  const r = recorder.records;
  return auditSoak({
    ...r,
    expected: expectedFromKubernetes(pods.items, new Map([[CONFIG_MAP, configMap.data ?? {}]])),
    finals: devices(),
  });
}

export async function benchSoak(argv: string[]): Promise<void> {
  const o = options(argv);
  const dir = path.resolve(process.env.DEVICELET_TESTENV_DIR ?? "/tmp/devicelet-soak-testenv");
  const id = `soak-${randomBytes(3).toString("hex")}`;
  const runDir = mkdtempSync(path.join(os.tmpdir(), `devicelet-${id}-`));
  const controller = new AbortController();
  const { signal } = controller;
  const interrupted = () => signal.aborted;
  const interrupt = () => {
    log("interrupted: restoring and stopping everything");
    controller.abort();
  };
  process.on("SIGINT", interrupt);
  process.on("SIGTERM", interrupt);
  const cleanups: { what: string; run: () => Promise<unknown> }[] = [];
  const onCleanup = (what: string, run: () => Promise<unknown>) => cleanups.push({ what, run });
  log(`id ${id}, seed ${o.seed}, ${o.minutes} min, ${o.gateways} gateways; logs in ${runDir}`);
  try {
    if (!(await running(dir))) {
      // Kubernetes' own node-monitor grace (50 s in 1.36), not the tests' shorter one: after an
      // API-server outage the controller-manager's informers take a while to catch up, and with a
      // shorter grace it marks nodes Unknown from its stale view although every Lease was renewed.
      await up({ dir, nodeMonitorGraceSeconds: 50 });
      onCleanup("control plane", () => down({ dir }));
    }
    const state = readState(dir);
    if (!state) throw new Error(`no control plane in ${dir}`);
    const kubectl = kubectlFor({ binDir: state.binDir, kubeconfig: path.join(dir, "kubeconfig") });
    const fleet: Fleet = {
      namespace: id,
      nodeSelector: { "devicelet.dev/soak": id },
      tolerationKey: TAINT_KEY,
    };
    const nodeSelector = `devicelet.dev/soak=${id}`;
    await kubectl(["create", "namespace", id]);
    onCleanup("namespace", () => kubectl(["delete", "namespace", id, "--wait=false", "--ignore-not-found"]));

    const broker = await startMosquitto({ dir: path.join(runDir, "mosquitto") });
    onCleanup("mosquitto", () => broker.stop());
    const configFile = path.join(runDir, "devicelet.yaml");
    writeFileSync(
      configFile,
      stringify({
        kubeconfig: path.join(dir, "devicelet.kubeconfig"),
        nodes: { extraLabels: { "devicelet.dev/soak": id }, taintKey: TAINT_KEY },
        state: { namespace: id },
        log: { level: "info" },
        // Loopback and a free port: a soak measures pods and nodes, not the operator endpoints.
        health: { port: 0, bindAddress: "127.0.0.1" },
        metrics: { port: 0, bindAddress: "127.0.0.1" },
        kubelet: { serve: false },
        provider: {
          type: "mqtt",
          config: {
            broker: { url: broker.url, clientId: `devicelet-${id}`, reconnect: { maxDelayMs: 2_000 } },
            devices: { allow: [`${id}-*`] },
          },
        },
      }),
    );
    const devicelet = new DeviceletChild({ configFile, logFile: path.join(runDir, "devicelet.log") });
    devicelet.start();
    onCleanup("nodes", () => kubectl(["delete", "nodes", "-l", nodeSelector, "--wait=false"]));
    onCleanup("devicelet", () => devicelet.stop("SIGTERM"));

    const sim = await startSimulator({
      brokerUrl: broker.url,
      devices: fleetSpec({ gateways: o.gateways, childrenPerGateway: 0, mcus: 0, prefix: id }),
      appStartMs: 50,
      appStartJitterMs: 50,
      logger: pino({ level: "error" }),
    });
    onCleanup("simulated devices", () => sim.stop());
    const recorder = await startRecorder({
      kubeconfig: path.join(dir, "kubeconfig"),
      namespace: id,
      nodeSelector,
      brokerUrl: broker.url,
      clientId: `${id}-observer`,
      sim,
    });
    onCleanup("recorder", () => recorder.stop());
    const nodesReady = async () => {
      const nodes = JSON.parse(await kubectl(["get", "nodes", "-l", nodeSelector, "-o", "json"])) as {
        items: { status?: { conditions?: { type: string; status: string }[] } }[];
      };
      const ready = nodes.items.filter((n) =>
        n.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True"),
      );
      return ready.length >= o.gateways;
    };
    await until(`${o.gateways} nodes Ready`, nodesReady, 120_000, signal);
    recorder.armReady();

    const workloads = await applyWorkloads(kubectl, fleet);
    const runningPods = async () => {
      const out = await kubectl([
        "get",
        "pods",
        "-n",
        id,
        "--field-selector=status.phase=Running",
        "-o",
        "name",
      ]);
      return out.split("\n").filter(Boolean).length;
    };
    await until(
      `${workloads.replicas()} pods Running`,
      async () => (await runningPods()) >= workloads.replicas(),
      180_000,
      signal,
    );
    log(`${workloads.replicas()} pods Running; load and faults for ${o.minutes} min`);

    const devices = () => [...sim.devices.values()];
    let brokerDown = false;
    const offline = new Set<string>();
    const targets: FaultTargets = {
      killDevicelet: () => devicelet.stop("SIGKILL"),
      startDevicelet: () => {
        devicelet.start();
        return Promise.resolve();
      },
      stopBroker: async () => {
        brokerDown = true;
        await broker.stop();
      },
      startBroker: async () => {
        await broker.restart();
        brokerDown = false;
      },
      stopApiServer: (s) => stopApiServer({ dir, signal: s }),
      startApiServer: () => startApiServer({ dir }),
      deviceIds: () => devices().map((d) => d.id),
      deviceOffline: async (d) => {
        offline.add(d);
        await sim.device(d).goOffline();
      },
      deviceOnline: async (d) => {
        await sim.device(d).goOnline();
        offline.delete(d);
      },
      deviceRestart: async (d) => {
        await sim.device(d).reboot();
        offline.delete(d);
      },
    };
    const end = Date.now() + o.minutes * 60_000;
    const faulting = injectFaults({ random: seededRandom(o.seed), until: end, targets, signal, log });
    // Runs first: whatever a fault left stopped runs again before anything is cleaned up.
    onCleanup("restore after faults", async () => {
      await faulting.catch(() => undefined);
      await startApiServer({ dir });
      if (brokerDown) await targets.startBroker();
      await Promise.all([...offline].map((d) => targets.deviceOnline(d)));
    });
    const [faults, load] = await Promise.all([
      faulting,
      runLoad({ kubectl, fleet, workloads, random: seededRandom(o.seed ^ 0x5eed), until: end, signal }),
    ]);
    if (interrupted()) throw new Error("interrupted");

    // Settle: nothing changes any more; wait (bounded) until the devices match Kubernetes.
    log(`load and faults over; settling for up to ${o.settleSeconds} s`);
    const finals = () => devices().map((d) => ({ device: d.id, running: d.runningPods() }));
    const settleEnd = Date.now() + o.settleSeconds * 1000;
    await sleep(Math.min(15_000, o.settleSeconds * 1000));
    while (Date.now() < settleEnd && !interrupted()) {
      const now = await audit(kubectl, fleet, recorder, finals).catch(() => undefined);
      if (now?.counts.changesLost === 0) break;
      await sleep(5_000);
    }
    // Late duplicates and late NotReady samples still count: one more quiet moment, then the audit.
    await sleep(5_000);
    const result = await audit(kubectl, fleet, recorder, finals);
    const c = result.counts;
    const lines = [
      `changes lost: ${c.changesLost}`,
      `generations applied twice: ${c.generationsAppliedTwice}`,
      `pods resurrected after delete: ${c.podsResurrected}`,
      `nodes ever NotReady: ${c.nodesEverNotReady}`,
      `pods evicted: ${c.podsEvicted}`,
    ];
    const faultLine = Object.entries(faults)
      .map(([k, n]) => `${k} ${n}`)
      .join(", ");
    const loadLine = Object.entries(load.made)
      .map(([k, n]) => `${k} ${n}`)
      .join(", ");
    const r = recorder.records;
    console.log(`\nsoak ${id}: ${o.minutes} min, seed ${o.seed}, ${o.gateways} simulated gateways`);
    console.log(`faults injected: ${faultLine}`);
    console.log(`changes made: ${loadLine} (${load.failed} refused while the API server was down)`);
    console.log(
      `recorded: ${r.desired.length} desired documents, ${r.applies.length} applies, ${r.ready.length} Ready samples, devicelet started ${devicelet.starts} times; ${result.podsChecked} pods checked against their devices at the end`,
    );
    for (const f of result.findings.slice(0, 30)) console.log(`  - ${f}`);
    if (result.findings.length > 30) console.log(`  … ${result.findings.length - 30} more in soak.json`);
    console.log(lines.join("\n"));
    writeFileSync(
      path.join(runDir, "soak.json"),
      JSON.stringify(
        { id, date: new Date().toISOString(), ...o, counts: c, faults, load, findings: result.findings },
        null,
        2,
      ),
    );
    if (Object.values(c).some((n) => n !== 0)) process.exitCode = 1;
  } finally {
    controller.abort();
    for (const step of cleanups.reverse()) {
      try {
        await step.run();
      } catch (err) {
        log(`cleaning up ${step.what} failed: ${(err as Error).message}`);
        process.exitCode = 1;
      }
    }
    process.off("SIGINT", interrupt);
    process.off("SIGTERM", interrupt);
  }
}
