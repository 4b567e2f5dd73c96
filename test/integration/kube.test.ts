/**
 * src/kube against the real API server of the harness control plane, as devicelet's own
 * least-privilege identity. Set-up and assertions go through kubectl as cluster-admin, so nothing
 * of the client under test checks itself.
 */
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  EventRecorder,
  Informer,
  createKubeClient,
  isConflict,
  isNotFound,
  isMicroTime,
  toKubeTime,
  toMicroTime,
  type KubeClient,
  type Lease,
  type Pod,
  type PodStatus,
} from "../../src/kube/index.ts";
import { eventually } from "../support/eventually.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import { deviceletKubeconfig, uniqueName } from "../support/testenv.ts";

const logger = pino({ level: process.env.DEVICELET_TEST_LOG ?? "silent" });
const ns = uniqueName("kube");
const nodeName = uniqueName("kube-node");
let kube: KubeClient;
let nodeUid = "";

/** Real microseconds: wall-clock milliseconds with the sub-millisecond fraction of performance.now(). */
const nowMicro = () => toMicroTime(performance.timeOrigin + performance.now());

function podManifest(name: string): string {
  return `apiVersion: v1
kind: Pod
metadata: { name: ${name}, namespace: ${ns} }
spec:
  nodeName: ${nodeName}
  tolerations: [{ operator: Exists }]
  containers: [{ name: app, image: example/app:1 }]
`;
}

function runningStatus(podIP: string): PodStatus {
  const now = toKubeTime();
  return {
    phase: "Running",
    podIP,
    podIPs: [{ ip: podIP }],
    startTime: now,
    conditions: ["PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready", "PodScheduled"].map(
      (type) => ({ type, status: "True", lastTransitionTime: now }),
    ),
    containerStatuses: [
      {
        name: "app",
        image: "example/app:1",
        imageID: "",
        ready: true,
        started: true,
        restartCount: 0,
        state: { running: { startedAt: now } },
      },
    ],
  };
}

beforeAll(async () => {
  kube = createKubeClient({ kubeconfigPath: deviceletKubeconfig(), qps: 50, burst: 100, logger });
  await kubectl(["create", "namespace", ns]);
  // The pods' node, registered the way devicelet registers one.
  const node = await kube.createNode({
    metadata: { name: nodeName, labels: { type: "virtual-kubelet", "kubernetes.io/hostname": nodeName } },
    spec: { providerID: `devicelet://${nodeName}` },
  });
  nodeUid = node.metadata?.uid ?? "";
  await kube.patchNodeStatus(nodeName, {
    conditions: [
      {
        type: "Ready",
        status: "True",
        reason: "KubeletReady",
        message: "test",
        lastHeartbeatTime: toKubeTime(),
        lastTransitionTime: toKubeTime(),
      },
    ],
  });
});

afterAll(async () => {
  await kube.close();
  await kubectl(["delete", "namespace", ns, "--wait=false"]);
  await kubectl(["delete", "node", nodeName, "--wait=false"]);
});

