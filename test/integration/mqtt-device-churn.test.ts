/**
 * Devices are replaced for the whole life of a fleet: once a device is decommissioned (its Node
 * deleted while it is away, docs/protocol.md § 5), devicelet must hold nothing of it or of its
 * pods but the mark that drops what it still publishes. Three simulated devices run pods, go away,
 * have their pods and Nodes deleted; then devicelet's heap is searched for their IDs and their
 * pods' UIDs. A device left running, and its pod, must be found, or the search proves nothing.
 */
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { eventually } from "../support/eventually.ts";
import { heapSnapshotFlags, podsHeld, readHeapSnapshot, takeHeapSnapshot } from "../support/heap-snapshot.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import { barePod } from "../support/mqtt.ts";
import { mqttScene } from "../support/scene.ts";
import { uniqueName } from "../support/testenv.ts";
import type { PodJson } from "../support/workloads.ts";

const id = uniqueName("mqdev");
const ns = id;
const keeper = `${id}-keeper`;
const retired = [0, 1, 2].map((i) => `${id}-old${i}`);
const snapshots = mkdtempSync(path.join(os.tmpdir(), "devicelet-mqdev-heap-"));
const scene = mqttScene({
  id,
  devices: [keeper, ...retired].map((device) => ({ id: device, kind: "gateway" as const })),
  simulator: { appStartMs: 100, statsIntervalSeconds: 5 },
  nodeFlags: heapSnapshotFlags(snapshots),
});

beforeAll(() => scene.start());
afterAll(async () => {
  await scene.stop();
  rmSync(snapshots, { recursive: true, force: true });
});

const pods = async () => (await getJson<{ items: PodJson[] }>(["pods", "-n", ns])).items;
const nodeNames = async () =>
  (await getJson<{ items: { metadata: { name: string } }[] }>(["nodes", "-l", scene.nodeSelector])).items
    .map((n) => n.metadata.name)
    .sort();

describe("devices decommissioned", () => {
  it("leave nothing of theirs or their pods in the devicelet process", async () => {
    await apply(
      [keeper, ...retired]
        .flatMap((node) =>
          [0, 1].map((i) => barePod({ namespace: ns, testId: id, name: `${node}-p${i}`, node })),
        )
        .join("\n---\n"),
    );
    const all = await eventually(
      async () => {
        const list = await pods();
        const up = list.filter((p) => p.status.phase === "Running").length;
        if (list.length !== 8 || up !== 8) throw new Error(`${up} of 8 pods Running`);
        return list;
      },
      { timeoutMs: 60_000 },
    );

    for (const device of retired) await scene.device(device).goOffline();
    await eventually(async () => {
      for (const device of retired) {
        const node = await getJson<{ status: { conditions: { type: string; status: string }[] } }>([
          "node",
          device,
        ]);
        expect(node.status.conditions.find((c) => c.type === "DeviceConnected")?.status).not.toBe("True");
      }
    });
    const gonePods = all.filter((p) => p.spec.nodeName !== keeper).map((p) => p.metadata.name);
    // The pods first (they wait for their devices), then the Nodes: decommissioned, the devices'
    // pods are let go without them.
    await kubectl(["delete", "pods", "-n", ns, ...gonePods, "--wait=false"]);
    await kubectl(["delete", "nodes", ...retired]);
    await eventually(
      async () => {
        expect((await pods()).map((p) => p.metadata.name).sort()).toEqual([`${keeper}-p0`, `${keeper}-p1`]);
        expect(await nodeNames()).toEqual([keeper]);
      },
      { timeoutMs: 90_000 },
    );
    // The devices are gone for good, processes and all.
    for (const device of retired) await scene.device(device).goOffline();
    await apply(barePod({ namespace: ns, testId: id, name: "after", node: keeper }));
    await eventually(async () => {
      if ((await getJson<PodJson>(["pod", "after", "-n", ns])).status.phase !== "Running")
        throw new Error("after is not Running yet");
    });
    await new Promise((resolve) => setTimeout(resolve, 6_000));

    const file = await takeHeapSnapshot(scene.devicelet, snapshots);
    // Kept on purpose: the registry's mark of a retired device (what it still publishes is dropped
    // until it is born again), the Event recorder's series for their aggregation window, and the
    // pod cache's tables of what pods share (the node's name, a condition whose message names the
    // device), bounded, until they turn over.
    const heap = readHeapSnapshot(file, {
      ignoreEdges: ["#retired", "#series", "#budgets", "#values", "#strings"],
    });
    expect(heap.held(keeper)).toBeDefined();
    const keeperPod = all.find((p) => p.spec.nodeName === keeper);
    expect(heap.held(keeperPod?.metadata.uid ?? "no keeper pod")).toBeDefined();
    const devicesHeld = retired.flatMap((device) => {
      const how = heap.held(device);
      return how === undefined ? [] : [`${device}:\n${how}`];
    });
    expect(devicesHeld).toEqual([]);
    expect(
      podsHeld(
        heap,
        ns,
        all.filter((p) => p.spec.nodeName !== keeper),
      ),
    ).toEqual([]);
  });
});
