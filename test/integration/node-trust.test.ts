/**
 * A device gets nothing that is not its own (docs/protocol.md § 3.2.1), through the real CLI
 * against the real control plane, with the mock provider's devices:
 * - a device whose id names a Node devicelet does not own (here a plain Node, as kubeadm makes
 *   them) is refused: that Node's labels, taints and status stay exactly as they were, a Warning
 *   Event `NodeNameTaken` is recorded on it, and the pod bound to it, with its Secret, never
 *   reaches the provider — while a node devicelet registered itself keeps being adopted across a
 *   restart;
 * - a device's own labels reach its node only under the prefix: a bare key is re-keyed, reserved
 *   keys are dropped with a `DeviceLabelRefused` Event.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startDevicelet, type RunningDevicelet } from "../support/devicelet.ts";
import { eventually } from "../support/eventually.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import { uniqueName } from "../support/testenv.ts";
import { isReady, pod, type PodJson } from "../support/workloads.ts";

const id = uniqueName("trust");
const ns = id;
const foreign = `${id}-worker`;
const own = `${id}-own`;
let devicelet: RunningDevicelet;

interface NodeJson {
  metadata: {
    name: string;
    uid: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
  };
  spec: { providerID?: string; taints?: { key: string; value?: string; effect: string }[] };
  status: { capacity?: unknown; nodeInfo?: unknown; daemonEndpoints?: unknown; conditions?: unknown[] };
}
interface EventJson {
  type: string;
  reason: string;
  message: string;
  count?: number;
}

const nodeEvents = async (node: string, reason: string) =>
  (
    await getJson<{ items: EventJson[] }>([
      "events",
      "-A",
      "--field-selector",
      `involvedObject.kind=Node,involvedObject.name=${node},reason=${reason}`,
    ])
  ).items;

let foreignBefore: NodeJson;

/**
 * Nothing of devicelet's on someone else's Node. (The control plane's own controllers may still
 * add a not-ready taint, conditions or a TTL annotation to a Node no kubelet heartbeats.)
 */
async function expectUntouched(): Promise<void> {
  const now = await getJson<NodeJson>(["node", foreign]);
  expect(now.metadata.labels).toEqual(foreignBefore.metadata.labels);
  expect(Object.keys(now.metadata.annotations ?? {}).filter((k) => k.includes("devicelet"))).toEqual([]);
  expect(now.spec.providerID).toBeUndefined();
  expect(now.spec.taints).toContainEqual({ key: "dedicated", value: "infra", effect: "NoSchedule" });
  expect(now.spec.taints?.map((t) => t.key)).not.toContain("virtual-kubelet.io/provider");
  expect(now.status.capacity).toEqual(foreignBefore.status.capacity);
  expect(now.status.nodeInfo).toEqual(foreignBefore.status.nodeInfo);
  expect(now.status.daemonEndpoints).toEqual(foreignBefore.status.daemonEndpoints);
  const conditions = (now.status.conditions ?? []) as { type: string; reason?: string }[];
  expect(conditions.map((c) => c.type)).not.toContain("DeviceConnected");
  expect(conditions.map((c) => c.reason)).not.toContain("KubeletReady");
}

beforeAll(async () => {
  await kubectl(["create", "namespace", ns]);
  // A plain Node, as kubeadm registers one: its own labels, a taint, a status, no providerID.
  await kubectl(["create", "-f", "-"], {
    input: JSON.stringify({
      apiVersion: "v1",
      kind: "Node",
      metadata: {
        name: foreign,
        labels: { "kubernetes.io/hostname": foreign, "node-role.kubernetes.io/worker": "" },
      },
      spec: { taints: [{ key: "dedicated", value: "infra", effect: "NoSchedule" }] },
      status: {
        capacity: { cpu: "8", memory: "32Gi", pods: "110" },
        allocatable: { cpu: "8", memory: "32Gi", pods: "110" },
        nodeInfo: { kubeletVersion: "v1.36.3", osImage: "Ubuntu 24.04", architecture: "amd64" },
      },
    }),
  });
  foreignBefore = await getJson<NodeJson>(["node", foreign]);
  await kubectl([
    "create",
    "secret",
    "generic",
    "infra-token",
    "-n",
    ns,
    "--from-literal=token=s3cr3t-node-trust",
  ]);
  // A pod already bound to that Node, mounting a Secret.
  await apply(`apiVersion: v1
kind: Pod
metadata: { name: infra, namespace: ${ns} }
spec:
  nodeName: ${foreign}
  tolerations: [{ operator: Exists }]
  containers:
    - name: app
      image: example/infra:1
      volumeMounts: [{ name: token, mountPath: /var/run/token }]
  volumes:
    - { name: token, secret: { secretName: infra-token } }
`);
  devicelet = await startDevicelet({
    id,
    provider: {
      devices: [
        { id: foreign },
        {
          id: own,
          labels: {
            line: "a",
            "node-role.kubernetes.io/control-plane": "",
            "topology.kubernetes.io/zone": "forged",
          },
        },
      ],
      appStartDelayMs: 50,
    },
    core: { lease: { renewIntervalSeconds: 2 } },
    expectNodes: 1,
  });
});