describe("kube client against the real API server", () => {
  it("registers and patches a node, and finds it by label", async () => {
    expect(nodeUid).not.toBe("");
    const got = await kube.getNode(nodeName);
    expect(got?.status?.conditions?.find((c) => c.type === "Ready")?.status).toBe("True");
    await kube.patchNode(nodeName, { metadata: { labels: { "devicelet.io/test": ns } } });
    const listed = await kube.listNodes(`devicelet.io/test=${ns}`);
    expect(listed.items.map((n) => n.metadata?.name)).toEqual([nodeName]);
    expect(listed.resourceVersion).not.toBe("");
    expect(await kube.getNode(uniqueName("missing"))).toBeUndefined();
  });

  it("sets and removes a Node's label in its status patch, as the status subresource takes labels", async () => {
    const condition = (message: string) => ({
      type: "Ready",
      status: "True",
      reason: "KubeletReady",
      message,
      lastHeartbeatTime: toKubeTime(),
      lastTransitionTime: toKubeTime(),
    });
    const set = await kube.patchNodeStatus(
      nodeName,
      { conditions: [condition("with the label")] },
      { labels: { "devicelet.dev/in-sync": "true" } },
    );
    expect(set.metadata?.labels?.["devicelet.dev/in-sync"]).toBe("true");
    const got = await kube.getNode(nodeName);
    expect(got?.metadata?.labels?.["devicelet.dev/in-sync"]).toBe("true");
    expect(got?.status?.conditions?.[0]?.message).toBe("with the label");
    const removed = await kube.patchNodeStatus(
      nodeName,
      { conditions: [condition("without it")] },
      { labels: { "devicelet.dev/in-sync": null } },
    );
    expect(removed.metadata?.labels).not.toHaveProperty("devicelet.dev/in-sync");
    expect(removed.metadata?.labels?.["kubernetes.io/hostname"]).toBe(nodeName);
    expect(removed.status?.conditions?.[0]?.message).toBe("without it");
  });

  it("creates a node Lease and renews it by patch with microsecond renewTime; a missing one is NotFound", async () => {
    const acquired = nowMicro();
    const created = await kube.createLease({
      metadata: {
        name: nodeName,
        ownerReferences: [{ apiVersion: "v1", kind: "Node", name: nodeName, uid: nodeUid }],
      },
      spec: {
        holderIdentity: nodeName,
        leaseDurationSeconds: 40,
        acquireTime: acquired,
        renewTime: acquired,
      },
    });
    expect(created.spec?.renewTime).toBe(acquired);

    const renewed = nowMicro();
    const patched = await kube.patchLeaseSpec(nodeName, "kube-node-lease", { renewTime: renewed });
    expect(patched.metadata?.resourceVersion).not.toBe(created.metadata?.resourceVersion);

    // Read back by kubectl: stored with all six fractional digits, exactly as sent; the rest kept.
    const stored = await getJson<Lease>(["lease", nodeName, "-n", "kube-node-lease"]);
    const renewTime = stored.spec?.renewTime ?? "";
    expect(isMicroTime(renewTime)).toBe(true);
    expect(renewTime).toBe(renewed);
    expect(stored.spec?.acquireTime).toBe(acquired);
    expect(stored.spec?.holderIdentity).toBe(nodeName);

    const missing = kube.patchLeaseSpec(uniqueName("gone"), "kube-node-lease", { renewTime: nowMicro() });
    await expect(missing).rejects.toSatisfy(isNotFound);
  });

  it("replaces a Lease with its resourceVersion; a stale one is a Conflict (the leader Lease)", async () => {
    // The leader Lease: the one Lease the harness lets devicelet read and replace in a namespace.
    const created = await kube.createLease({
      metadata: { name: "devicelet", namespace: ns },
      spec: { holderIdentity: "a", leaseDurationSeconds: 15, renewTime: nowMicro() },
    });
    const replaced = await kube.replaceLease({
      ...created,
      spec: { ...created.spec, renewTime: nowMicro() },
    });
    expect(replaced.metadata?.resourceVersion).not.toBe(created.metadata?.resourceVersion);
    // A second writer holding the old resourceVersion loses.
    const stale = kube.replaceLease({ ...created, spec: { ...created.spec, holderIdentity: "other" } });
    await expect(stale).rejects.toSatisfy(isConflict);
    expect((await kube.getLease("devicelet", ns))?.spec?.holderIdentity).toBe("a");
  });

  it("the API server refuses a MicroTime with three fractional digits (why toMicroTime exists)", async () => {
    const name = uniqueName("lease");
    const refused = apply(`apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: { name: ${name}, namespace: ${ns} }
spec: { holderIdentity: x, renewTime: "2026-11-02T10:20:30.123Z" }
`);
    await expect(refused).rejects.toThrow(/renewTime|MicroTime|cannot parse|parsing time/i);
  });

  it("merge-patches pod status with a uid precondition; a wrong uid or stale resourceVersion is a Conflict", async () => {
    const name = uniqueName("pod");
    await apply(podManifest(name));
    // Read as the admin: devicelet's RBAC has no `get pods` (it never reads one pod by name).
    const pod = await eventually(async () => {
      const p = await getJson<Pod>(["pod", name, "-n", ns]);
      expect(p.metadata?.uid).toBeTruthy();
      return p;
    });
    const uid = pod.metadata?.uid ?? "";

    const patched = await kube.patchPodStatus({
      namespace: ns,
      name,
      uid,
      status: runningStatus("10.0.0.7"),
    });
    // The answer is the pod's metadata only, as stored after the write.
    expect(patched.kind).toBe("PartialObjectMetadata");
    expect(patched).not.toHaveProperty("status");
    const stored = await getJson<Pod>(["pod", name, "-n", ns]);
    expect(patched.metadata?.uid).toBe(uid);
    expect(patched.metadata?.resourceVersion).toBe(stored.metadata?.resourceVersion);
    expect(stored.status?.phase).toBe("Running");
    expect(stored.status?.podIP).toBe("10.0.0.7");
    expect(stored.status?.conditions?.find((c) => c.type === "Ready")?.status).toBe("True");
    expect(stored.status?.containerStatuses?.[0]?.state?.running).toBeDefined();

    // The API server answers 422 "metadata.uid: field is immutable"; the client reports a Conflict.
    const wrongUid = kube.patchPodStatus({
      namespace: ns,
      name,
      uid: "00000000-0000-0000-0000-000000000000",
      status: {},
    });
    await expect(wrongUid).rejects.toSatisfy(isConflict);
    expect((await getJson<Pod>(["pod", name, "-n", ns])).status?.phase).toBe("Running");

    // With a resourceVersion the write is optimistic: the current one works, an old one conflicts.
    const current = patched.metadata?.resourceVersion ?? "";
    const next = await kube.patchPodStatus({
      namespace: ns,
      name,
      uid,
      resourceVersion: current,
      status: { ...runningStatus("10.0.0.8") },
    });
    expect(Number(next.metadata?.resourceVersion)).toBeGreaterThan(Number(current));
    const stale = kube.patchPodStatus({ namespace: ns, name, uid, resourceVersion: current, status: {} });
    await expect(stale).rejects.toSatisfy(isConflict);
    expect((await getJson<Pod>(["pod", name, "-n", ns])).status?.podIP).toBe("10.0.0.8");

    // What this server version (pinned 1.36) does with resourceVersion "0" on a status merge patch:
    // it is taken as "unconditional", like no resourceVersion at all, and the write goes through.
    const zero = await kube.patchPodStatus({
      namespace: ns,
      name,
      uid,
      resourceVersion: "0",
      status: { message: "rv0" },
    });
    const afterZero = await getJson<Pod>(["pod", name, "-n", ns]);
    expect(zero.metadata?.resourceVersion).toBe(afterZero.metadata?.resourceVersion);
    expect(afterZero.status?.message).toBe("rv0");
    expect(afterZero.status?.podIP).toBe("10.0.0.8");
  });

  it("deletes a pod only with its uid; a missing pod is not an error", async () => {
    const name = uniqueName("pod");
    await apply(podManifest(name));
    const uid = (await getJson<Pod>(["pod", name, "-n", ns])).metadata?.uid ?? "";
    expect(
      await kube.deletePod({
        namespace: ns,
        name,
        uid: "00000000-0000-0000-0000-000000000000",
        gracePeriodSeconds: 0,
      }),
    ).toBe(false);
    expect((await getJson<Pod>(["pod", name, "-n", ns])).metadata?.uid).toBe(uid);
    expect(await kube.deletePod({ namespace: ns, name, uid, gracePeriodSeconds: 0 })).toBe(true);
    await eventually(async () => {
      expect(await kubectl(["get", "pod", name, "-n", ns, "--ignore-not-found", "-o", "name"])).toBe("");
    });
    expect(await kube.deletePod({ namespace: ns, name, uid, gracePeriodSeconds: 0 })).toBe(false);
  });

  it("reads ConfigMaps and Secrets, undefined when missing", async () => {
    await kubectl(["create", "configmap", "cfg", "-n", ns, "--from-literal=a=1"]);
    await kubectl(["create", "secret", "generic", "sec", "-n", ns, "--from-literal=p=s3cret"]);
    expect((await kube.getConfigMap(ns, "cfg"))?.data).toEqual({ a: "1" });
    expect((await kube.getSecret(ns, "sec"))?.data).toEqual({ p: Buffer.from("s3cret").toString("base64") });
    expect(await kube.getConfigMap(ns, "nope")).toBeUndefined();
    expect(await kube.getSecret(ns, "nope")).toBeUndefined();
  });

  it("aggregates repeated Events into one with a count", async () => {
    const name = uniqueName("pod");
    await apply(podManifest(name));
    const uid = (await getJson<Pod>(["pod", name, "-n", ns])).metadata?.uid ?? "";
    const events = new EventRecorder({ client: kube, logger });
    const ref = { kind: "Pod", apiVersion: "v1", namespace: ns, name, uid };
    for (let i = 0; i < 5; i++) {
      events.warning(ref, "MandatoryConfigMapNotFound", `configmap missing (${i})`);
      await events.flush();
    }
    events.normal({ kind: "Node", apiVersion: "v1", name: nodeName, uid: nodeUid }, "Registered", "hello");
    await events.close();
    const list = await getJson<{
      items: { reason: string; count: number; message: string; source: { component: string } }[];
    }>(["events", "-n", ns, "--field-selector", `involvedObject.name=${name}`]);
    expect(list.items).toHaveLength(1);
    expect(list.items[0]).toMatchObject({
      reason: "MandatoryConfigMapNotFound",
      count: 5,
      message: "configmap missing (4)",
      source: { component: "devicelet" },
    });
    const nodeEvents = await getJson<{ items: unknown[] }>([
      "events",
      "-n",
      "default",
      "--field-selector",
      `involvedObject.name=${nodeName},source=devicelet`,
    ]);
    expect(nodeEvents.items).toHaveLength(1);
  });

  it("an informer sees pods added, updated and deleted, and the budget counted every call", async () => {
    const before = kube.budget.counts();
    // As devicelet watches: all namespaces, filtered server-side to the pods bound to its node(s).
    const informer = new Informer<Pod>({
      client: kube,
      logger,
      path: "/api/v1/pods",
      fieldSelector: `spec.nodeName=${nodeName}`,
    });
    informer.addIndex("node", (p) => p.spec?.nodeName);
    const seen: string[] = [];
    informer.onAdd((p) => seen.push(`add ${p.metadata?.name ?? ""}`));
    informer.onUpdate((p) => seen.push(`update ${p.metadata?.name ?? ""} ${p.status?.phase ?? ""}`));
    informer.onDelete((p) => seen.push(`delete ${p.metadata?.name ?? ""}`));
    const controller = new AbortController();
    const done = informer.start(controller.signal);
    await informer.ready;
    const initial = informer.size;

    const name = uniqueName("watched");
    await apply(podManifest(name));
    const pod = await eventually(() => {
      const p = informer.getByName(ns, name);
      expect(p).toBeDefined();
      return p as Pod;
    });
    expect(pod.metadata?.managedFields).toBeUndefined();
    const uid = pod.metadata?.uid ?? "";
    await kube.patchPodStatus({ namespace: ns, name, uid, status: runningStatus("10.0.0.9") });
    await eventually(() => {
      expect(informer.getByName(ns, name)?.status?.phase).toBe("Running");
    });
    // A user's graceful delete waits for the node; devicelet's final delete removes the object.
    await kubectl(["delete", "pod", name, "-n", ns, "--wait=false"]);
    await eventually(() => {
      expect(informer.getByName(ns, name)?.metadata?.deletionTimestamp).toBeDefined();
    });
    await kube.deletePod({ namespace: ns, name, uid, gracePeriodSeconds: 0 });
    await eventually(() => {
      expect(informer.getByName(ns, name)).toBeUndefined();
    });
    expect(seen).toContain(`add ${name}`);
    expect(seen).toContain(`update ${name} Running`);
    expect(seen.at(-1)).toBe(`delete ${name}`);
    expect(informer.size).toBe(initial);
    expect(informer.byIndex("node", nodeName)).toHaveLength(initial);
    expect(informer.list().every((p) => p.spec?.nodeName === nodeName)).toBe(true);
    controller.abort();
    await done;

    const after = kube.budget.counts();
    const delta = (key: string) => (after[key] ?? 0) - (before[key] ?? 0);
    expect(delta("list pods")).toBe(1);
    expect(delta("watch pods")).toBeGreaterThanOrEqual(1);
    expect(delta("patch pods/status")).toBe(1);
    expect(delta("delete pods")).toBe(1);
    // And the whole file's traffic is accounted for by verb and resource.
    expect(after).toMatchObject({
      "create nodes": 1,
      "patch nodes/status": 3,
      "create leases": 2,
      "patch leases": 2,
      "update leases": 2,
    });
    expect(kube.budget.total(["create", "update", "patch", "delete"])).toBeGreaterThan(10);
  });
});
