/**
 * pod-churn.test.ts for the MQTT provider: pods run on simulated devices through a real Mosquitto,
 * with a ConfigMap and a Secret, their logs read through the kubelet API over the device's log
 * sessions, some deleted while their device is offline and stopped once it is back. Once they are
 * gone, devicelet's heap must reach nothing of theirs; a pod left running must be found.
 */
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { eventually } from "../support/eventually.ts";
import { heapSnapshotFlags, podsHeld, readHeapSnapshot, takeHeapSnapshot } from "../support/heap-snapshot.ts";
import { kubeletGet, kubeletPorts, servingCertificate } from "../support/kubelet-client.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import { mqttScene } from "../support/scene.ts";
import { uniqueName } from "../support/testenv.ts";
import { pod, type PodJson } from "../support/workloads.ts";

const id = uniqueName("mqchurn");
const ns = id;
const [stays, leaves] = [`${id}-stays`, `${id}-leaves`];
const dir = mkdtempSync(path.join(os.tmpdir(), "devicelet-mqchurn-"));
const snapshots = mkdtempSync(path.join(os.tmpdir(), "devicelet-mqchurn-heap-"));
const scene = mqttScene({
  id,
  devices: [
    { id: stays, kind: "gateway" },
    { id: leaves, kind: "gateway" },
  ],
  // Each device's latest stats report lists the pods it ran then: the shortest interval keeps it fresh.
  simulator: { appStartMs: 100, statsIntervalSeconds: 5 },
  // A plain broker here: Secrets may go to the devices all the same (the gate has tests of its own).
  provider: { allowSecretsWithoutTls: true },
  core: {
    kubelet: {
      serve: true,
      address: "127.0.0.1",
      port: 0,
      tls: { source: "files", ...servingCertificate(dir) },
    },
  },
  nodeFlags: heapSnapshotFlags(snapshots),
});

beforeAll(() => scene.start());
afterAll(async () => {
  await scene.stop();
  rmSync(dir, { recursive: true, force: true });
  rmSync(snapshots, { recursive: true, force: true });
});

const pods = async () => (await getJson<{ items: PodJson[] }>(["pods", "-n", ns])).items;
const onNode = (name: string, node: string) =>
  pod({
    namespace: ns,
    name,
    testId: id,
    node,
    spec: `  containers:
    - name: app
      image: example/sensor:1.0
      env:
        - { name: MODE, valueFrom: { configMapKeyRef: { name: settings, key: mode } } }
        - { name: TOKEN, valueFrom: { secretKeyRef: { name: token, key: value } } }`,
  });
const running = (name: string) =>
  eventually(async () => {
    if ((await getJson<PodJson>(["pod", name, "-n", ns])).status.phase !== "Running")
      throw new Error(`${name} is not Running yet`);
  });

describe("pods deleted from MQTT devices", () => {
  it("leave nothing of theirs in the devicelet process", async () => {
    await apply(`apiVersion: v1
kind: ConfigMap
metadata: { name: settings, namespace: ${ns} }
data: { mode: fast }
---
apiVersion: v1
kind: Secret
metadata: { name: token, namespace: ${ns} }
stringData: { value: s3cr3t }
`);
    const onStays = Array.from({ length: 10 }, (_, i) => `gone-${i}`);
    const onLeaves = Array.from({ length: 5 }, (_, i) => `offline-${i}`);
    await apply(
      [
        onNode("keeper", stays),
        ...onStays.map((name) => onNode(name, stays)),
        ...onLeaves.map((name) => onNode(name, leaves)),
      ].join("\n---\n"),
    );
    const all = await eventually(
      async () => {
        const list = await pods();
        const up = list.filter((p) => p.status.phase === "Running").length;
        if (list.length !== 16 || up !== 16) throw new Error(`${up} of 16 pods Running`);
        return list;
      },
      { timeoutMs: 60_000 },
    );

    // Every pod's logs through its node's kubelet API: the device's log session, and its cache.
    const port = await kubeletPorts(scene.nodeSelector);
    for (const p of all) {
      const logs = await kubeletGet(
        port.get(p.spec.nodeName ?? "") ?? 0,
        `/containerLogs/${ns}/${p.metadata.name}/app?tailLines=5`,
      );
      expect(logs.status).toBe(200);
    }

    // The second device goes away; its pods are deleted meanwhile and stopped when it is back.
    await scene.device(leaves).goOffline();
    await kubectl(["delete", "pods", "-n", ns, ...onStays, ...onLeaves, "--wait=false"]);
    await eventually(
      async () => {
        const left = (await pods()).map((p) => p.metadata.name);
        expect(left).toEqual(expect.arrayContaining(onLeaves));
        expect(left).not.toContain("gone-0");
      },
      { timeoutMs: 60_000 },
    );
    await scene.device(leaves).goOnline();
    await eventually(
      async () => {
        expect((await pods()).map((p) => p.metadata.name)).toEqual(["keeper"]);
        expect(scene.device(leaves).runningPods()).toEqual([]);
        expect(scene.device(stays).runningPods()).toHaveLength(1);
      },
      { timeoutMs: 60_000 },
    );
    // One more pod through the watch: a watch holds the last event it handled until the next.
    await apply(onNode("after", stays));
    await running("after");
    // What forgets a little after a pod is gone (the status writer once the watch shows it, a
    // device's stats once it reports again) has.
    await new Promise((resolve) => setTimeout(resolve, 6_000));

    const file = await takeHeapSnapshot(scene.devicelet, snapshots);
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
