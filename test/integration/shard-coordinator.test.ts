/**
 * Three ShardCoordinators in this process on the harness control plane's real Leases, 8 shards,
 * client-go's timings (lease 15 s, renew deadline 10 s, retry 2 s). Every 100 ms throughout, no
 * shard may be owned by two coordinators. Measured and printed: how long a joining replica waits
 * for the shards handed to it, how long a crashed replica's shards (its signal aborted without
 * releasing anything) take to come back, and how long a clean stop's hand-over takes.
 *
 * The coordinators use the admin kubeconfig: the chart's Role does not grant list and delete on
 * Leases yet (the coordinator is not wired into devicelet).
 */
import { setTimeout as sleep } from "node:timers/promises";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createKubeClient, type KubeClient, type Lease } from "../../src/kube/index.ts";
import { assignShards, SHARD_LEASE_LABEL, ShardCoordinator } from "../../src/shard/index.ts";
import { eventually } from "../support/eventually.ts";
import { getJson, kubectl } from "../support/kubectl.ts";
import { adminKubeconfig, uniqueName } from "../support/testenv.ts";

const logger = pino({ level: process.env.DEVICELET_TEST_LOG ?? "silent" });
const namespace = uniqueName("shard");
const prefix = "devicelet";
const shards = 8;
const leaseDurationMs = 15_000;
const retryPeriodMs = 2_000;

interface Replica {
  readonly identity: string;
  readonly kube: KubeClient;
  readonly c: ShardCoordinator;
  readonly run: AbortController;
  readonly done: Promise<void>;
  /** Date.now() of each shard's starts. */
  readonly started: Map<number, number[]>;
}

const replicas: Replica[] = [];
const violations: string[] = [];

function replica(identity: string, releaseOnCancel: boolean): Replica {
  const kube = createKubeClient({ kubeconfigPath: adminKubeconfig(), qps: 50, burst: 100, logger });
  const run = new AbortController();
  const started = new Map<number, number[]>();
  const c = new ShardCoordinator({
    kube,
    namespace,
    prefix,
    identity,
    shards,
    releaseOnCancel,
    logger: logger.child({ identity }),
    onShardStarted: (shard) => started.set(shard, [...(started.get(shard) ?? []), Date.now()]),
    onShardStopped: () => undefined,
  });
  const r = { identity, kube, c, run, done: c.run(run.signal), started };
  replicas.push(r);
  return r;
}

/** Shard → owner by `owned()`; a shard owned twice is recorded as a violation. */
function owners(): Map<number, string> {
  const map = new Map<number, string>();
  for (const r of replicas) {
    for (const shard of r.c.owned()) {
      const other = map.get(shard);
      if (other !== undefined) violations.push(`shard ${shard} owned by ${other} and ${r.identity}`);
      map.set(shard, r.identity);
    }
  }
  return map;
}

/** Polls `owners()` every 100 ms (each poll checks exclusivity) until stopped. */
function watchOwners() {
  const state = { running: true, polls: 0 };
  const loop = (async () => {
    while (state.running) {
      owners();
      state.polls++;
      await sleep(100);
    }
  })();
  return {
    get polls() {
      return state.polls;
    },
    stop: async () => {
      state.running = false;
      await loop;
    },
  };
}

/** Waits until every shard is owned exactly once, by its rendezvous owner among `members`. */
async function settled(members: string[], timeoutMs: number): Promise<void> {
  const want = assignShards(shards, members);
  await eventually(
    () => {
      const now = owners();
      expect([...now.entries()].sort(([a], [b]) => a - b).map(([, o]) => o)).toEqual(want);
    },
    { timeoutMs, intervalMs: 100 },
  );
}

const shardLeases = async () =>
  (await getJson<{ items: Lease[] }>(["lease", "-n", namespace, "-l", `${SHARD_LEASE_LABEL}=${prefix}`]))
    .items;

let watcher: ReturnType<typeof watchOwners> | undefined;

beforeAll(async () => {
  await kubectl(["create", "namespace", namespace]);
  watcher = watchOwners();
});

