/**
 * ShardCoordinator: several replicas on one in-memory API server (resourceVersion conflicts,
 * faults) and one FakeClock. Time moves in 250 ms steps and after every step no shard may be
 * served by two replicas: neither by `owned()` nor by the start/stop callbacks (a start while
 * another replica's term of that shard has not stopped is recorded as a violation at once).
 */
import { pino } from "pino";
import { describe, expect, it } from "vitest";
import { FakeClock } from "../base/fake-clock.ts";
import { apiError, FakeKube } from "../../test/support/fake-kube.ts";
import { seededRandom } from "../../test/support/seeded-random.ts";
import {
  SHARD_LEASE_LABEL,
  ShardCoordinator,
  shardLeaseName,
  type ShardCoordinatorOptions,
} from "./coordinator.ts";
import { assignShards } from "./hash.ts";
import { memberLeaseName } from "./membership.ts";

const logger = pino({ level: "silent" });
const namespace = "devicelet-system";
const prefix = "devicelet";
const shards = 8;
const leaseDurationMs = 15_000;
const renewDeadlineMs = 10_000;
const retryPeriodMs = 2_000;
/** The longest wait between two ticks: retryPeriod × (1 + jitter). */
const maxTickMs = retryPeriodMs * 1.2;
const step = 250;

type Kube = ShardCoordinatorOptions["kube"];

/** A replica's own line to the API server, which can be cut: calls then fail, or hang until healed. */
function line(kube: FakeKube) {
  const state = { mode: "open" as "open" | "fail" | "hang", hung: [] as (() => void)[] };
  const through = async <T>(call: () => Promise<T>): Promise<T> => {
    if (state.mode === "hang") await new Promise<void>((resolve) => state.hung.push(resolve));
    if (state.mode !== "open") throw apiError(503, "ServiceUnavailable");
    return call();
  };
  const client: Kube = {
    getLease: (name, ns) => through(() => kube.getLease(name, ns)),
    createLease: (lease) => through(() => kube.createLease(lease)),
    replaceLease: (lease) => through(() => kube.replaceLease(lease)),
    listLeases: (ns, selector) => through(() => kube.listLeases(ns, selector)),
    deleteLease: (name, ns, rv) => through(() => kube.deleteLease(name, ns, rv)),
  };
  return {
    client,
    cut: (mode: "fail" | "hang") => (state.mode = mode),
    /** Hung calls then fail, as timed-out requests do. */
    heal: () => {
      state.mode = "open";
      for (const resume of state.hung.splice(0)) resume();
    },
  };
}

interface Replica {
  readonly identity: string;
  readonly c: ShardCoordinator;
  readonly line: ReturnType<typeof line>;
  readonly run: AbortController;
  readonly done: Promise<void>;
  /** Each term: shard, our clock at start and (once aborted) at stop. */
  readonly terms: { shard: number; signal: AbortSignal; startedAt: number; stoppedAt?: number }[];
}

function setup() {
  const clock = new FakeClock(Date.parse("2026-01-01T00:00:00Z"));
  const kube = new FakeKube({ clock });
  const replicas: Replica[] = [];
  /** Shard → the replica whose term of it has started and not stopped (by the callbacks). */
  const serving = new Map<number, string>();
  const violations: string[] = [];

  function replica(identity: string, extra: Partial<ShardCoordinatorOptions> = {}): Replica {
    const run = new AbortController();
    const own = line(kube);
    const terms: Replica["terms"] = [];
    const c = new ShardCoordinator({
      kube: own.client,
      namespace,
      prefix,
      identity,
      shards,
      logger,
      clock,
      random: seededRandom(replicas.length + 1),
      onShardStarted: (shard, signal) => {
        const other = serving.get(shard);
        if (other !== undefined) violations.push(`${identity} started shard ${shard} served by ${other}`);
        serving.set(shard, identity);
        terms.push({ shard, signal, startedAt: clock.now() });
      },
      onShardStopped: (shard) => {
        if (serving.get(shard) === identity) serving.delete(shard);
        const term = terms.findLast((t) => t.shard === shard);
        if (term) term.stoppedAt = clock.now();
        if (!term?.signal.aborted)
          violations.push(`${identity} stopped shard ${shard} before its signal aborted`);
      },
      ...extra,
    });
    const r = { identity, c, line: own, run, done: c.run(run.signal), terms };
    replicas.push(r);
    return r;
  }

  /** No shard owned by two replicas now, by `owned()`. */
  const checkExclusive = () => {
    const owner = new Map<number, string>();
    for (const r of replicas) {
      for (const shard of r.c.owned()) {
        const other = owner.get(shard);
        if (other !== undefined) violations.push(`shard ${shard} owned by ${other} and ${r.identity}`);
        owner.set(shard, r.identity);
      }
    }
  };
  /** Moves time in steps, checking exclusivity after each. */
  const advance = async (ms: number) => {
    for (let t = 0; t < ms; t += step) {
      await clock.advanceAsync(step);
      checkExclusive();
    }
  };
  /** Shard → owner by `owned()`. */
  const owners = () => {
    const map = new Map<number, string>();
    for (const r of replicas) for (const shard of r.c.owned()) map.set(shard, r.identity);
    return map;
  };
  const holder = (shard: number) =>
    kube.object("leases", `${namespace}/${shardLeaseName(prefix, shard)}`)?.spec;
  const finish = async () => {
    for (const r of replicas) {
      r.line.heal();
      r.run.abort();
    }
    await clock.advanceAsync(renewDeadlineMs);
    await Promise.all(replicas.map((r) => r.done));
  };
  return { clock, kube, replica, advance, owners, holder, violations, finish };
}

