/**
 * Membership against the in-memory API server on a FakeClock: who is live is judged by when we saw
 * each member Lease change (never by its renewTime), we count ourselves only while our own
 * renewals land, we leave by deleting our Lease, and dead members' Leases are cleaned up.
 */
import { pino } from "pino";
import { describe, expect, it } from "vitest";
import { FakeClock } from "../base/fake-clock.ts";
import { toMicroTime } from "../kube/index.ts";
import { apiError, FakeKube } from "../../test/support/fake-kube.ts";
import {
  Membership,
  SHARD_COUNT_ANNOTATION,
  SHARD_MEMBER_LABEL,
  memberLeaseName,
  type MembershipOptions,
} from "./membership.ts";

const namespace = "devicelet-system";
const prefix = "devicelet";

function setup(extra: Partial<MembershipOptions> = {}) {
  const clock = new FakeClock(Date.parse("2026-01-01T00:00:00Z"));
  const kube = new FakeKube({ clock });
  const lines: string[] = [];
  const logger = pino({ level: "error" }, { write: (line: string) => lines.push(line) });
  const m = new Membership({
    kube,
    namespace,
    prefix,
    identity: "a",
    shards: 8,
    leaseDurationMs: 15_000,
    renewDeadlineMs: 10_000,
    retryPeriodMs: 2_000,
    logger,
    clock,
    ...extra,
  });
  /** Another replica writes its member Lease, stamping renewTime with `renewTime`. */
  const renewAs = (identity: string, renewTime = clock.now(), shards = 8) => {
    const name = memberLeaseName(prefix, identity);
    const current = kube.object("leases", `${namespace}/${name}`);
    return kube.apply("leases", {
      apiVersion: "coordination.k8s.io/v1",
      kind: "Lease",
      metadata: {
        ...current?.metadata,
        name,
        namespace,
        labels: { [SHARD_MEMBER_LABEL]: prefix },
        annotations: { [SHARD_COUNT_ANNOTATION]: String(shards) },
      },
      spec: {
        holderIdentity: identity,
        leaseDurationSeconds: 15,
        renewTime: toMicroTime(new Date(renewTime)),
      },
    });
  };
  return { clock, kube, m, renewAs, lines };
}

describe("memberLeaseName", () => {
  it("is <prefix>-member-<identity> for an identity that is a valid name", () => {
    expect(memberLeaseName("devicelet", "devicelet-7d9f-x2k")).toBe("devicelet-member-devicelet-7d9f-x2k");
  });

  it("turns any other identity into a valid name that keeps two identities apart", () => {
    const a = memberLeaseName("devicelet", "Host_1234");
    const b = memberLeaseName("devicelet", "host-1234");
    expect(a).toMatch(/^devicelet-member-host-1234-[0-9a-f]{10}$/);
    expect(a).not.toBe(b);
    const long = memberLeaseName("devicelet", "X".repeat(400));
    expect(long.length).toBeLessThanOrEqual(253);
    expect(long).toMatch(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/);
    expect(memberLeaseName("devicelet", "__")).toMatch(/^devicelet-member-[0-9a-f]{10}$/);
  });
});

