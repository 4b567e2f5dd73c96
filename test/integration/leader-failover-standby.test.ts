/**
 * Two `devicelet run` replicas (mock provider, the same devices and node labels, leader election
 * on with short timings) against the harness control plane:
 * - the standby does nothing anyone can see: in the API server's audit log its only writes are to
 *   the leader Lease (the leader's own writes of nodes, node leases and pods are there, so the
 *   check can fail), it never builds its provider (no mock state file), and both are ready;
 * - on SIGTERM the leader stops, releases the Lease and exits 0, and the standby takes over at its
 *   next retry, well before the lease would have expired;
 * - a leader that loses the Lease (someone else holds it) stops and exits 1 with "leader election lost".
 */
import { existsSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startDevicelet, type RunningDevicelet } from "../support/devicelet.ts";
import { eventually } from "../support/eventually.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import { auditWrites, byReplica, leaderGauge, leaderLease, readyz } from "../support/leader.ts";
import { uniqueName } from "../support/testenv.ts";
import { pod, type PodJson } from "../support/workloads.ts";

const id = uniqueName("lestand");
const ns = id;
const leaseName = "devicelet";
// A lease long enough that a release is told apart from an expiry; 10 + 1 × 2.2 < 40 (node lease).
const timings = { leaseDurationSeconds: 10, renewDeadlineSeconds: 6, retryPeriodSeconds: 1 };
const replicas: RunningDevicelet[] = [];

const replica = async (name: string, expectNodes?: number) => {
  const started = await startDevicelet({
    id,
    provider: { devices: { count: 3, idPrefix: `${id}-` }, appStartDelayMs: 50 },
    core: {
      state: { namespace: ns },
      leaderElection: { enabled: true, leaseName, identity: `${id}-${name}`, ...timings },
    },
    ...(expectNodes === undefined ? {} : { expectNodes }),
  });
  replicas.push(started);
  return started;
};

const holder = async () => (await leaderLease(ns, leaseName))?.spec?.holderIdentity;
const renewedAt = async () => Date.parse((await leaderLease(ns, leaseName))?.spec?.renewTime ?? "");

beforeAll(async () => {
  await kubectl(["create", "namespace", ns]);
});

afterAll(async () => {
  for (const r of replicas) await r.stop();
  await kubectl(["delete", "namespace", ns, "--wait=false"]);
});

describe("two replicas with leader election", () => {
  it("the standby writes nothing but its try at the leader Lease, and both are ready", async () => {
    const a = await replica("a", 3);
    await eventually(async () => expect(await holder()).toBe(`${id}-a`));
    const b = await replica("b");
    await eventually(async () => {
      expect(await readyz(a)).toBe(200);
      expect(await readyz(b)).toBe(200);
    });
    // Both serve /metrics; only the leader says it leads.
    expect(await leaderGauge(a)).toBe(1);
    expect(await leaderGauge(b)).toBe(0);
    // Work for the leader while the standby watches.
    await apply(
      pod({
        namespace: ns,
        name: "app",
        testId: id,
        spec: "  containers:\n    - { name: app, image: example/app:1 }",
      }),
    );
    await eventually(async () =>
      expect((await getJson<PodJson>(["pod", "app", "-n", ns])).status.phase).toBe("Running"),
    );
    // A window of several leader renewals, in which the standby tried to acquire several times.
    const since = await renewedAt();
    await eventually(async () => expect(await renewedAt()).toBeGreaterThanOrEqual(since + 4_000), {
      timeoutMs: 30_000,
    });
    expect(await holder()).toBe(`${id}-a`);

    // The audit log is written in batches (≤ 1 s): the leader's writes of this window show first.
    await eventually(() => {
      const leader = auditWrites(byReplica(`${id}-a`));
      const kinds = new Set(leader.map((w) => `${w.resource}/${w.subresource}`));
      expect(kinds).toContain("nodes/");
      expect(kinds).toContain("leases/");
      expect(kinds).toContain("pods/status");
      expect(leader.some((w) => w.namespace === "kube-node-lease")).toBe(true);
      expect(leader.filter((w) => w.resource === "leases" && w.name === leaseName).length).toBeGreaterThan(3);
    });
    // Not a single write: a standby only reads a lease someone holds (it writes it once expired).
    expect(auditWrites(byReplica(`${id}-b`))).toEqual([]);
    // Its provider was never built or started: the mock keeps no state.
    expect(existsSync(b.stateFile)).toBe(false);
    expect(b.logLines().map((l) => l.msg)).not.toContain("devicelet is running");
  });

  it("on SIGTERM the leader releases the Lease and exits 0; the standby takes over at its next retry", async () => {
    const [a, b] = replicas as [RunningDevicelet, RunningDevicelet];
    const stoppedAt = Date.now();
    expect(await a.stop()).toBe(0);
    await eventually(async () => expect(await holder()).toBe(`${id}-b`), { timeoutMs: 30_000 });
    const takeoverMs = Date.now() - stoppedAt;
    const lease = await leaderLease(ns, leaseName);
    console.log(`takeover after SIGTERM of the leader: ${takeoverMs} ms`);
    expect(a.logLines().map((l) => l.msg)).toContain("released the leader lease");
    // An expiry would take a whole lease duration after the last renewal; a release, one retry.
    expect(takeoverMs).toBeLessThan(timings.leaseDurationSeconds * 1000);
    expect(lease?.spec?.leaseTransitions).toBeGreaterThanOrEqual(1);
    await eventually(() => expect(b.logLines().map((l) => l.msg)).toContain("devicelet is running"));
    expect(await leaderGauge(b)).toBe(1);
    // The new leader runs the pod on its own provider and keeps the nodes.
    await eventually(() => expect(b.mockState().pods.map((p) => p.workload.pod.name)).toEqual(["app"]));
    const nodes = await getJson<{ items: { status: { conditions: { type: string; status: string }[] } }[] }>([
      "nodes",
      "-l",
      b.nodeSelector,
    ]);
    expect(nodes.items.map((n) => n.status.conditions.find((c) => c.type === "Ready")?.status)).toEqual([
      "True",
      "True",
      "True",
    ]);
  });

  it("a leader that loses the Lease stops and exits 1 with 'leader election lost'", async () => {
    const b = replicas[1] as RunningDevicelet;
    const lease = await leaderLease(ns, leaseName);
    expect(lease?.spec?.holderIdentity).toBe(`${id}-b`);
    // Someone else holds it now (as a replica that took over an expired lease would).
    await kubectl([
      "patch",
      "lease",
      leaseName,
      "-n",
      ns,
      "--type=merge",
      "-p",
      JSON.stringify({ spec: { holderIdentity: `${id}-intruder` } }),
    ]);
    expect(await b.exited()).toBe(1);
    const messages = b.logLines().map((l) => l.msg);
    expect(messages).toContain("leader election lost");
    expect(messages).not.toContain("devicelet stopped");
    // It stopped at once and did not take the lease back.
    expect(await holder()).toBe(`${id}-intruder`);
  });
});
