/**
 * The engine on the real control plane: the real scheduler binds pods to devicelet's mock device
 * nodes; devicelet runs them on the provider and reports the truth back.
 */
import { readFileSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startDevicelet, type RunningDevicelet } from "../support/devicelet.ts";
import { eventually } from "../support/eventually.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import { testenvDir, uniqueName } from "../support/testenv.ts";
import { condition, deployment, isReady, pod, type PodJson } from "../support/workloads.ts";

const id = uniqueName("pods");
const ns = id;
let devicelet: RunningDevicelet;

const pods = async (selector?: string) =>
  (await getJson<{ items: PodJson[] }>(["pods", "-n", ns, ...(selector ? ["-l", selector] : [])])).items;
const getPod = (name: string) => getJson<PodJson>(["pod", name, "-n", ns]);
const held = () => devicelet.mockState().pods.filter((p) => p.workload.pod.namespace === ns);

beforeAll(async () => {
  await kubectl(["create", "namespace", ns]);
  devicelet = await startDevicelet({
    id,
    // Apps start 1.5 s after the device gets them, longer than the default first-status wait (1 s):
    // with the wait raised to 10 s (room for a loaded CI machine too) each start is one write.
    provider: { devices: { count: 10, idPrefix: id, capacity: { pods: "12" } }, appStartDelayMs: 1_500 },
    core: { pods: { firstStatusWaitMs: 10_000 } },
    expectNodes: 10,
  });
});

afterAll(async () => {
  await devicelet.stop();
  await kubectl(["delete", "namespace", ns, "--wait=false"]);
});

