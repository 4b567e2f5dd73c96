/**
 * Heartbeats that cannot starve or die. devicelet talks to the real API server through a
 * fault-injecting proxy (test/support/fault-proxy.ts):
 * - lease calls answered 429 or 503, or never answered at all: every node's Lease stays younger
 *   than its duration throughout (a renewal that hangs times out and is retried; a failed first
 *   renewal does not end the heartbeat);
 * - the default lane saturated by pod status writes (a tiny `api.qps` and many pods): leases,
 *   which have a lane of their own, keep being renewed on time.
 * Lease ages are read from the API server directly with cluster-admin, not through the proxy.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startDevicelet, type RunningDevicelet } from "../support/devicelet.ts";
import { eventually } from "../support/eventually.ts";
import { isLeaseRequest, startFaultProxy, type FaultProxy } from "../support/fault-proxy.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import { uniqueName } from "../support/testenv.ts";
import { deployment, isReady, type PodJson } from "../support/workloads.ts";

interface LeaseJson {
  metadata: { name: string };
  spec: { renewTime?: string; leaseDurationSeconds?: number };
}
interface NodeJson {
  metadata: { name: string };
  status: { conditions: { type: string; status: string }[] };
}

const LEASE_DURATION_S = 40;

/** The age in seconds of each of `names`' Leases now (Infinity when one is missing). */
async function leaseAges(names: readonly string[]): Promise<Map<string, number>> {
  const leases = (await getJson<{ items: LeaseJson[] }>(["leases", "-n", "kube-node-lease"])).items;
  const byName = new Map(leases.map((l) => [l.metadata.name, l]));
  const now = Date.now();
  return new Map(
    names.map((n) => {
      const renew = byName.get(n)?.spec.renewTime;
      return [n, renew ? (now - Date.parse(renew)) / 1000 : Infinity];
    }),
  );
}

const nodeNames = async (selector: string) =>
  (await getJson<{ items: NodeJson[] }>(["nodes", "-l", selector])).items.map((n) => n.metadata.name);

/** Samples lease ages every 2 s until `until` resolves true; returns the oldest age seen per node. */
async function watchLeases(names: readonly string[], until: () => Promise<boolean>) {
  const oldest = new Map(names.map((n) => [n, 0]));
  let samples = 0;
  for (;;) {
    const ages = await leaseAges(names);
    samples++;
    for (const [n, age] of ages) oldest.set(n, Math.max(oldest.get(n) ?? 0, age));
    if (await until()) break;
    await new Promise((r) => setTimeout(r, 2_000));
  }
  return { oldest, samples };
}

describe("leases under API server faults", () => {
  const id = uniqueName("hbflt");
  let proxy: FaultProxy;
  let devicelet: RunningDevicelet;

  beforeAll(async () => {
    proxy = await startFaultProxy({
      seed: 11,
      rules: [
        { match: isLeaseRequest, fail: { share: 0.1, status: 429 } },
        { match: isLeaseRequest, fail: { share: 0.1, status: 503 }, hang: 0.05 },
      ],
    });
    devicelet = await startDevicelet({
      id,
      provider: { devices: { count: 8, idPrefix: id } },
      core: { kubeconfig: proxy.kubeconfig },
      expectNodes: 8,
    });
  });

  afterAll(async () => {
    await devicelet.stop();
    await proxy.stop();
  });

  it("keeps every lease younger than its duration while lease calls fail and hang", async () => {
    const names = await nodeNames(devicelet.nodeSelector);
    expect(names).toHaveLength(8);
    // Every node gets its Lease, faults or not (a failed first renewal does not end the heartbeat)…
    await eventually(
      async () => {
        const ages = await leaseAges(names);
        expect([...ages.values()].every(Number.isFinite)).toBe(true);
      },
      { timeoutMs: 60_000 },
    );
    // …and from then on none is ever older than its duration.
    const started = Date.now();
    const { oldest, samples } = await watchLeases(names, () =>
      Promise.resolve(Date.now() - started > 100_000),
    );
    // The faults really happened, several of each kind.
    const stats = proxy.stats();
    expect(stats.hung).toBeGreaterThanOrEqual(3);
    expect(stats.failed[429] ?? 0).toBeGreaterThanOrEqual(3);
    expect(stats.failed[503] ?? 0).toBeGreaterThanOrEqual(3);
    expect(samples).toBeGreaterThan(20);
    expect(Math.max(...oldest.values())).toBeLessThan(LEASE_DURATION_S);
    const nodes = (await getJson<{ items: NodeJson[] }>(["nodes", "-l", devicelet.nodeSelector])).items;
    for (const node of nodes)
      expect(node.status.conditions.find((c) => c.type === "Ready")?.status).toBe("True");
  });
});

describe("leases while the pod-status path is saturated", () => {
  const id = uniqueName("hbsat");
  const ns = id;
  const replicas = 100;
  let devicelet: RunningDevicelet;

  beforeAll(async () => {
    await kubectl(["create", "namespace", ns]);
    devicelet = await startDevicelet({
      id,
      provider: { devices: { count: 8, idPrefix: id }, appStartDelayMs: 0 },
      // Two requests a second for everything but heartbeats: 100 pods’ status writes and Events
      // queue for about a minute behind it.
      core: { api: { qps: 2, burst: 2 } },
      expectNodes: 8,
    });
  });

  afterAll(async () => {
    await kubectl(["delete", "deployment", "sat", "-n", ns, "--wait=false"]).catch(() => undefined);
    await devicelet.stop();
    await kubectl(["delete", "namespace", ns, "--wait=false"]);
  });

  // Its waits add up to 6 minutes at most (the watch's 240 s, then 120 s), beyond the default.
  it(
    "renews every lease on time while pod status writes wait for the budget",
    { timeout: 420_000 },
    async () => {
      const names = await nodeNames(devicelet.nodeSelector);
      await apply(deployment({ namespace: ns, name: "sat", replicas, testId: id }));
      const started = Date.now();
      let readyAt30s: number | undefined;
      const readyPods = async () =>
        (await getJson<{ items: PodJson[] }>(["pods", "-n", ns])).items.filter(isReady).length;
      const { oldest } = await watchLeases(names, async () => {
        const ready = await readyPods();
        if (readyAt30s === undefined && Date.now() - started > 30_000) readyAt30s = ready;
        return ready === replicas || Date.now() - started > 240_000;
      });
      // The default lane really was saturated: 30 s in, many pods still waited for a status write.
      expect(readyAt30s).toBeDefined();
      expect(readyAt30s ?? replicas).toBeLessThan(replicas * 0.9);
      await eventually(async () => expect(await readyPods()).toBe(replicas), { timeoutMs: 120_000 });
      expect(Math.max(...oldest.values())).toBeLessThan(LEASE_DURATION_S);
    },
  );
});
