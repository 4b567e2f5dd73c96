/**
 * The kubelet API as `devicelet run` serves it, called directly on each node's port the way the
 * API server and metrics-server call a kubelet: one devicelet (mock provider) with two nodes, a
 * serving certificate from files (signed by the harness CA, made here with openssl), the real
 * authenticator, and the API server's own kubelet client certificate. Each node answers for
 * itself on its own port: its pods, its running pods, its stats.
 */
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startDevicelet, type RunningDevicelet } from "../support/devicelet.ts";
import { eventually } from "../support/eventually.ts";
import {
  kubeletGet,
  kubeletPorts,
  servingCertificate,
  type KubeletAnswer,
} from "../support/kubelet-client.ts";
import { apply, kubectl } from "../support/kubectl.ts";
import { uniqueName } from "../support/testenv.ts";
import { pod } from "../support/workloads.ts";

const id = uniqueName("kserve");
const ns = id;
const dir = mkdtempSync(path.join(os.tmpdir(), "kubelet-server-"));
let devicelet: RunningDevicelet;
/** Node name → the port it advertises. */
let ports = new Map<string, number>();
let nodeA = "";
let nodeB = "";

/** GET on a node's kubelet port, as the API server calls it (its client certificate) unless `anonymous`. */
function get(node: string, urlPath: string, o: { anonymous?: boolean } = {}): Promise<KubeletAnswer> {
  const port = ports.get(node);
  if (!port) throw new Error(`node ${node} has no kubelet port`);
  return kubeletGet(port, urlPath, o);
}

const podNames = (a: KubeletAnswer) => {
  expect(a.status).toBe(200);
  return (JSON.parse(a.body) as { items: { metadata: { name: string } }[] }).items
    .map((p) => p.metadata.name)
    .sort();
};

/** `noStats`: the mock reports no usage for it (its `devicelet.dev/no-stats` annotation). */
const appPod = (name: string, node: string, noStats = false) => {
  const manifest = pod({
    namespace: ns,
    name,
    testId: id,
    node,
    spec: `  containers:
    - name: app
      image: example/sensor:1.0
      resources: { requests: { cpu: 100m, memory: 32Mi } }`,
  });
  const meta = `metadata: { name: ${name}, namespace: ${ns} }`;
  return noStats
    ? manifest.replace(
        meta,
        `metadata: { name: ${name}, namespace: ${ns}, annotations: { devicelet.dev/no-stats: "y" } }`,
      )
    : manifest;
};

beforeAll(async () => {
  await kubectl(["create", "namespace", ns]);
  const tls = servingCertificate(dir);
  devicelet = await startDevicelet({
    id,
    provider: { devices: { count: 2, idPrefix: id }, appStartDelayMs: 50 },
    // port 0: each node gets a port the OS picks, so this test never clashes with anything.
    core: { kubelet: { serve: true, address: "127.0.0.1", port: 0, tls: { source: "files", ...tls } } },
    expectNodes: 2,
  });
  ports = await eventually(async () => {
    const found = await kubeletPorts(devicelet.nodeSelector);
    if (found.size !== 2 || [...found.values()].some((p) => !p))
      throw new Error("nodes have no kubelet port yet");
    return found;
  });
  [nodeA = "", nodeB = ""] = [...ports.keys()].sort();
  await apply(appPod("pa", nodeA));
  await apply(appPod("pq", nodeA, true));
  await apply(appPod("pb", nodeB));
  await apply(appPod("pb2", nodeB));
});

afterAll(async () => {
  await devicelet.stop();
  await kubectl(["delete", "namespace", ns, "--wait=false"]);
  rmSync(dir, { recursive: true, force: true });
});