describe("device nodes", () => {
  it("are registered with the labels, taint, providerID, capacity and conditions of a kubelet", async () => {
    const nodes = await getJson<{
      items: {
        metadata: { name: string; labels: Record<string, string> };
        spec: { providerID?: string; taints?: { key: string; value: string; effect: string }[] };
        status: {
          capacity: Record<string, string>;
          conditions: { type: string; status: string }[];
          daemonEndpoints: { kubeletEndpoint: { Port: number } };
        };
      }[];
    }>(["nodes", "-l", devicelet.nodeSelector]);
    expect(nodes.items).toHaveLength(10);
    for (const node of nodes.items) {
      expect(node.metadata.labels).toMatchObject({
        type: "virtual-kubelet",
        "kubernetes.io/os": expect.any(String) as string,
        "kubernetes.io/arch": expect.any(String) as string,
        "kubernetes.io/hostname": node.metadata.name,
        "devicelet.dev/transport": "mock",
      });
      expect(node.metadata.labels["devicelet.dev/device-id"]).toMatch(new RegExp(`^${id}`));
      expect(node.spec.taints).toContainEqual({
        key: "virtual-kubelet.io/provider",
        value: "devicelet",
        effect: "NoSchedule",
      });
      expect(node.spec.providerID).toMatch(/^devicelet:\/\/mock\//);
      expect(node.status.capacity.pods).toBe("12");
      expect(node.status.daemonEndpoints.kubeletEndpoint.Port).toBeGreaterThan(0);
      expect(node.status.conditions.find((c) => c.type === "Ready")?.status).toBe("True");
      expect(node.status.conditions.find((c) => c.type === "DeviceConnected")?.status).toBe("True");
    }
  });
});

describe("a Deployment of 30 replicas", () => {
  it("is scheduled by the real scheduler across ten nodes, reaches Running and Ready, and scales to zero", async () => {
    await apply(deployment({ namespace: ns, name: "fleet", replicas: 30, testId: id }));
    const running = await eventually(
      async () => {
        const list = await pods("app=fleet");
        expect(list).toHaveLength(30);
        expect(list.filter(isReady)).toHaveLength(30);
        return list;
      },
      { timeoutMs: 120_000 },
    );
    const nodesUsed = new Set(running.map((p) => p.spec.nodeName));
    expect(nodesUsed.size).toBeGreaterThanOrEqual(3);
    expect(new Set(running.map((p) => p.status.podIP)).size).toBe(30);
    for (const p of running) {
      expect(p.status.containerStatuses?.[0]?.state.running).toBeDefined();
      expect(condition(p, "ContainersReady")?.status).toBe("True");
      expect(condition(p, "Initialized")?.status).toBe("True");
      expect(condition(p, "PodScheduled")?.status).toBe("True");
    }
    await eventually(() => {
      expect(held().filter((p) => p.running)).toHaveLength(30);
    });
    // One API write per pod start when the device reports Running within pods.firstStatusWaitMs:
    // the status, Running at once, never Pending before it; and nothing else in the namespace
    // (audit log of the harness API server, batched ~1 s).
    await eventually(
      () => {
        const writes = auditWrites(ns);
        const byPod = new Map<string, string[]>();
        for (const w of writes.filter((w) => w.resource === "pods"))
          byPod.set(w.name, [...(byPod.get(w.name) ?? []), `${w.verb} ${w.subresource}`]);
        expect(byPod.size).toBe(30);
        expect(new Set([...byPod.values()].map((calls) => calls.join()))).toEqual(new Set(["patch status"]));
        expect(writes).toHaveLength(30);
      },
      { timeoutMs: 15_000 },
    );

    await kubectl(["scale", "deployment/fleet", "-n", ns, "--replicas=0"]);
    await eventually(
      async () => {
        expect(await pods("app=fleet")).toHaveLength(0);
        expect(held()).toHaveLength(0);
      },
      { timeoutMs: 90_000 },
    );
  });
});

interface AuditWrite {
  verb: string;
  resource: string;
  subresource: string;
  name: string;
}

/** Writes (create/update/patch/delete) devicelet made in `namespace`, from the harness audit log. */
function auditWrites(namespace: string): AuditWrite[] {
  const lines = readFileSync(path.join(testenvDir, "audit.log"), "utf8").split("\n");
  const out: AuditWrite[] = [];
  for (const line of lines) {
    if (!line.includes(namespace)) continue;
    const e = JSON.parse(line) as {
      stage: string;
      verb: string;
      user: { username: string };
      objectRef?: { resource: string; subresource?: string; namespace?: string; name?: string };
    };
    if (
      e.stage !== "ResponseComplete" ||
      e.user.username !== "devicelet" ||
      e.objectRef?.namespace !== namespace
    )
      continue;
    if (!["create", "update", "patch", "delete"].includes(e.verb)) continue;
    out.push({
      verb: e.verb,
      resource: e.objectRef.resource,
      subresource: e.objectRef.subresource ?? "",
      name: e.objectRef.name ?? "",
    });
  }
  return out;
}

describe("ConfigMaps and Secrets", () => {
  const container = (env: string) => `  containers:
    - name: app
      image: example/app:1
      env:
${env}`;

  it("leaves a pod Waiting with CreateContainerConfigError while a mandatory ConfigMap is missing, then recovers", async () => {
    await apply(
      pod({
        namespace: ns,
        name: "needs-cm",
        testId: id,
        spec: container(`        - name: MODE
          valueFrom: { configMapKeyRef: { name: later-cm, key: mode } }`),
      }),
    );
    await eventually(async () => {
      const p = await getPod("needs-cm");
      expect(p.status.phase).toBe("Pending");
      expect(p.status.containerStatuses?.[0]?.state.waiting?.reason).toBe("CreateContainerConfigError");
    });
    expect(held().find((h) => h.workload.pod.name === "needs-cm")).toBeUndefined();
    const events = await getJson<{ items: { reason: string; involvedObject: { name: string } }[] }>([
      "events",
      "-n",
      ns,
    ]);
    expect(
      events.items.some(
        (e) => e.reason === "MandatoryConfigMapNotFound" && e.involvedObject.name === "needs-cm",
      ),
    ).toBe(true);

    await kubectl(["create", "configmap", "later-cm", "-n", ns, "--from-literal=mode=eco"]);
    await eventually(async () => expect(isReady(await getPod("needs-cm"))).toBe(true), { timeoutMs: 30_000 });
    const workload = held().find((h) => h.workload.pod.name === "needs-cm")?.workload as unknown as {
      apps: { env: Record<string, string> }[];
    };
    expect(workload.apps[0]?.env.MODE).toBe("eco");
  });

  it("skips a missing optional ConfigMap and Secret and runs the pod, recording why", async () => {
    await apply(
      pod({
        namespace: ns,
        name: "optional",
        testId: id,
        spec: container(`        - name: A
          valueFrom: { configMapKeyRef: { name: absent-cm, key: a, optional: true } }
        - name: B
          valueFrom: { secretKeyRef: { name: absent-secret, key: b, optional: true } }`),
      }),
    );
    await eventually(async () => expect(isReady(await getPod("optional"))).toBe(true));
    const events = await getJson<{ items: { reason: string; involvedObject: { name: string } }[] }>([
      "events",
      "-n",
      ns,
    ]);
    const reasons = events.items.filter((e) => e.involvedObject.name === "optional").map((e) => e.reason);
    expect(reasons).toContain("OptionalConfigMapNotFound");
    expect(reasons).toContain("OptionalSecretNotFound");
  });

  it("waits for a mandatory Secret the same way and passes its value to the device", async () => {
    await apply(
      pod({
        namespace: ns,
        name: "needs-secret",
        testId: id,
        spec: container(`        - name: TOKEN
          valueFrom: { secretKeyRef: { name: later-secret, key: token } }`),
      }),
    );
    await eventually(async () => {
      const p = await getPod("needs-secret");
      expect(p.status.containerStatuses?.[0]?.state.waiting?.reason).toBe("CreateContainerConfigError");
    });
    const events = await getJson<{ items: { reason: string; involvedObject: { name: string } }[] }>([
      "events",
      "-n",
      ns,
    ]);
    expect(
      events.items.some(
        (e) => e.reason === "MandatorySecretNotFound" && e.involvedObject.name === "needs-secret",
      ),
    ).toBe(true);
    await kubectl(["create", "secret", "generic", "later-secret", "-n", ns, "--from-literal=token=s3cret"]);
    await eventually(async () => expect(isReady(await getPod("needs-secret"))).toBe(true), {
      timeoutMs: 30_000,
    });
    expect(readFileSync(devicelet.logFile, "utf8")).not.toContain("s3cret");
  });
});

describe("refusing what the provider cannot do", () => {
  it("fails a pod that needs an unsupported field, naming the field", async () => {
    await apply(
      pod({
        namespace: ns,
        name: "hostpath",
        testId: id,
        spec: `  volumes:
    - name: host
      hostPath: { path: /var/data }
  containers:
    - name: app
      image: example/app:1
      volumeMounts: [{ name: host, mountPath: /data }]`,
      }),
    );
    const failed = await eventually(async () => {
      const p = await getPod("hostpath");
      expect(p.status.phase).toBe("Failed");
      return p;
    });
    expect(failed.status.reason).toBe("Unsupported");
    expect(failed.status.message).toContain("spec.volumes[0].hostPath");
    expect(held().find((h) => h.workload.pod.name === "hostpath")).toBeUndefined();
  });
});

describe("deleting pods", () => {
  const plain = `  containers:
    - name: app
      image: example/app:1`;

  it("graceful delete stops the work on the provider, then removes the pod once the provider confirms", async () => {
    await apply(pod({ namespace: ns, name: "graceful", testId: id, spec: plain }));
    await eventually(async () => expect(isReady(await getPod("graceful"))).toBe(true));
    const started = Date.now();
    await kubectl(["delete", "pod", "graceful", "-n", ns, "--wait=false"]);
    await eventually(async () => {
      const list = await pods();
      expect(list.find((p) => p.metadata.name === "graceful")).toBeUndefined();
    });
    // Confirmed by the provider, not by the 30 s grace period running out.
    expect(Date.now() - started).toBeLessThan(25_000);
    // The mock writes its state file about 50 ms after a change.
    await eventually(() => expect(held().find((h) => h.workload.pod.name === "graceful")).toBeUndefined());
  });

  it("force delete (grace 0) removes the work from the provider", async () => {
    await apply(pod({ namespace: ns, name: "forced", testId: id, spec: plain }));
    await eventually(async () => expect(isReady(await getPod("forced"))).toBe(true));
    await kubectl(["delete", "pod", "forced", "-n", ns, "--grace-period=0", "--force"]);
    await eventually(() => expect(held().find((h) => h.workload.pod.name === "forced")).toBeUndefined());
  });
});
