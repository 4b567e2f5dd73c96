/**
 * ShardLease on its own: writes to one shard's Lease never overlap, and a stop that queues behind
 * an acquire in flight still stops the term that acquire starts.
 */
import { pino } from "pino";
import { describe, expect, it } from "vitest";
import { FakeClock } from "../base/fake-clock.ts";
import type { Lease } from "../kube/index.ts";
import { FakeKube } from "../../test/support/fake-kube.ts";
import { ShardLease } from "./shard-lease.ts";

describe("ShardLease", () => {
  it("a stop behind a slow acquire stops the term it started, and the shard is idle only once released", async () => {
    const clock = new FakeClock(Date.parse("2026-01-01T00:00:00Z"));
    const kube = new FakeKube({ clock });
    const slow = Promise.withResolvers<undefined>();
    const slowRelease = Promise.withResolvers<undefined>();
    const events: string[] = [];
    const shard = new ShardLease({
      kube: {
        getLease: (name, ns) => kube.getLease(name, ns),
        createLease: async (lease: Lease) => {
          await slow.promise;
          return kube.createLease(lease);
        },
        replaceLease: async (lease) => {
          await slowRelease.promise;
          return kube.replaceLease(lease);
        },
      },
      namespace: "ns",
      name: "devicelet-shard-0",
      shard: 0,
      identity: "a",
      labels: {},
      leaseDurationMs: 15_000,
      renewDeadlineMs: 10_000,
      retryPeriodMs: 2_000,
      logger: pino({ level: "silent" }),
      clock,
      onStarted: (signal) => {
        events.push("started");
        signal.addEventListener("abort", () => events.push("aborted"));
      },
      onStopped: () => {
        events.push("stopped");
      },
    });
    const acquired = shard.acquire(undefined);
    const stopped = shard.stop(true);
    expect(shard.idle()).toBe(false);
    slow.resolve(undefined);
    expect(await acquired).toBe(true);
    await clock.settle();
    // The acquire has settled and the work stopped; the release is being written: nothing else
    // may start on this shard yet.
    expect(events).toEqual(["started", "aborted", "stopped"]);
    expect(shard.idle()).toBe(false);
    expect(await shard.acquire(undefined)).toBe(false);
    slowRelease.resolve(undefined);
    await stopped;
    expect(events).toEqual(["started", "aborted", "stopped"]);
    expect(shard.held()).toBe(false);
    expect(shard.idle()).toBe(true);
    expect(kube.object("leases", "ns/devicelet-shard-0")?.spec?.holderIdentity).toBe("");
  });
});