describe("the kubelet API of devicelet's nodes", () => {
  it("gives each node its own port", () => {
    expect(new Set(ports.values()).size).toBe(2);
  });

  it("answers /healthz, and refuses a caller with no credentials", async () => {
    expect(await get(nodeA, "/healthz")).toMatchObject({ status: 200, body: "ok" });
    const refused = await get(nodeA, "/pods", { anonymous: true });
    expect(refused.status).toBe(401);
    expect(JSON.parse(refused.body)).toMatchObject({ kind: "Status", code: 401 });
  });

  it("lists on /pods only the pods of the node whose port was called", async () => {
    await eventually(async () => {
      expect(podNames(await get(nodeA, "/pods"))).toEqual(["pa", "pq"]);
      expect(podNames(await get(nodeB, "/pods"))).toEqual(["pb", "pb2"]);
    });
  });

  it("drops a deleted pod from /runningpods/ by the time its API object is gone", async () => {
    await eventually(async () => {
      expect(podNames(await get(nodeB, "/runningpods/"))).toEqual(["pb", "pb2"]);
      expect(podNames(await get(nodeA, "/runningpods"))).toEqual(["pa", "pq"]);
    });
    // kubectl delete returns once the pod object is gone: devicelet removes it only once the
    // provider stopped it, and the list is read live, so the first answer after must agree.
    await kubectl(["delete", "pod", "pb2", "-n", ns, "--grace-period=1"]);
    expect(podNames(await get(nodeB, "/runningpods/"))).toEqual(["pb"]);
  });

  it("serves /stats/summary in the kubelet's shape", async () => {
    const summary = await eventually(async () => {
      const answer = await get(nodeA, "/stats/summary");
      expect(answer.status).toBe(200);
      const s = JSON.parse(answer.body) as {
        node: { nodeName: string; startTime: string; cpu?: { usageCoreNanoSeconds: number } };
        pods: {
          podRef: { name: string; namespace: string };
          containers: { name: string; cpu?: unknown }[];
        }[];
      };
      expect(s.pods.find((p) => p.podRef.name === "pa")?.containers[0]?.cpu).toBeDefined();
      return s;
    });
    expect(summary.node.nodeName).toBe(nodeA);
    expect(Date.parse(summary.node.startTime)).toBeGreaterThan(0);
    expect(summary.node.cpu?.usageCoreNanoSeconds).toBeGreaterThan(0);
    expect(summary.pods.map((p) => p.podRef.name).sort()).toEqual(["pa", "pq"]);
    // The pod the device measures nothing for is listed with what is known, without usage.
    expect(summary.pods.find((p) => p.podRef.name === "pq")).toEqual({
      podRef: { name: "pq", namespace: ns, uid: expect.any(String) as string },
      startTime: expect.any(String) as string,
      containers: [{ name: "app", startTime: expect.any(String) as string }],
    });
  });

  it("serves /metrics/resource as Prometheus text that metrics-server reads", async () => {
    const answer = await eventually(async () => {
      const a = await get(nodeA, "/metrics/resource");
      expect(a.body).toContain("container_cpu_usage_seconds_total{");
      return a;
    });
    expect(answer.type).toBe("text/plain; version=0.0.4; charset=utf-8");
    // Every sample line: name, optional labels, a value and (but for resource_scrape_error) a time in ms.
    const samples = answer.body.split("\n").filter((l) => l !== "" && !l.startsWith("#"));
    for (const line of samples) expect(line).toMatch(/^[a-z_]+(\{[^}]*\})? [-+0-9.e]+( \d{13})?$/);
    const series = (name: string) =>
      samples.filter((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `));
    expect(series("node_cpu_usage_seconds_total")).toHaveLength(1);
    expect(series("node_memory_working_set_bytes")).toHaveLength(1);
    expect(series("container_memory_working_set_bytes")).toEqual([
      expect.stringMatching(
        new RegExp(`^container_memory_working_set_bytes\\{container="app",namespace="${ns}",pod="pa"\\} `),
      ),
    ]);
    expect(series("resource_scrape_error")).toEqual(["resource_scrape_error 0"]);
  });
});