afterAll(async () => {
  await watcher?.stop();
  for (const r of replicas) r.run.abort();
  await Promise.all(replicas.map((r) => r.done));
  await Promise.all(replicas.map((r) => r.kube.close()));
  await kubectl(["delete", "namespace", namespace, "--wait=false"]);
});

describe("shard coordination against the real API server", () => {
  it("three replicas own every shard exactly once; one crashing hands its shards to the other two", async () => {
    const a = replica("replica-a", true);
    const b = replica("replica-b", true);
    await settled(["replica-a", "replica-b"], 30_000);

    // A third joins: the shards rendezvous gives it are released to it.
    const joinedAt = Date.now();
    const c = replica("replica-c", false);
    await settled(["replica-a", "replica-b", "replica-c"], 30_000);
    const joined = c.c.owned();
    expect(joined.length).toBeGreaterThan(0);
    const joinMs = Math.max(...joined.map((s) => (c.started.get(s)?.[0] ?? Infinity) - joinedAt));
    const stored = await shardLeases();
    expect(stored).toHaveLength(shards);
    for (const lease of stored) {
      const shard = Number(lease.metadata?.name?.split("-").at(-1));
      expect(lease.spec?.holderIdentity).toBe(owners().get(shard));
    }

    // c crashes: its signal aborts, nothing is released.
    const moved = c.c.owned();
    const crashedAt = Date.now();
    c.run.abort();
    await c.done;
    expect(c.c.owned()).toEqual([]);
    for (const lease of await shardLeases()) {
      if (moved.includes(Number(lease.metadata?.name?.split("-").at(-1))))
        expect(lease.spec?.holderIdentity).toBe("replica-c");
    }
    await settled(["replica-a", "replica-b"], 2 * leaseDurationMs);
    const takeovers = moved.map((shard) => {
      const at = [a, b].flatMap((r) => r.started.get(shard) ?? []).find((t) => t > crashedAt);
      return (at ?? Infinity) - crashedAt;
    });
    const slowest = Math.max(...takeovers);
    console.info(
      `shards: join hand-over ${joinMs} ms (${joined.length} shards); crash takeover ${Math.min(...takeovers)}..${slowest} ms (${moved.length} shards)`,
    );
    // The holders released the joiner's shards: it did not wait for their leases to expire.
    // (How fast is a figure, printed above; at most three ticks and request times, about 8 s.)
    expect(joinMs).toBeLessThan(leaseDurationMs);
    // Its last renewals were sent at most a retry period before the crash; the others saw them
    // within a tick, took the shards a lease duration later, at their next tick.
    // (The slowest is bounded by settled()'s two lease durations, and printed.)
    expect(Math.min(...takeovers)).toBeGreaterThanOrEqual(leaseDurationMs - retryPeriodMs);
    expect(violations).toEqual([]);
  });

  it("a clean stop releases: the last replica takes the other's shards without waiting for expiry", async () => {
    const [a, b] = replicas as [Replica, Replica];
    const moved = b.c.owned();
    expect(moved.length).toBeGreaterThan(0);
    const stoppedAt = Date.now();
    b.run.abort();
    await b.done;
    for (const lease of await shardLeases())
      expect(lease.spec?.holderIdentity, lease.metadata?.name).not.toBe("replica-b");
    await settled(["replica-a"], leaseDurationMs);
    const handover = Math.max(
      ...moved.map((s) => (a.started.get(s)?.findLast((t) => t > stoppedAt) ?? Infinity) - stoppedAt),
    );
    console.info(`shards: clean-stop hand-over ${handover} ms (${moved.length} shards)`);
    // The stop released them, and the survivor did not wait for an expiry (about two ticks and
    // request times, printed above).
    expect(handover).toBeLessThan(leaseDurationMs - retryPeriodMs);
    const members = await getJson<{ items: Lease[] }>([
      "lease",
      "-n",
      namespace,
      "-l",
      `devicelet.dev/shard-member=${prefix}`,
    ]);
    expect(members.items.map((l) => l.spec?.holderIdentity).sort()).toEqual(["replica-a", "replica-c"]);
    expect(watcher?.polls).toBeGreaterThan(100);
    expect(violations).toEqual([]);
  });
});
