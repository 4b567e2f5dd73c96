/**
 * The kubelet API end to end over the device protocol: devicelet with the MQTT provider, Mosquitto
 * and `devicelet simulate` (a gateway that serves logs, exec and stats, and a microcontroller that
 * serves none), all in the lab's network namespace (test/support/lab.ts), driven with the real
 * kubectl through the real API server.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { ensureMosquitto } from "../../hack/testenv/mosquitto.ts";
import { eventually } from "../support/eventually.ts";
import { startLab, type Lab } from "../support/lab.ts";
import { uniqueName } from "../support/testenv.ts";
import { isReady, pod, type PodJson } from "../support/workloads.ts";

const repoRoot = path.resolve(import.meta.dirname, "../..");
const id = uniqueName("kapim");
const ns = id;
const gateway = `${id}-gw-0`;
const mcu = `${id}-gw-0-mcu-0`;
/** Mosquitto's port on the namespace's own loopback (a fresh namespace has every port free). */
const brokerPort = 1883;
let lab: Lab;
let failed = false;

/** A pod on `node`; requests only where given (a microcontroller has kilobytes of memory). */
const appPod = (name: string, node: string, requests = "") =>
  pod({
    namespace: ns,
    name,
    testId: id,
    node,
    spec: `  containers:
    - name: app
      image: example/sensor:1.0${requests ? `\n      resources: { requests: ${requests} }` : ""}`,
  });

beforeAll(async () => {
  lab = await startLab({ id: "kubelet-e2e-mqtt" });
  try {
    const brokerDir = path.join(lab.dir, "mosquitto");
    mkdirSync(brokerDir, { recursive: true });
    const conf = path.join(brokerDir, "mosquitto.conf");
    writeFileSync(
      conf,
      [
        // As root, mosquitto would drop to its own user; this broker is the lab's alone.
        ...(process.getuid?.() === 0 ? ["user root"] : []),
        "allow_anonymous true",
        "log_dest stdout",
        "log_type error",
        "log_type warning",
        `listener ${brokerPort} 127.0.0.1`,
        "",
      ].join("\n"),
    );
    lab.startProcess("mosquitto", ensureMosquitto(), ["-c", conf]);
    await lab.kubectlOk(["create", "namespace", ns]);
    const brokerUrl = `mqtt://127.0.0.1:${brokerPort}`;
    lab.startProcess("simulator", process.execPath, [
      path.join(repoRoot, "bin/devicelet.js"),
      "simulate",
      "--broker",
      brokerUrl,
      "--gateways",
      "1",
      "--children",
      "1",
      "--mcus",
      "0",
      "--prefix",
      id,
    ]);
    await lab.startDevicelet({
      id,
      expectNodes: 2,
      core: { state: { namespace: ns }, pods: { statusDebounceMs: 50 } },
      providerSection: {
        type: "mqtt",
        config: {
          broker: {
            url: brokerUrl,
            clientId: `devicelet-${id}`,
            reconnect: { minDelayMs: 100, maxDelayMs: 2000 },
          },
          devices: { allow: [`${id}-*`] },
        },
      },
    });
    await lab.kubectlOk(["apply", "-f", "-"], {
      input: [appPod("app", gateway, "{ cpu: 50m, memory: 32Mi }"), appPod("tiny", mcu)].join("\n---\n"),
    });
    await eventually(
      async () => {
        for (const name of ["app", "tiny"]) {
          const p = JSON.parse(await lab.kubectlOk(["get", "pod", "-n", ns, name, "-o", "json"])) as PodJson;
          if (!isReady(p)) throw new Error(`${name} not ready`);
        }
      },
      { timeoutMs: 60_000 },
    );
  } catch (err) {
    console.error(lab.describe());
    await lab.stop({ keepDir: true });
    throw err;
  }
}, 420_000);

beforeEach(({ onTestFailed }) => {
  onTestFailed(() => {
    failed = true;
  });
});

afterAll(async () => {
  if (!(lab as Lab | undefined)) return;
  if (failed) console.error(lab.describe());
  await lab.stop({ keepDir: failed });
}, 60_000);

describe("over MQTT, with the simulator", () => {
  it("kubectl logs prints the app's output, and --tail the last lines", async () => {
    // The simulated app writes a line every 5 s.
    await eventually(
      async () => {
        const lines = (await lab.kubectlOk(["logs", "-n", ns, "app"])).split("\n").filter(Boolean);
        if (lines.length < 2) throw new Error(`only ${lines.length} lines so far`);
      },
      { timeoutMs: 30_000, intervalMs: 1_000 },
    );
    const tail = (await lab.kubectlOk(["logs", "-n", ns, "app", "--tail=1"])).split("\n").filter(Boolean);
    expect(tail).toHaveLength(1);
  });

  it("kubectl exec runs a command on the device and returns its exit code", async () => {
    expect(await lab.kubectl(["exec", "-n", ns, "app", "--", "echo", "hi"])).toEqual({
      code: 0,
      stdout: "hi\n",
      stderr: "",
      timedOut: false,
    });
    expect(await lab.kubectl(["exec", "-n", ns, "app", "--", "sh", "-c", "exit 3"])).toMatchObject({
      code: 3,
      timedOut: false,
    });
  });

  it("kubectl exec on a microcontroller is refused at once", async () => {
    const r = await lab.kubectl(["exec", "-n", ns, "tiny", "--", "echo", "hi"], { timeoutMs: 20_000 });
    expect(r.timedOut).toBe(false);
    expect(r.code).not.toBe(0);
    expect(r.stdout).toBe("");
    expect(r.stderr).toMatch(new RegExp(`device ${mcu} does not serve exec`));
  });

  it("kubectl top node shows the gateway's usage from its stats reports", async () => {
    const out = await eventually(() => lab.kubectlOk(["top", "node", gateway, "--no-headers"]), {
      timeoutMs: 90_000,
      intervalMs: 2_000,
    });
    expect(out).toMatch(new RegExp(`^${gateway}\\s+\\d+m\\s+\\d+%\\s+\\d+Mi\\s+\\d+%`));
  });
});
