/**
 * pod-churn.test.ts for the IoT Hub provider: pods run on a simulated device through the local IoT
 * Hub emulator (twin documents, reported properties, the Event Hubs-compatible endpoint), are
 * deleted, and once they are gone devicelet's heap must reach nothing of theirs; a pod left
 * running must be found.
 */
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startIotHubEmulator, type IotHubEmulator } from "../../hack/iothub-emulator/index.ts";
import { startSimulator, type Simulator } from "../../src/device/simulator.ts";
import { runDevicelet, type DeviceletProcess } from "../support/devicelet.ts";
import { eventually } from "../support/eventually.ts";
import { heapSnapshotFlags, podsHeld, readHeapSnapshot, takeHeapSnapshot } from "../support/heap-snapshot.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import { uniqueName } from "../support/testenv.ts";
import { pod, type PodJson } from "../support/workloads.ts";

const id = uniqueName("hubchurn");
const ns = id;
const gw = `${id}-gw`;
const dir = mkdtempSync(path.join(tmpdir(), `${id}-`));
const snapshots = mkdtempSync(path.join(tmpdir(), `${id}-heap-`));
let emulator: IotHubEmulator;
let sim: Simulator;
let devicelet: DeviceletProcess;

beforeAll(async () => {
  await kubectl(["create", "namespace", ns]);
  emulator = await startIotHubEmulator({ host: "127.0.0.1" });
  sim = await startSimulator({
    iothub: {
      connectionString: (d) => emulator.addDevice(d).connectionString,
      ca: emulator.ca,
      heartbeatSeconds: 5,
    },
    appStartMs: 200,
    devices: [{ id: gw, kind: "gateway" }],
  });
  const key = emulator.servicePolicy.key;
  const secret = path.join(dir, `cs-${createHash("sha256").update(key).digest("hex").slice(0, 12)}`);
  writeFileSync(secret, emulator.serviceConnectionString);
  const caFile = path.join(dir, "hub-ca.pem");
  writeFileSync(caFile, emulator.ca);
  devicelet = await runDevicelet({
    id,
    expectNodes: 1,
    nodeFlags: heapSnapshotFlags(snapshots),
    config: () => ({
      provider: {
        type: "iothub",
        config: {
          hub: {
            connectionStringFile: secret,
            endpoint: emulator.serviceUrl,
            caFile,
            sweepIntervalSeconds: 1,
          },
          devices: { ids: [gw] },
          health: { disconnectedGraceSeconds: 1 },
          events: {
            connectionString: emulator.eventHubsConnectionString,
            customEndpointAddress: emulator.eventHubsWebSocketEndpointAddress,
            caFile,
          },
        },
      },
    }),
  });
});

afterAll(async () => {
  await devicelet.stop();
  await sim.stop();
  await emulator.close();
  await kubectl(["delete", "namespace", ns, "--wait=false"]);
  rmSync(dir, { recursive: true, force: true });
  rmSync(snapshots, { recursive: true, force: true });
});

const pods = async () => (await getJson<{ items: PodJson[] }>(["pods", "-n", ns])).items;
const onGateway = (name: string) =>
  pod({
    namespace: ns,
    name,
    testId: id,
    node: gw,
    spec: `  containers:
    - name: app
      image: example/sensor:1.0
      env: [{ name: MODE, valueFrom: { configMapKeyRef: { name: settings, key: mode } } }]`,
  });

describe("pods deleted from IoT Hub devices", () => {
  it("leave nothing of theirs in the devicelet process", async () => {
    await apply(`apiVersion: v1
kind: ConfigMap
metadata: { name: settings, namespace: ${ns} }
data: { mode: fast }
`);
    const names = Array.from({ length: 10 }, (_, i) => `gone-${i}`);
    await apply([onGateway("keeper"), ...names.map(onGateway)].join("\n---\n"));
    const all = await eventually(
      async () => {
        const list = await pods();
        const up = list.filter((p) => p.status.phase === "Running").length;
        if (list.length !== 11 || up !== 11) throw new Error(`${up} of 11 pods Running`);
        return list;
      },
      { timeoutMs: 90_000 },
    );
    await kubectl(["delete", "pods", "-n", ns, ...names, "--wait=false"]);
    await eventually(
      async () => {
        expect((await pods()).map((p) => p.metadata.name)).toEqual(["keeper"]);
        expect(sim.device(gw).runningPods()).toHaveLength(1);
      },
      { timeoutMs: 90_000 },
    );
    // One more pod through the watch and the twin: each holds the last it handled until the next.
    await apply(onGateway("after"));
    await eventually(async () => {
      if ((await getJson<PodJson>(["pod", "after", "-n", ns])).status.phase !== "Running")
        throw new Error("after is not Running yet");
    });
    await new Promise((resolve) => setTimeout(resolve, 6_000));

    const file = await takeHeapSnapshot(devicelet, snapshots);
    // The Event recorder keeps its series for their aggregation window, bounded (kube/events.ts).
    const heap = readHeapSnapshot(file, { ignoreEdges: ["#series", "#budgets"] });
    const keeper = all.find((p) => p.metadata.name === "keeper");
    expect(heap.held(keeper?.metadata.uid ?? "no keeper")).toBeDefined();
    expect(
      podsHeld(
        heap,
        ns,
        all.filter((p) => p !== keeper),
      ),
    ).toEqual([]);
  });
});
