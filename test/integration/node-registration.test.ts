/**
 * Registering a device's node against the real API server: the Node is created with the status a
 * heartbeat would write (the API server keeps a Node's status on create), so devicelet writes no
 * status, label or taint right after it, only its Lease. Node status is left at its default
 * interval (5 minutes), so any status write seen here would be one too many.
 */
import { afterAll, beforeAll, expect, it } from "vitest";
import { startDevicelet, type RunningDevicelet } from "../support/devicelet.ts";
import { getJson } from "../support/kubectl.ts";
import { uniqueName } from "../support/testenv.ts";

const id = uniqueName("reg");
let devicelet: RunningDevicelet;

interface NodeJson {
  metadata: {
    name: string;
    labels: Record<string, string>;
    managedFields?: { manager: string; operation: string; subresource?: string }[];
  };
  status: {
    conditions: { type: string; status: string; message: string }[];
    capacity: Record<string, string>;
  };
}

beforeAll(async () => {
  devicelet = await startDevicelet({
    id,
    provider: { devices: { count: 3, idPrefix: id } },
    core: { lease: { renewIntervalSeconds: 2 } },
    expectNodes: 3,
  });
});

afterAll(async () => {
  await devicelet.stop();
});

it("creates each Node with its status and writes no status after it until one is due", async () => {
  // Five heartbeats (Lease renewals every 2 s), each of which reconciles its node.
  await new Promise((resolve) => setTimeout(resolve, 10_000));
  const { items } = await getJson<{ items: NodeJson[] }>([
    "nodes",
    "-l",
    devicelet.nodeSelector,
    "--show-managed-fields",
  ]);
  expect(items).toHaveLength(3);
  for (const node of items) {
    const ready = node.status.conditions.find((c) => c.type === "Ready");
    expect(ready?.status).toBe("True");
    expect(ready?.message).toBe("devicelet is running and reaching the API server");
    expect(node.status.capacity.pods).toBeDefined();
    // What devicelet wrote to the Node: its create, and nothing on the status subresource.
    const ours = (node.metadata.managedFields ?? []).filter((f) => f.manager.startsWith("devicelet"));
    expect(ours.map((f) => `${f.operation} ${f.subresource ?? ""}`.trim())).toEqual(["Update"]);
  }
});
