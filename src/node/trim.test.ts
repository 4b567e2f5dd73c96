/**
 * trimNode and nodeIdentity: what the node caches drop, and that what the node controller writes
 * from a cached Node (status, taints, the in-sync label) is the same whether it read the whole
 * Node or the trimmed one.
 */
import { describe, expect, it } from "vitest";
import { dropManagedFields, toWire, type Node, type NodeStatus } from "../kube/index.ts";
import type { DeviceInfo } from "../provider/types.ts";
import { buildNode, buildNodeStatus, NodeLabel } from "./build.ts";
import { testNodeConfig } from "../../test/support/node-config.ts";
import { newEntry } from "./controller-types.ts";
import { writeNodeStatus, writeTransportTaint } from "./status-writer.ts";
import { StringTable } from "../base/intern.ts";
import { nodeIdentity, nodeStringTable, nodeTrimmer, trimNode } from "./trim.ts";

const t0 = new Date("2026-11-01T10:00:00Z");
const device: DeviceInfo = {
  id: "dev-1",
  deviceClass: "mcu",
  labels: {},
  os: "linux",
  arch: "arm64",
  capacity: { cpu: "1", memory: "256Mi", "example.com/gpio": "8" },
  addresses: [{ type: "InternalIP", address: "10.1.2.3" }],
  connected: true,
  lastSeen: t0,
};
const config = testNodeConfig;
const statusOptions = {
  ready: true,
  readyMessage: "",
  now: t0,
  kubeletPort: 10251,
  kubeletAddress: "192.0.2.10",
  version: "0.1.0",
};

/** A device's Node as the API server holds it, with what others added to it. */
function storedNode(): Node {
  const node = toWire(
    buildNode(device, {
      nodeName: "dev-1",
      providerName: "mqtt",
      taintKey: config.taintKey,
      extraLabels: {},
      kubeletPort: 10251,
      kubeletAddress: "192.0.2.10",
      version: "0.1.0",
      now: t0,
    }),
  );
  node.metadata = {
    ...node.metadata,
    uid: "node-uid",
    resourceVersion: "77",
    creationTimestamp: "2026-11-01T09:00:00Z",
    labels: { ...node.metadata?.labels, [NodeLabel.InSync]: "true" },
    annotations: {
      ...node.metadata?.annotations,
      "node.alpha.kubernetes.io/ttl": "0",
      "example.com/note": "x",
    },
    managedFields: [{ manager: "devicelet", operation: "Update" }],
  };
  node.spec = {
    ...node.spec,
    podCIDR: "10.244.1.0/24",
    taints: [...(node.spec?.taints ?? []), { key: "example.com/maintenance", effect: "NoSchedule" }],
  };
  const status = toWire(buildNodeStatus(device, statusOptions));
  node.status = {
    ...status,
    conditions: [
      ...(status.conditions ?? []),
      { type: "NetworkUnavailable", status: "False", lastTransitionTime: "2026-11-01T09:30:00Z" },
    ],
    images: [{ names: ["registry/sensor:1.2"], sizeBytes: 1000 }],
    volumesInUse: [],
  };
  return node;
}

/** What writeNodeStatus and writeTransportTaint send for a cached `node`. */
async function writesFor(node: Node, known: DeviceInfo | undefined): Promise<unknown[]> {
  const sent: unknown[] = [];
  const kube = {
    patchNodeStatus: (name: string, status: NodeStatus) => {
      sent.push({ name, status });
      return Promise.resolve(node);
    },
    patchNode: (name: string, patch: object) => {
      sent.push({ name, patch });
      return Promise.resolve(node);
    },
  };
  const entry = newEntry({ name: "dev-1", device: known, problems: [], ownership: "owned" });
  const clock = { now: () => t0.getTime() + 5_000 };
  const transport = { connected: false, message: "broker unreachable" };
  await writeNodeStatus({ kube, config, version: "0.1.0", transport, entry, node, clock: clock as never });
  for (const value of ["true", "false"] as const) {
    await writeTransportTaint({ kube, name: "dev-1", node, transport, inSync: { value } });
    await writeTransportTaint({ kube, name: "dev-1", node, transport: undefined, inSync: { value } });
  }
  return sent;
}

