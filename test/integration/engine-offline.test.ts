/**
 * A device going offline is a device condition, not a node failure (design decision 1): its node
 * stays Ready, DeviceConnected turns False on the node and its pods, and nothing is evicted.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startDevicelet, type RunningDevicelet } from "../support/devicelet.ts";
import { eventually } from "../support/eventually.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import { uniqueName } from "../support/testenv.ts";
import { condition, pod, type PodJson } from "../support/workloads.ts";

const id = uniqueName("off");
const ns = id;
const device = `${id}-0`;
let devicelet: RunningDevicelet;

interface NodeJson {
  metadata: { name: string };
  status: { conditions: { type: string; status: string; reason?: string }[] };
}

beforeAll(async () => {
  await kubectl(["create", "namespace", ns]);
  devicelet = await startDevicelet({
    id,
    provider: {
      devices: [{ id: device }],
      appStartDelayMs: 100,
      // Offline from 8 s after start for 25 s: long enough to look, short enough to come back.
      offline: [{ device, afterMs: 8_000, forMs: 25_000 }],
    },
    expectNodes: 1,
  });
});

afterAll(async () => {
  await devicelet.stop();
  await kubectl(["delete", "namespace", ns, "--wait=false"]);
});

describe("a device going offline", () => {
  it("keeps its node Ready, shows DeviceConnected=False on node and pod, evicts nothing, and recovers", async () => {
    const nodeName =
      (await getJson<{ items: NodeJson[] }>(["nodes", "-l", devicelet.nodeSelector])).items[0]?.metadata
        .name ?? "";
    await apply(
      pod({
        namespace: ns,
        name: "sensor",
        testId: id,
        spec: "  containers:\n    - { name: app, image: example/app:1 }",
      }),
    );
    const node = () => getJson<NodeJson>(["node", nodeName]);
    const sensor = () => getJson<PodJson>(["pod", "sensor", "-n", ns]);

    await eventually(
      async () => {
        const n = await node();
        expect(n.status.conditions.find((c) => c.type === "DeviceConnected")?.status).toBe("False");
        expect(n.status.conditions.find((c) => c.type === "Ready")?.status).toBe("True");
        const p = await sensor();
        expect(p.spec.nodeName).toBe(nodeName);
        expect(p.metadata.deletionTimestamp).toBeUndefined();
        expect(condition(p, "devicelet.dev/DeviceConnected")?.status).toBe("False");
        expect(condition(p, "Ready")?.status).toBe("False");
      },
      { timeoutMs: 30_000 },
    );

    await eventually(
      async () => {
        const n = await node();
        expect(n.status.conditions.find((c) => c.type === "DeviceConnected")?.status).toBe("True");
        const p = await sensor();
        expect(p.status.phase).toBe("Running");
        expect(condition(p, "devicelet.dev/DeviceConnected")?.status).toBe("True");
        expect(condition(p, "Ready")?.status).toBe("True");
      },
      { timeoutMs: 60_000 },
    );
    const taints =
      (await getJson<{ spec: { taints?: { key: string }[] } }>(["node", nodeName])).spec.taints ?? [];
    expect(taints.map((t) => t.key)).not.toContain("node.kubernetes.io/unreachable");
  });
});
