/**
 * LeaderElector against the in-memory API server (resourceVersion conflicts, faults) on a
 * FakeClock: client-go's acquire, renew, expiry-by-observation, loss and release semantics.
 */
import { pino } from "pino";
import { describe, expect, it } from "vitest";
import { FakeClock } from "../base/fake-clock.ts";
import { toMicroTime, type Lease } from "../kube/index.ts";
import { apiError, FakeKube } from "../../test/support/fake-kube.ts";
import { LeaderElector, type LeaderElectorOptions } from "./election.ts";

const logger = pino({ level: "silent" });
const namespace = "devicelet-system";
const name = "devicelet-leader";
const key = `${namespace}/${name}`;

interface Candidate {
  readonly e: LeaderElector;
  readonly events: string[];
  readonly run: AbortController;
  readonly done: Promise<void>;
  readonly leadingSignal: () => AbortSignal | undefined;
}

function setup() {
  const clock = new FakeClock(Date.parse("2026-01-01T00:00:00Z"));
  const kube = new FakeKube({ clock });
  const stop = new AbortController();
  const electors: Candidate[] = [];
  function elector(
    identity: string,
    extra: { releaseOnCancel?: boolean; kube?: LeaderElectorOptions["kube"] } = {},
  ): Candidate {
    const events: string[] = [];
    let leading: AbortSignal | undefined;
    const run = new AbortController();
    stop.signal.addEventListener("abort", () => run.abort());
    const e = new LeaderElector({
      kube,
      namespace,
      name,
      identity,
      clock,
      logger,
      random: () => 0,
      ...extra,
      onStartedLeading: (signal) => {
        leading = signal;
        events.push("started");
      },
      onStoppedLeading: () => events.push("stopped"),
      onNewLeader: (id) => events.push(`leader ${id}`),
    });
    const done = e.run(run.signal);
    const handle = { e, events, run, done, leadingSignal: () => leading };
    electors.push(handle);
    return handle;
  }
  const lease = () => kube.object("leases", key);
  /** Another replica writes the lease as holder, stamping renewTime with `renewTime`. */
  const holdAs = (holder: string, renewTime = clock.now()) =>
    kube.apply("leases", {
      apiVersion: "coordination.k8s.io/v1",
      kind: "Lease",
      metadata: { name, namespace },
      spec: { holderIdentity: holder, leaseDurationSeconds: 15, renewTime: toMicroTime(new Date(renewTime)) },
    });
  const finish = async () => {
    stop.abort();
    // Long enough for a slow request still in flight to be answered.
    await clock.advanceAsync(10_000);
    await Promise.all(electors.map((x) => x.done));
  };
  return { clock, kube, elector, lease, holdAs, finish };
}