describe("trimNode", () => {
  it("keeps what the node controller reads and nothing else", () => {
    const node = storedNode();
    expect(trimNode(node)).toEqual({
      apiVersion: "v1",
      kind: "Node",
      metadata: {
        name: "dev-1",
        uid: "node-uid",
        resourceVersion: "77",
        labels: node.metadata?.labels,
        annotations: { [NodeLabel.DeviceId]: "dev-1" },
      },
      spec: { taints: node.spec?.taints },
      status: {
        conditions: node.status?.conditions,
        capacity: node.status?.capacity,
        daemonEndpoints: { kubeletEndpoint: { Port: 10251 } },
      },
    });
  });

  it("writes the same status, taints and label from the trimmed Node as from the whole one", async () => {
    for (const known of [device, { ...device, capacity: { cpu: "2" } }, undefined]) {
      const whole = await writesFor(dropManagedFields(storedNode()), known);
      const trimmed = await writesFor(trimNode(storedNode()), known);
      expect(trimmed).toEqual(whole);
      // Both writes happened, carrying what was read: the foreign condition, the user's taint.
      expect(JSON.stringify(trimmed)).toContain("NetworkUnavailable");
      expect(JSON.stringify(trimmed)).toContain("example.com/maintenance");
    }
    // A resource the device no longer states goes to "0", read from the cached capacity.
    const shrunk = await writesFor(trimNode(storedNode()), { ...device, capacity: { cpu: "2" } });
    expect(JSON.stringify(shrunk)).toContain('"example.com/gpio":"0"');
  });

  it("keeps one copy of what nodes repeat, values unchanged, and not what is unique to a node", async () => {
    /** Node `i` of a fleet as the API server sends it: same device kind, its own name and IDs. */
    const nodeJson = (i: number) => {
      const node = storedNode();
      const name = `device-node-${String(i).padStart(5, "0")}`;
      node.metadata = {
        ...node.metadata,
        name,
        uid: `8d1e5f2a-0000-4000-a000-${String(i).padStart(12, "0")}`,
        resourceVersion: String(10_000_000_000 + i),
        labels: {
          ...node.metadata?.labels,
          [NodeLabel.Hostname]: name,
          [NodeLabel.DeviceId]: `Device_${name}`,
          "example.com/fleet": "north-sea-wind",
        },
        annotations: { ...node.metadata?.annotations, [NodeLabel.DeviceId]: `Device_${name}` },
      };
      return JSON.stringify(node);
    };
    const strings = nodeStringTable();
    const trim = nodeTrimmer(strings);
    const plain = nodeTrimmer(new StringTable({ generationSize: 1, admit: () => false }));
    trim(JSON.parse(nodeJson(0)) as Node);
    const afterOne = strings.size;
    for (let i = 1; i < 100; i++) {
      const interned = trim(JSON.parse(nodeJson(i)) as Node);
      expect(interned).toStrictEqual(plain(JSON.parse(nodeJson(i)) as Node));
    }
    expect(strings.size).toBe(afterOne);
    const repeated = [
      "north-sea-wind",
      "virtual-kubelet.io/provider",
      "NetworkUnavailable",
      "2026-11-01T09:30:00Z",
    ];
    expect(repeated.map((v) => strings.has(v))).toEqual([true, true, true, true]);
    const unique = [
      "device-node-00042",
      "8d1e5f2a-0000-4000-a000-000000000042",
      "10000000042",
      "Device_device-node-00042",
    ];
    expect(unique.map((v) => strings.has(v))).toEqual([false, false, false, false]);
    // What the controller writes from an interned Node is what it writes from a plain one.
    const text = nodeJson(7);
    expect(await writesFor(trim(JSON.parse(text) as Node), device)).toStrictEqual(
      await writesFor(plain(JSON.parse(text) as Node), device),
    );
  });

  it("nodeIdentity keeps name, UID and resourceVersion only", () => {
    expect(nodeIdentity(storedNode())).toEqual({
      metadata: { name: "dev-1", uid: "node-uid", resourceVersion: "77" },
    });
    expect(nodeIdentity({})).toEqual({});
  });
});
