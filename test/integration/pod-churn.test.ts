/**
 * Pods come and go for the whole life of a devicelet: once a pod is deleted, the process must hold
 * nothing of it, or a fleet whose pods churn grows until it is killed. The test runs pods through
 * the real engine, the mock devices and the real control plane in the ways a pod can live and end
 * (running with a ConfigMap, waiting for a missing one, crash-looping, force-deleted, owned by a
 * ReplicaSet, read through the kubelet API), deletes them, and then looks for each one's UID and
 * name among the strings devicelet's heap still reaches (a V8 heap snapshot). A pod left running
 * beside them must be found, or the search proves nothing.
 */
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startDevicelet, type RunningDevicelet } from "../support/devicelet.ts";
import { eventually } from "../support/eventually.ts";
import { heapSnapshotFlags, podsHeld, readHeapSnapshot, takeHeapSnapshot } from "../support/heap-snapshot.ts";
import { kubeletGet, kubeletPorts, servingCertificate } from "../support/kubelet-client.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import { uniqueName } from "../support/testenv.ts";
import { deployment, pod, type PodJson } from "../support/workloads.ts";

const id = uniqueName("churn");
const ns = id;
const dir = mkdtempSync(path.join(os.tmpdir(), "devicelet-churn-"));
const snapshots = mkdtempSync(path.join(os.tmpdir(), "devicelet-churn-heap-"));
let devicelet: RunningDevicelet;

const pods = async () => (await getJson<{ items: PodJson[] }>(["pods", "-n", ns])).items;
const withEnv = (image: string, configMap: string) => `  containers:
    - name: app
      image: ${image}
      env: [{ name: MODE, valueFrom: { configMapKeyRef: { name: ${configMap}, key: mode } } }]`;

beforeAll(async () => {
  await kubectl(["create", "namespace", ns]);
  devicelet = await startDevicelet({
    id,
    provider: {
      devices: { count: 3, idPrefix: id, capacity: { pods: "40" } },
      appStartDelayMs: 200,
      appLogIntervalMs: 500,
      failImages: ["example/crashy:*"],
    },
    core: {
      kubelet: {
        serve: true,
        address: "127.0.0.1",
        port: 0,
        tls: { source: "files", ...servingCertificate(dir) },
      },
    },
    nodeFlags: heapSnapshotFlags(snapshots),
    expectNodes: 3,
  });
});

afterAll(async () => {
  await devicelet.stop();
  await kubectl(["delete", "namespace", ns, "--wait=false"]);
  rmSync(dir, { recursive: true, force: true });
  rmSync(snapshots, { recursive: true, force: true });
});

describe("pods deleted", () => {
  it("leave nothing of theirs in the devicelet process", async () => {
    await apply(`apiVersion: v1
kind: ConfigMap
metadata: { name: settings, namespace: ${ns} }
data: { mode: fast }
`);
    await apply(
      pod({ namespace: ns, name: "keeper", testId: id, spec: withEnv("example/sensor:1.0", "settings") }),
    );
    const plain = Array.from({ length: 20 }, (_, i) => `gone-${i}`);
    await apply(
      [
        ...plain.map((name) =>
          pod({ namespace: ns, name, testId: id, spec: withEnv("example/sensor:1.0", "settings") }),
        ),
        pod({
          namespace: ns,
          name: "waits-for-config",
          testId: id,
          spec: withEnv("example/sensor:1.0", "missing"),
        }),
        pod({ namespace: ns, name: "crashes", testId: id, spec: withEnv("example/crashy:1.0", "settings") }),
        pod({ namespace: ns, name: "forced", testId: id, spec: withEnv("example/sensor:1.0", "settings") }),
        deployment({ namespace: ns, name: "fleet", replicas: 8, testId: id }),
      ].join("\n---\n"),
    );
    const all = await eventually(
      async () => {
        const list = await pods();
        const waiting = list.find((p) => p.metadata.name === "waits-for-config");
        const crashes = list.find((p) => p.metadata.name === "crashes");
        const settled = list.filter((p) => p !== waiting && p !== crashes && p.status.phase === "Running");
        if (list.length !== 32 || settled.length !== 30)
          throw new Error(`${list.length} pods, ${settled.length} of 30 Running`);
        if (waiting?.status.containerStatuses?.[0]?.state.waiting?.reason !== "CreateContainerConfigError")
          throw new Error("waits-for-config is not waiting for its ConfigMap yet");
        if ((crashes?.status.containerStatuses?.[0]?.restartCount ?? 0) < 2)
          throw new Error("crashes has not restarted twice yet");
        return list;
      },
      { timeoutMs: 90_000 },
    );

    // Each pod read through its node's kubelet API: logs, and stats twice (the summary keeps a rate).
    const port = await kubeletPorts(devicelet.nodeSelector);
    for (const p of all) {
      const logs = await kubeletGet(
        port.get(p.spec.nodeName ?? "") ?? 0,
        `/containerLogs/${ns}/${p.metadata.name}/app`,
      );
      if (p.metadata.name !== "waits-for-config") expect(logs.status).toBe(200);
    }
    for (const round of [1, 2]) {
      for (const p of port.values()) expect((await kubeletGet(p, "/stats/summary")).status).toBe(200);
      if (round === 1) await new Promise((resolve) => setTimeout(resolve, 1_000));
    }

    const keeper = all.find((p) => p.metadata.name === "keeper");
    const gone = all.filter((p) => p !== keeper);
    await kubectl(["delete", "deployment", "fleet", "-n", ns]);
    await kubectl(["delete", "pod", "forced", "-n", ns, "--grace-period=0", "--force"]);
    await kubectl(["delete", "pods", "-n", ns, ...plain, "waits-for-config", "crashes", "--wait=false"]);
    await eventually(
      async () => {
        const left = (await pods()).length;
        const held = devicelet.mockState().pods.filter((p) => p.workload.pod.namespace === ns).length;
        if (left !== 1 || held !== 1) throw new Error(`${left} pods in the API, ${held} on devices`);
      },
      { timeoutMs: 90_000 },
    );
    // One more pod through the watch: a watch holds the last event it handled until the next.
    await apply(
      pod({ namespace: ns, name: "after", testId: id, spec: withEnv("example/sensor:1.0", "settings") }),
    );
    await eventually(async () => {
      if ((await getJson<PodJson>(["pod", "after", "-n", ns])).status.phase !== "Running")
        throw new Error("after is not Running yet");
    });
    // What forgets once the watch shows the delete (the status writer's last write) has done so.
    await new Promise((resolve) => setTimeout(resolve, 5_000));

    const file = await takeHeapSnapshot(devicelet, snapshots);
    // The mock keeps the last removed pods' create counts on purpose (bounded), to catch a pod
    // created again after its removal.
    const heap = readHeapSnapshot(file, { ignoreEdges: ["#removedCreates", "#series", "#budgets"] });
    expect(heap.held(keeper?.metadata.uid ?? "no keeper")).toBeDefined();
    expect(heap.held(`${ns}/keeper`)).toBeDefined();
    expect(podsHeld(heap, ns, gone)).toEqual([]);
  });
});