describe("LeaderElector", () => {
  it("acquires an absent lease and renews it every retry period", async () => {
    const t = setup();
    const a = t.elector("a");
    await t.clock.advanceAsync(0);
    expect(a.e.isLeader()).toBe(true);
    expect(a.events).toEqual(["leader a", "started"]);
    expect(t.lease()?.spec).toMatchObject({
      holderIdentity: "a",
      leaseDurationSeconds: 15,
      leaseTransitions: 0,
    });
    const first = t.lease()?.spec?.renewTime;
    await t.clock.advanceAsync(2_000);
    expect(t.lease()?.spec?.renewTime).not.toBe(first);
    expect(t.lease()?.spec?.acquireTime).toBe(first);
    await t.finish();
    expect(a.events.at(-1)).toBe("stopped");
  });

  it("of two candidates for an absent lease, exactly one leads", async () => {
    const t = setup();
    const a = t.elector("a");
    const b = t.elector("b");
    await t.clock.advanceAsync(30_000);
    expect([a.e.isLeader(), b.e.isLeader()].filter(Boolean)).toHaveLength(1);
    expect(a.e.leader()).toBe(b.e.leader());
    await t.finish();
  });

  it("does not take a lease that another keeps renewing, and sees it as leader", async () => {
    const t = setup();
    t.holdAs("b");
    const a = t.elector("a");
    for (let i = 0; i < 30; i++) {
      await t.clock.advanceAsync(2_000);
      t.holdAs("b");
    }
    expect(a.e.isLeader()).toBe(false);
    expect(a.e.leader()).toBe("b");
    expect(a.events).toEqual(["leader b"]);
    await t.finish();
  });

  it("judges expiry by its own observation time, not the holder's renewTime (clock skew)", async () => {
    const t = setup();
    // The holder's clock is an hour behind: by renewTime the lease looks long expired, but it was
    // written just now, so it is live for another 15 s of our time.
    t.holdAs("b", t.clock.now() - 3_600_000);
    const a = t.elector("a");
    await t.clock.advanceAsync(14_000);
    expect(a.e.isLeader()).toBe(false);
    // Then the holder dies with its clock an hour ahead: the lease looks valid for an hour by
    // renewTime, but nothing changed for 15 s of our time, so it is expired.
    t.holdAs("b", t.clock.now() + 3_600_000);
    const since = t.clock.now();
    await t.clock.advanceAsync(14_000);
    expect(a.e.isLeader()).toBe(false);
    // Seen at the next try (within a retry period), expired 15 s later, taken at the try after.
    await t.clock.advanceAsync(5_000);
    expect(a.e.isLeader()).toBe(true);
    expect(t.clock.now() - since).toBeLessThanOrEqual(15_000 + 2 * 2_000);
    expect(t.lease()?.spec).toMatchObject({ holderIdentity: "a", leaseTransitions: 1 });
    await t.finish();
  });

  it("loses leadership when renewals fail past the renew deadline, and stops at once", async () => {
    const t = setup();
    const a = t.elector("a");
    await t.clock.advanceAsync(0);
    expect(a.e.isLeader()).toBe(true);
    const signal = a.leadingSignal();
    const since = t.clock.now();
    t.kube.fail("replaceLease", () => apiError(503, "ServiceUnavailable"));
    t.kube.fail("getLease", () => apiError(503, "ServiceUnavailable"));
    await t.clock.advanceAsync(9_000);
    expect(a.e.isLeader()).toBe(true);
    expect(signal?.aborted).toBe(false);
    await t.clock.advanceAsync(1_000);
    expect(t.clock.now() - since).toBe(10_000);
    expect(signal?.aborted).toBe(true);
    expect(a.e.isLeader()).toBe(false);
    expect(a.events).toEqual(["leader a", "started", "stopped"]);
    await t.finish();
  });

  it("counts the renew deadline from when the last good renewal was sent, not answered", async () => {
    const t = setup();
    // Every renewal takes 7 s to be answered: each lands, but a standby may have seen it as early as
    // it was sent, so the leader must step down 10 s after the send of the last one answered.
    const kube: LeaderElectorOptions["kube"] = {
      getLease: (name, ns) => t.kube.getLease(name, ns),
      createLease: (lease) => t.kube.createLease(lease),
      replaceLease: async (lease) => {
        await new Promise<void>((resolve) => t.clock.setTimeout(resolve, 7_000));
        return t.kube.replaceLease(lease);
      },
    };
    const a = t.elector("a", { kube });
    await t.clock.advanceAsync(0);
    // Renewal sent at 2 s is answered at 9 s; the next, sent at 11 s, is still in flight at 12 s.
    await t.clock.advanceAsync(11_999);
    expect(a.e.isLeader()).toBe(true);
    await t.clock.advanceAsync(1);
    expect(a.e.isLeader()).toBe(false);
    expect(a.events).toEqual(["leader a", "started", "stopped"]);
    await t.finish();
  });

  it("on a Conflict re-reads the lease and keeps renewing", async () => {
    const t = setup();
    const a = t.elector("a");
    await t.clock.advanceAsync(0);
    // A user labels the lease: the leader's cached resourceVersion is now stale.
    const current = t.lease() as Lease;
    t.kube.apply("leases", { ...current, metadata: { ...current.metadata, labels: { x: "y" } } });
    await t.clock.advanceAsync(30_000);
    expect(a.e.isLeader()).toBe(true);
    expect(a.events).toEqual(["leader a", "started"]);
    expect(t.lease()?.metadata?.labels).toEqual({ x: "y" });
    expect(Date.parse(t.lease()?.spec?.renewTime ?? "")).toBeGreaterThan(t.clock.now() - 2_001);
    await t.finish();
  });

  it("stops leading as soon as it sees another holder", async () => {
    const t = setup();
    const a = t.elector("a");
    await t.clock.advanceAsync(0);
    t.holdAs("b");
    await t.clock.advanceAsync(4_000);
    expect(a.e.isLeader()).toBe(false);
    expect(a.leadingSignal()?.aborted).toBe(true);
    expect(a.events).toEqual(["leader a", "started", "leader b", "stopped"]);
    await t.finish();
  });

  it("releases the lease on a clean stop, so the standby takes over within a retry period", async () => {
    const t = setup();
    const a = t.elector("a", { releaseOnCancel: true });
    await t.clock.advanceAsync(0);
    const b = t.elector("b");
    await t.clock.advanceAsync(10_000);
    expect(b.e.leader()).toBe("a");
    a.run.abort();
    await a.done;
    expect(a.events.at(-1)).toBe("stopped");
    expect(t.lease()?.spec?.holderIdentity).toBe("");
    const since = t.clock.now();
    await t.clock.advanceAsync(2_000);
    expect(b.e.isLeader()).toBe(true);
    expect(t.clock.now() - since).toBeLessThanOrEqual(2_000);
    await t.finish();
  });

  it("without release, the standby waits a lease duration after a clean stop", async () => {
    const t = setup();
    const a = t.elector("a");
    await t.clock.advanceAsync(0);
    const b = t.elector("b");
    await t.clock.advanceAsync(10_000);
    a.run.abort();
    await a.done;
    expect(t.lease()?.spec?.holderIdentity).toBe("a");
    await t.clock.advanceAsync(12_000);
    expect(b.e.isLeader()).toBe(false);
    await t.clock.advanceAsync(6_000);
    expect(b.e.isLeader()).toBe(true);
    await t.finish();
  });
});