describe("Membership", () => {
  it("writes its labelled Lease and counts itself and every other live member, sorted", async () => {
    const t = setup();
    t.renewAs("c");
    t.renewAs("b");
    expect(t.m.members()).toEqual([]);
    await t.m.renew();
    await t.m.refresh();
    expect(t.m.members()).toEqual(["a", "b", "c"]);
    const own = t.kube.object("leases", `${namespace}/devicelet-member-a`);
    expect(own?.metadata?.labels?.[SHARD_MEMBER_LABEL]).toBe(prefix);
    expect(own?.metadata?.annotations?.[SHARD_COUNT_ANNOTATION]).toBe("8");
    expect(own?.spec).toMatchObject({ holderIdentity: "a", leaseDurationSeconds: 15 });
    // Leases of another fleet are not members.
    t.kube.apply("leases", {
      metadata: { name: "other-member-x", namespace, labels: { [SHARD_MEMBER_LABEL]: "other" } },
      spec: { holderIdentity: "x", leaseDurationSeconds: 15 },
    });
    await t.m.refresh();
    expect(t.m.members()).toEqual(["a", "b", "c"]);
  });

  it("judges a member dead by how long its Lease stood still by our clock, not by its renewTime", async () => {
    const t = setup();
    const stop = new AbortController();
    await t.m.renew();
    const running = t.m.run(stop.signal);
    // b's clock is an hour behind, c's an hour ahead: both are renewing, so both are live.
    for (let i = 0; i < 10; i++) {
      t.renewAs("b", t.clock.now() - 3_600_000);
      t.renewAs("c", t.clock.now() + 3_600_000);
      await t.m.refresh();
      expect(t.m.members()).toEqual(["a", "b", "c"]);
      await t.clock.advanceAsync(2_000);
    }
    // Then c dies (its last renewTime an hour in the future) and b keeps renewing.
    const since = t.clock.now();
    for (let i = 0; i < 7; i++) {
      t.renewAs("b");
      await t.m.refresh();
      expect(t.m.members()).toContain("c");
      await t.clock.advanceAsync(2_000);
    }
    await t.clock.advanceAsync(1_000);
    await t.m.refresh();
    expect(t.clock.now() - since).toBe(15_000);
    expect(t.m.members()).toEqual(["a", "b"]);
    stop.abort();
    await running;
  });

  it("drops itself once its own renewals have failed for the renew deadline", async () => {
    const t = setup();
    const stop = new AbortController();
    await t.m.renew();
    const running = t.m.run(stop.signal);
    await t.clock.advanceAsync(4_000);
    const cutAt = t.clock.now();
    t.kube.fail("replaceLease", () => apiError(503, "ServiceUnavailable"));
    await t.clock.advanceAsync(9_999);
    expect(t.m.isMember()).toBe(true);
    await t.clock.advanceAsync(1);
    // Its last good renewal was sent at the cut: it counts itself for the renew deadline after it.
    expect(t.clock.now() - cutAt).toBe(10_000);
    expect(t.m.isMember()).toBe(false);
    expect(t.m.members()).toEqual([]);
    stop.abort();
    await running;
  });

  it("re-creates its Lease when someone deleted it", async () => {
    const t = setup();
    await t.m.renew();
    t.kube.remove("leases", `${namespace}/devicelet-member-a`);
    await t.m.renew();
    await t.m.renew();
    expect(t.kube.object("leases", `${namespace}/devicelet-member-a`)?.spec?.holderIdentity).toBe("a");
  });

  it("leaves by deleting its Lease", async () => {
    const t = setup();
    await t.m.renew();
    await t.m.leave();
    expect(t.kube.object("leases", `${namespace}/devicelet-member-a`)).toBeUndefined();
    expect(t.m.isMember()).toBe(false);
  });

  it("deletes the Lease of a member dead for forgetAfterMs, not a live one", async () => {
    const t = setup({ forgetAfterMs: 60_000 });
    t.renewAs("dead");
    for (let i = 0; i < 31; i++) {
      t.renewAs("b");
      await t.m.refresh();
      await t.clock.advanceAsync(2_000);
    }
    expect(t.kube.object("leases", `${namespace}/devicelet-member-dead`)).toBeUndefined();
    expect(t.kube.object("leases", `${namespace}/devicelet-member-b`)).toBeDefined();
  });

  it("logs a live member that uses another shard count, once", async () => {
    const t = setup();
    t.renewAs("b", t.clock.now(), 16);
    await t.m.refresh();
    await t.m.refresh();
    expect(t.lines).toHaveLength(1);
    expect(JSON.parse(t.lines[0] ?? "{}")).toMatchObject({ member: "b", theirs: 16, ours: 8 });
  });
});
