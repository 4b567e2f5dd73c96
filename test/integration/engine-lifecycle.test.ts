/**
 * devicelet as a process: its leases, what the real node-lifecycle controller makes of it stopping
 * and starting, and adopting running pods after a SIGKILL without creating anything twice.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startDevicelet, type RunningDevicelet } from "../support/devicelet.ts";
import { eventually } from "../support/eventually.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import { uniqueName } from "../support/testenv.ts";
import { condition, deployment, isReady, type PodJson } from "../support/workloads.ts";

const id = uniqueName("life");
const ns = id;
let devicelet: RunningDevicelet;

interface NodeJson {
  metadata: { name: string; uid: string };
  status: { conditions: { type: string; status: string; lastHeartbeatTime?: string }[] };
}
const nodes = async () =>
  (await getJson<{ items: NodeJson[] }>(["nodes", "-l", devicelet.nodeSelector])).items;
const ready = (node: NodeJson) => node.status.conditions.find((c) => c.type === "Ready")?.status;
const pods = async () => (await getJson<{ items: PodJson[] }>(["pods", "-n", ns])).items;
const leaseRenewTime = async (node: NodeJson) =>
  (await getJson<{ spec: { renewTime: string } }>(["lease", node.metadata.name, "-n", "kube-node-lease"]))
    .spec.renewTime;

beforeAll(async () => {
  await kubectl(["create", "namespace", ns]);
  devicelet = await startDevicelet({
    id,
    provider: { devices: { count: 3, idPrefix: id }, appStartDelayMs: 100 },
    core: { lease: { renewIntervalSeconds: 2 }, nodeStatus: { maxIntervalSeconds: 3 } },
    expectNodes: 3,
  });
});

afterAll(async () => {
  await devicelet.stop();
  await kubectl(["delete", "namespace", ns, "--wait=false"]);
});

describe("restart adoption", () => {
  // Its waits add up to 150 s at most, near the default 180 s once the kill and restart are added.
  it(
    "after SIGKILL, a new devicelet adopts running pods: nothing created twice, statuses stay right",
    { timeout: 300_000 },
    async () => {
      await apply(deployment({ namespace: ns, name: "adopt", replicas: 6, testId: id }));
      const before = await eventually(
        async () => {
          const list = await pods();
          expect(list.filter(isReady)).toHaveLength(6);
          return list;
        },
        { timeoutMs: 60_000 },
      );
      await eventually(() => expect(devicelet.mockState().pods.filter((p) => p.running)).toHaveLength(6));
      await devicelet.kill();
      const killedAt = Date.now();
      await devicelet.restart();
      // The nodes are still Ready from before the kill (their leases have not lapsed), so that says
      // nothing: wait until the new process has renewed every node's Lease, then look.
      await eventually(async () => {
        for (const n of await nodes()) expect(Date.parse(await leaseRenewTime(n))).toBeGreaterThan(killedAt);
      });
      expect((await nodes()).map(ready)).toEqual(["True", "True", "True"]);
      await eventually(
        async () => {
          const log = (await import("node:fs")).readFileSync(devicelet.logFile, "utf8");
          expect(log.split("pod controller started").length).toBe(3);
        },
        { timeoutMs: 30_000 },
      );
      const after = await pods();
      expect(after.map((p) => p.metadata.uid).sort()).toEqual(before.map((p) => p.metadata.uid).sort());
      expect(after.every(isReady)).toBe(true);
      // Never reported anything but Ready across the restart: Ready's transition time did not move.
      const readySince = (list: PodJson[]) =>
        Object.fromEntries(list.map((p) => [p.metadata.uid, condition(p, "Ready")?.lastTransitionTime]));
      expect(readySince(after)).toEqual(readySince(before));
      const state = devicelet.mockState();
      for (const p of before) expect(state.createsByUid[p.metadata.uid]).toBe(1);
      expect(state.pods.filter((p) => p.running)).toHaveLength(6);
    },
  );
});

describe("node registration and status", () => {
  it("registers a node again when someone else deletes it", async () => {
    const [victim] = await nodes();
    if (!victim) throw new Error("no node");
    await kubectl(["delete", "node", victim.metadata.name, "--wait=true"]);
    await eventually(async () => {
      const again = await getJson<NodeJson>(["node", victim.metadata.name]);
      expect(again.metadata.uid).not.toBe(victim.metadata.uid);
      expect(ready(again)).toBe("True");
    });
    // Its lease comes back with it (the old one was garbage-collected with the old node).
    await eventually(
      async () => {
        const lease = await getJson<{ metadata: { ownerReferences?: { uid: string }[] } }>([
          "lease",
          victim.metadata.name,
          "-n",
          "kube-node-lease",
        ]);
        const node = await getJson<NodeJson>(["node", victim.metadata.name]);
        expect(lease.metadata.ownerReferences?.[0]?.uid).toBe(node.metadata.uid);
      },
      { timeoutMs: 60_000 },
    );
  });

  it("patches node status at least every nodeStatus.maxIntervalSeconds even when nothing changed", async () => {
    const heartbeat = async () =>
      Date.parse(
        (await nodes())[0]?.status.conditions.find((c) => c.type === "Ready")?.lastHeartbeatTime ?? "",
      );
    const first = await heartbeat();
    expect(first).toBeGreaterThan(0);
    await eventually(async () => expect(await heartbeat()).toBeGreaterThan(first), { timeoutMs: 30_000 });
  });
});

describe("leases and the node-lifecycle controller", () => {
  it("renews each node's Lease", async () => {
    const renewTimes = async () => Promise.all((await nodes()).map(leaseRenewTime));
    const first = await renewTimes();
    for (const t of first) expect(t).toMatch(/\.\d{6}Z$/);
    await eventually(
      async () => {
        const second = await renewTimes();
        second.forEach((t, i) => expect(Date.parse(t)).toBeGreaterThan(Date.parse(first[i] ?? "")));
      },
      { timeoutMs: 30_000 },
    );
  });

  it("nodes go Ready=Unknown when devicelet stops, stay registered, and return to Ready when it starts", async () => {
    expect(await devicelet.stop()).toBe(0);
    await eventually(
      async () => {
        const list = await nodes();
        expect(list).toHaveLength(3);
        for (const n of list) expect(ready(n)).toBe("Unknown");
      },
      { timeoutMs: 150_000, intervalMs: 2_000 },
    );
    await devicelet.restart();
    await eventually(
      async () => {
        for (const n of await nodes()) expect(ready(n)).toBe("True");
      },
      { timeoutMs: 60_000 },
    );
  });
});
