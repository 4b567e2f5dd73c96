/**
 * A device its provider reports gone for good (DeviceWatcher.gone; the mock's `removals`) loses
 * its Node: devicelet deletes it, the garbage collector takes its Lease, the pod garbage collector
 * its pods. The other devices are untouched, and a device that is only offline keeps its node.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startDevicelet, type RunningDevicelet } from "../support/devicelet.ts";
import { eventually } from "../support/eventually.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import { uniqueName } from "../support/testenv.ts";
import { pod, type PodJson } from "../support/workloads.ts";

const id = uniqueName("gone");
const ns = id;
const [kept, away, removed] = [`${id}-kept`, `${id}-away`, `${id}-removed`];
let devicelet: RunningDevicelet;

interface NodeJson {
  metadata: { name: string; uid: string };
}

beforeAll(async () => {
  await kubectl(["create", "namespace", ns]);
  devicelet = await startDevicelet({
    id,
    provider: {
      devices: [{ id: kept }, { id: away }, { id: removed }],
      appStartDelayMs: 100,
      // Both happen once the test's pods run (it waits for the removal, not for the time). The
      // clock starts with the provider, and the set-up before the removal (three pods Running, the
      // node list read) takes 4 to 8 s here: 40 s leaves room for a CI run five times slower.
      offline: [{ device: away, afterMs: 40_000 }],
      removals: [{ device: removed, afterMs: 40_000 }],
    },
    expectNodes: 3,
  });
});

afterAll(async () => {
  await devicelet.stop();
  await kubectl(["delete", "namespace", ns, "--wait=false"]);
});

const nodeNames = async () =>
  (await getJson<{ items: NodeJson[] }>(["nodes", "-l", devicelet.nodeSelector])).items
    .map((n) => n.metadata.name)
    .sort();

describe("a device reported gone", () => {
  it("has its node deleted with its lease and pods; the others keep theirs", async () => {
    for (const device of [kept, away, removed]) {
      await apply(
        pod({
          namespace: ns,
          name: device,
          testId: id,
          spec: `  nodeName: ${device}\n  containers:\n    - { name: app, image: example/app:1 }`,
        }),
      );
    }
    await eventually(async () => {
      const pods = (await getJson<{ items: PodJson[] }>(["pods", "-n", ns])).items;
      expect(pods.filter((p) => p.status.phase === "Running")).toHaveLength(3);
    });
    expect(await nodeNames()).toEqual([away, kept, removed].sort());

    await eventually(async () => expect(await nodeNames()).toEqual([away, kept].sort()), {
      timeoutMs: 60_000,
    });
    await eventually(
      async () => {
        const leases = await getJson<{ items: NodeJson[] }>(["leases", "-n", "kube-node-lease"]);
        expect(leases.items.map((l) => l.metadata.name)).not.toContain(removed);
      },
      { timeoutMs: 60_000 },
    );
    // Pods bound to a Node that no longer exists are deleted by the pod garbage collector.
    await eventually(
      async () => {
        const pods = (await getJson<{ items: PodJson[] }>(["pods", "-n", ns])).items;
        expect(pods.map((p) => p.metadata.name).sort()).toEqual([away, kept].sort());
      },
      { timeoutMs: 120_000 },
    );
    expect(devicelet.logLines().some((l) => l.msg === "device gone: deleted its node")).toBe(true);
    const state = devicelet.mockState();
    expect(state.pods.map((p) => p.workload.pod.name).sort()).toEqual([away, kept].sort());
  });
});
