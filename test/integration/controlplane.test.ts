import { readFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { readState } from "../../src/testing/controlplane/controlplane.ts";
import { httpsGet } from "../../src/testing/controlplane/process.ts";
import { eventually } from "../support/eventually.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import { deviceletKubeconfig, testenvDir, uniqueName } from "../support/testenv.ts";

const pinned = readFileSync(
  path.resolve(import.meta.dirname, "../../hack/control-plane/versions.sh"),
  "utf8",
).match(/^KUBE_VERSION=(\S+)$/m)?.[1];

interface PodList {
  items: {
    metadata: { ownerReferences?: { kind: string }[] };
    status: { phase: string };
    spec: { nodeName?: string };
  }[];
}

describe("the harness control plane", () => {
  it("reports the pinned server version through kubectl", async () => {
    const version = JSON.parse(await kubectl(["version", "-o", "json"])) as {
      serverVersion: { gitVersion: string };
      clientVersion: { gitVersion: string };
    };
    expect(pinned).toMatch(/^v1\.\d+\.\d+$/);
    expect(version.serverVersion.gitVersion).toBe(pinned);
    expect(version.clientVersion.gitVersion).toBe(pinned);
  });

  it("has healthy scheduler and controller-manager endpoints", async () => {
    const state = readState(testenvDir);
    expect(state).toBeDefined();
    for (const port of [state?.ports.scheduler, state?.ports.controllerManager]) {
      const health = await httpsGet(`https://127.0.0.1:${String(port)}/healthz`, {});
      expect(health).toEqual({ status: 200, body: "ok" });
    }
  });

  it("runs a Deployment through the real controllers; its Pods stay Pending with no node", async () => {
    const ns = uniqueName("cp");
    await kubectl(["create", "namespace", ns]);
    await apply(`apiVersion: apps/v1
kind: Deployment
metadata: { name: web, namespace: ${ns} }
spec:
  replicas: 3
  selector: { matchLabels: { app: web } }
  template:
    metadata: { labels: { app: web } }
    spec:
      containers: [{ name: web, image: example/web:1 }]
`);
    const rs = await eventually(async () => {
      const list = await getJson<{ items: { status: { replicas?: number } }[] }>(["replicasets", "-n", ns]);
      expect(list.items).toHaveLength(1);
      expect(list.items[0]?.status.replicas).toBe(3);
      return list;
    });
    expect(rs.items).toHaveLength(1);
    const pods = await eventually(async () => {
      const list = await getJson<PodList>(["pods", "-n", ns]);
      expect(list.items).toHaveLength(3);
      return list;
    });
    for (const pod of pods.items) {
      expect(pod.metadata.ownerReferences?.[0]?.kind).toBe("ReplicaSet");
      expect(pod.status.phase).toBe("Pending");
      expect(pod.spec.nodeName).toBeUndefined();
    }
    // The scheduler saw them and found no node: an Unschedulable condition, not silence.
    await eventually(async () => {
      const list = await getJson<{
        items: { status: { conditions?: { type: string; reason?: string }[] } }[];
      }>(["pods", "-n", ns]);
      for (const pod of list.items) {
        expect(pod.status.conditions?.find((c) => c.type === "PodScheduled")?.reason).toBe("Unschedulable");
      }
    });
    await kubectl(["delete", "namespace", ns, "--wait=false"]);
  });

  it("gives devicelet its own identity that is not cluster-admin", async () => {
    // `kubectl auth can-i` prints yes or no, and exits 1 for no.
    const can = (verb: string, resource: string, ...extra: string[]) =>
      kubectl(["auth", "can-i", verb, resource, "--all-namespaces", ...extra], {
        kubeconfig: deviceletKubeconfig(),
      }).then(
        (out) => out.trim(),
        (err: unknown) => (err as { stdout?: string }).stdout?.trim() ?? String(err),
      );
    expect(await can("patch", "pods", "--subresource=status")).toBe("yes");
    expect(await can("patch", "pods")).toBe("no");
    expect(await can("create", "nodes")).toBe("yes");
    expect(await can("create", "leases.coordination.k8s.io")).toBe("yes");
    // Only the Node of a device its provider reports gone for good (device-gone.test.ts).
    expect(await can("delete", "nodes")).toBe("yes");
    expect(await can("delete", "leases.coordination.k8s.io")).toBe("no");
    expect(await can("create", "pods")).toBe("no");
    expect(await can("create", "clusterrolebindings")).toBe("no");
    expect(await can("*", "*")).toBe("no");
  });
});