/** Each identity's shards by rendezvous over `members`. */
const expected = (members: string[]) => {
  const owners = assignShards(shards, members);
  return new Map(members.map((m) => [m, owners.flatMap((o, shard) => (o === m ? [shard] : []))]));
};

describe("ShardCoordinator", () => {
  it("splits the shards between three replicas by rendezvous, each owned exactly once", async () => {
    const t = setup();
    const rs = ["a", "b", "c"].map((id) => t.replica(id));
    await t.advance(10_000);
    const want = expected(["a", "b", "c"]);
    for (const r of rs) {
      expect(r.c.members()).toEqual(["a", "b", "c"]);
      expect(r.c.owned()).toEqual(want.get(r.identity));
    }
    expect([...t.owners().keys()].sort()).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    for (let shard = 0; shard < shards; shard++) {
      expect(t.holder(shard)?.holderIdentity).toBe(t.owners().get(shard));
      const lease = t.kube.object("leases", `${namespace}/${shardLeaseName(prefix, shard)}`);
      expect(lease?.metadata?.labels?.[SHARD_LEASE_LABEL]).toBe(prefix);
    }
    const owner = rs.find((r) => r.c.owned().length > 0) as Replica;
    const device = Array.from({ length: 100 }, (_, i) => `gw-${i}`).find((id) => owner.c.owns(id));
    expect(device).toBeDefined();
    expect(rs.filter((r) => r.c.owns(device ?? ""))).toEqual([owner]);
    await t.finish();
    expect(t.violations).toEqual([]);
  });

  it("moves a cut-off replica's shards to the others after the lease duration, never to two at once", async () => {
    const t = setup();
    const rs = ["a", "b", "c"].map((id) => t.replica(id));
    await t.advance(10_000);
    // The replica that serves shard 0 loses the API server: it can neither renew nor release.
    const victim = rs.find((r) => r.c.owned().includes(0)) as Replica;
    const moved = victim.c.owned();
    const survivors = rs.filter((r) => r !== victim).map((r) => r.identity);
    const killedAt = t.clock.now();
    victim.line.cut("fail");
    await t.advance(30_000);

    // Fenced: the victim stopped serving within the renew deadline of its last renewal.
    for (const term of victim.terms) expect(term.stoppedAt).toBeLessThanOrEqual(killedAt + renewDeadlineMs);
    expect(victim.c.owned()).toEqual([]);
    // Every one of its shards started on a survivor, one lease duration after its last renewal
    // (sent at most a retry period before the cut) and at most two ticks after that.
    for (const shard of moved) {
      const term = rs
        .flatMap((r) => r.terms.map((x) => ({ ...x, who: r.identity })))
        .find((x) => x.shard === shard && x.who !== victim.identity);
      expect(survivors).toContain(term?.who);
      const after = (term?.startedAt ?? Infinity) - killedAt;
      expect(after).toBeGreaterThanOrEqual(leaseDurationMs - retryPeriodMs);
      expect(after).toBeLessThanOrEqual(leaseDurationMs + 2 * maxTickMs);
    }
    const want = expected(survivors);
    for (const r of rs) if (r !== victim) expect(r.c.owned()).toEqual(want.get(r.identity));
    expect(t.owners().size).toBe(shards);
    await t.finish();
    expect(t.violations).toEqual([]);
  });

  it("a joining replica gets its shards released to it within two ticks; nothing else moves", async () => {
    const t = setup();
    const a = t.replica("a");
    const b = t.replica("b");
    await t.advance(10_000);
    const before = { a: a.c.owned(), b: b.c.owned() };
    const joinedAt = t.clock.now();
    const c = t.replica("c");
    await t.advance(10_000);
    const want = expected(["a", "b", "c"]);
    expect(c.c.owned()).toEqual(want.get("c"));
    expect(c.c.owned().length).toBeGreaterThan(0);
    expect(a.c.owned()).toEqual(before.a.filter((s) => !c.c.owned().includes(s)));
    expect(b.c.owned()).toEqual(before.b.filter((s) => !c.c.owned().includes(s)));
    // Each handed over by a release, not by waiting for expiry.
    for (const term of c.terms) expect(term.startedAt - joinedAt).toBeLessThanOrEqual(3 * maxTickMs);
    expect(t.owners().size).toBe(shards);
    await t.finish();
    expect(t.violations).toEqual([]);
  });

  it.each(["fail", "hang"] as const)(
    "fencing: when renewals %s, every shard signal aborts within the renew deadline",
    async (mode) => {
      const t = setup();
      const a = t.replica("a");
      await t.advance(4_000);
      expect(a.c.owned()).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
      const b = t.replica("b");
      await t.advance(6_000);
      const kept = a.c.owned();
      expect(kept.length).toBeGreaterThan(0);
      const cutAt = t.clock.now();
      a.line.cut(mode);
      await t.advance(renewDeadlineMs - retryPeriodMs);
      // Not before: its last good renewal was sent at most a retry period before the cut.
      expect(a.c.owned()).toEqual(kept);
      await t.advance(retryPeriodMs);
      expect(a.c.owned()).toEqual([]);
      for (const term of a.terms.filter((x) => kept.includes(x.shard) && x.stoppedAt !== undefined))
        expect(term.stoppedAt).toBeLessThanOrEqual(cutAt + renewDeadlineMs);
      expect(a.terms.every((x) => x.signal.aborted)).toBe(true);
      // b, alone live now, takes them all once they expire.
      await t.advance(15_000);
      expect(b.c.owned()).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
      await t.finish();
      expect(t.violations).toEqual([]);
    },
  );

  it("fencing: a shard whose first renewal never lands stops a renew deadline after it was taken", async () => {
    const t = setup();
    const a = t.replica("a");
    await t.clock.advanceAsync(0);
    expect(a.c.owned()).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    a.line.cut("hang");
    await t.advance(renewDeadlineMs - step);
    expect(a.c.owned()).toHaveLength(shards);
    await t.advance(step);
    expect(a.c.owned()).toEqual([]);
    const takenAt = a.terms[0]?.startedAt ?? NaN;
    expect(a.terms.map((x) => x.stoppedAt)).toEqual(new Array(shards).fill(takenAt + renewDeadlineMs));
    await t.finish();
  });

  it("on a clean stop releases its shards and leaves, so the others take over within two ticks", async () => {
    const t = setup();
    const a = t.replica("a");
    const b = t.replica("b");
    await t.advance(10_000);
    const moved = a.c.owned();
    expect(moved.length).toBeGreaterThan(0);
    a.run.abort();
    await a.done;
    const stoppedAt = t.clock.now();
    expect(a.c.owned()).toEqual([]);
    for (const shard of moved) expect(t.holder(shard)?.holderIdentity).toBe("");
    expect(t.kube.object("leases", `${namespace}/${memberLeaseName(prefix, "a")}`)).toBeUndefined();
    await t.advance(2 * maxTickMs);
    expect(b.c.owned()).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    for (const shard of moved) {
      const term = b.terms.find((x) => x.shard === shard && x.startedAt >= stoppedAt);
      expect((term?.startedAt ?? Infinity) - stoppedAt).toBeLessThanOrEqual(2 * maxTickMs);
    }
    await t.finish();
    expect(t.violations).toEqual([]);
  });

  it("without releaseOnCancel, a stopped replica's shards wait for its leases to expire", async () => {
    const t = setup();
    const a = t.replica("a", { releaseOnCancel: false });
    const b = t.replica("b");
    await t.advance(10_000);
    const moved = a.c.owned();
    a.run.abort();
    await a.done;
    for (const shard of moved) expect(t.holder(shard)?.holderIdentity).toBe("a");
    await t.advance(leaseDurationMs - retryPeriodMs);
    expect(b.c.owned().filter((s) => moved.includes(s))).toEqual([]);
    await t.advance(2 * maxTickMs + retryPeriodMs);
    expect(b.c.owned()).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    await t.finish();
    expect(t.violations).toEqual([]);
  });

  it("stops a shard's work before releasing it: an asynchronous stop is awaited", async () => {
    const t = setup();
    const winding: (() => void)[] = [];
    const a = t.replica("a", {
      onShardStopped: () => new Promise<void>((resolve) => winding.push(resolve)),
    });
    await t.advance(4_000);
    const b = t.replica("b");
    await t.advance(6_000);
    const moving = expected(["a", "b"]).get("b") ?? [];
    expect(moving.length).toBeGreaterThan(0);
    // a stopped them (signals aborted) but its work is still winding down: the Leases stay a's.
    expect(a.c.owned()).toEqual(expected(["a", "b"]).get("a"));
    for (const shard of moving) expect(t.holder(shard)?.holderIdentity).toBe("a");
    expect(b.c.owned()).toEqual([]);
    expect(winding).toHaveLength(moving.length);
    for (const done of winding) done();
    await t.advance(2 * maxTickMs);
    expect(b.c.owned()).toEqual(moving);
    await t.finish();
  });

  it("a shard Lease deleted under its holder stops it at its next renewal and is not re-created for a lease duration", async () => {
    const t = setup();
    const a = t.replica("a");
    await t.advance(4_000);
    expect(a.c.owned()).toContain(3);
    const key = `${namespace}/${shardLeaseName(prefix, 3)}`;
    t.kube.remove("leases", key);
    const deletedAt = t.clock.now();
    await t.advance(retryPeriodMs);
    expect(a.c.owned()).not.toContain(3);
    await t.advance(leaseDurationMs - 2 * retryPeriodMs);
    expect(t.kube.object("leases", key)).toBeUndefined();
    await t.advance(2 * maxTickMs + retryPeriodMs);
    expect(a.c.owned()).toContain(3);
    const retaken = a.terms.findLast((x) => x.shard === 3);
    expect((retaken?.startedAt ?? 0) - deletedAt).toBeGreaterThanOrEqual(leaseDurationMs);
    await t.finish();
  });

  it("keeps serving what it holds while it is the only member it can see", async () => {
    const t = setup();
    const a = t.replica("a");
    await t.advance(4_000);
    // Its own member Lease can no longer be written (renewals conflict), its shard Leases can.
    t.kube.fail("replaceLease", (args) => {
      const name = (args[0] as { metadata?: { name?: string } }).metadata?.name ?? "";
      return name.includes("-member-") ? apiError(409, "Conflict") : undefined;
    });
    t.kube.fail("getLease", () => apiError(503, "ServiceUnavailable"));
    await t.advance(30_000);
    expect(a.c.members()).toEqual([]);
    expect(a.c.owned()).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    await t.finish();
  });

  it("refuses options that would break fencing or name no valid Lease", () => {
    const base = {
      kube: new FakeKube(),
      namespace,
      prefix,
      identity: "a",
      shards,
      logger,
      onShardStarted: () => undefined,
      onShardStopped: () => undefined,
    };
    expect(() => new ShardCoordinator({ ...base, prefix: "Bad_Prefix" })).toThrow(/DNS label/);
    expect(() => new ShardCoordinator({ ...base, identity: "" })).toThrow(/identity/);
    expect(() => new ShardCoordinator({ ...base, shards: 0 })).toThrow(/shard count/);
    expect(() => new ShardCoordinator({ ...base, renewDeadlineMs: 15_000 })).toThrow(/leaseDuration/);
    expect(() => new ShardCoordinator({ ...base, retryPeriodMs: 9_000 })).toThrow(/retryPeriod/);
    expect(() => new ShardCoordinator({ ...base, leaseDurationMs: 15_500 })).toThrow(/whole seconds/);
  });
});