afterAll(async () => {
  await devicelet.stop();
  await kubectl(["delete", "namespace", ns, "--wait=false"]);
  await kubectl(["delete", "node", foreign, "--ignore-not-found"]);
  await kubectl(["delete", "node", own, "--ignore-not-found"]);
});

describe("a device whose node name belongs to someone else", () => {
  it("is refused: the Node is untouched, an Event says why, its pod never reaches the device", async () => {
    const [event] = await eventually(async () => {
      const events = await nodeEvents(foreign, "NodeNameTaken");
      expect(events).toHaveLength(1);
      return events;
    });
    expect(event?.type).toBe("Warning");
    expect(event?.message).toContain(`node ${foreign} already exists and is not devicelet's`);
    expect(
      devicelet
        .logLines()
        .some((l) => l.reason === "NodeNameTaken" && l.device === foreign && l.level === 40),
    ).toBe(true);

    // devicelet works meanwhile: a pod on its own node runs (so pods have been routed for a while).
    await apply(
      pod({
        namespace: ns,
        name: "mine",
        testId: id,
        node: own,
        spec: "  containers: [{ name: app, image: example/app:1 }]",
      }),
    );
    await eventually(async () =>
      expect(isReady(await getJson<PodJson>(["pod", "mine", "-n", ns]))).toBe(true),
    );

    await expectUntouched();
    await expect(getJson(["lease", foreign, "-n", "kube-node-lease"])).rejects.toThrow(/NotFound/);
    const infra = await getJson<PodJson>(["pod", "infra", "-n", ns]);
    expect(devicelet.mockState().pods.map((p) => p.workload.pod.uid)).not.toContain(infra.metadata.uid);
    expect(infra.status.phase).toBe("Pending");
    expect(infra.status.conditions ?? []).toEqual([]);
  });

  it("keeps adopting the node it registered itself after a restart, and still refuses the other", async () => {
    const ownBefore = await getJson<NodeJson>(["node", own]);
    expect(ownBefore.spec.providerID).toBe(`devicelet://mock/${own}`);
    await devicelet.stop();
    const leaseBefore = await getJson<{ spec: { renewTime: string } }>([
      "lease",
      own,
      "-n",
      "kube-node-lease",
    ]);
    await devicelet.restart({ waitForRunning: true });
    // The lease moves again: the node is heartbeated by the new process.
    await eventually(async () => {
      const lease = await getJson<{ spec: { renewTime: string } }>(["lease", own, "-n", "kube-node-lease"]);
      expect(lease.spec.renewTime).not.toBe(leaseBefore.spec.renewTime);
    });
    await apply(
      pod({
        namespace: ns,
        name: "after",
        testId: id,
        node: own,
        spec: "  containers: [{ name: app, image: example/app:1 }]",
      }),
    );
    await eventually(async () =>
      expect(isReady(await getJson<PodJson>(["pod", "after", "-n", ns]))).toBe(true),
    );
    const ownAfter = await getJson<NodeJson>(["node", own]);
    expect(ownAfter.metadata.uid).toBe(ownBefore.metadata.uid);
    await expectUntouched();
    const infra = await getJson<PodJson>(["pod", "infra", "-n", ns]);
    expect(devicelet.mockState().pods.map((p) => p.workload.pod.uid)).not.toContain(infra.metadata.uid);
  });
});

describe("a refused device, once the Node of its name is gone", () => {
  it("registers its own node at the next look (every 30 s)", async () => {
    await kubectl(["delete", "pod", "infra", "-n", ns, "--grace-period=0", "--force"]);
    await kubectl(["delete", "node", foreign]);
    const node = await eventually(
      () =>
        getJson<NodeJson>(["node", foreign]).then(
          (n) => (expect(n.spec.providerID).toBe(`devicelet://mock/${foreign}`), n),
        ),
      {
        timeoutMs: 60_000,
      },
    );
    expect(node.metadata.labels?.["devicelet.dev/test"]).toBe(id);
    await apply(
      pod({
        namespace: ns,
        name: "now-mine",
        testId: id,
        node: foreign,
        spec: "  containers: [{ name: app, image: example/app:1 }]",
      }),
    );
    await eventually(async () =>
      expect(isReady(await getJson<PodJson>(["pod", "now-mine", "-n", ns]))).toBe(true),
    );
  });
});

describe("a device's own labels", () => {
  it("reach its node only under the prefix; reserved keys are dropped with an Event", async () => {
    const node = await getJson<NodeJson>(["node", own]);
    const labels = node.metadata.labels ?? {};
    expect(labels["device.devicelet.dev/line"]).toBe("a");
    expect(labels).not.toHaveProperty("node-role.kubernetes.io/control-plane");
    expect(labels).not.toHaveProperty("topology.kubernetes.io/zone");
    const events = await eventually(async () => {
      const found = await nodeEvents(own, "DeviceLabelRefused");
      expect(found.length).toBeGreaterThanOrEqual(1);
      return found;
    });
    expect(events.map((e) => e.message).join("\n")).toContain("node-role.kubernetes.io/control-plane");
  });
});
