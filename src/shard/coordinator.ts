/**
 * {@link ShardCoordinator}: N replicas split a fleet's devices between them, each device owned by
 * exactly one replica at a time. A device belongs to shard `shardOf(deviceId, shards)` (hash.ts);
 * every replica runs a coordinator with the same `prefix` and shard count, and serves the devices
 * of the shards it owns. What it guarantees:
 *
 * - Membership: each replica holds its member Lease (membership.ts); every retry period (plus up to
 *   20 % jitter) each coordinator lists the member Leases and the shard Leases
 *   (`<prefix>-shard-<i>`, labelled `devicelet.dev/shard-lease=<prefix>`), and judges who is live
 *   and which shard Leases expired by its OWN clock (observed.ts).
 * - Assignment: each shard goes to one live member by rendezvous hashing of the shard over the
 *   live identities, so replicas that see the same members agree, and a member that leaves moves
 *   only its own shards. A replica campaigns only for the shards assigned to it.
 * - Ownership and fencing: a shard is owned by whoever holds its Lease, with leader election's
 *   semantics (shard-lease.ts): taken only when absent, released, ours, or unchanged for its
 *   duration; writes are compare-and-swap on the resourceVersion observed. `onShardStarted` gets a
 *   signal that aborts the moment a renewal finds another holder or none succeeded within the
 *   renew deadline: before anyone else may take the shard (lease duration > renew deadline). Two
 *   replicas whose views of the members differ for a moment both campaign; the Lease lets one in.
 * - Handover: when the assignment gives a held shard to another live member, this replica stops
 *   the shard's work, then releases its Lease, and the new owner takes it at its next try (about
 *   one retry period). When a replica dies, its member and shard Leases expire unchanged: the
 *   others take its shards one lease duration (15 s) after they first saw its last renewal, at
 *   their next tick: 13 to 20 s after the death with the defaults, inside a 40 s node lease.
 * - Stopping `run`: every shard's work stops (signals abort, `onShardStopped`), then, with
 *   `releaseOnCancel` (default true), the shard Leases are released and the member Lease deleted,
 *   so the others take over within a tick; without it they wait for the Leases to expire.
 *
 * Every replica must use the same `shards` and a unique `identity` (two replicas with one identity
 * would both think they hold its shards). Needs get, list, create, update and delete on Leases in
 * the namespace.
 *
 *   const coordinator = new ShardCoordinator({ kube, namespace, prefix: "devicelet", identity, shards: 8,
 *     logger, onShardStarted: (shard, signal) => serve(shard, signal), onShardStopped: (shard) => undefined });
 *   const done = coordinator.run(signal);
 *   if (coordinator.owns("gw-0042")) ...;     // this replica serves that device now
 *   await done;                               // after `signal` aborted: stopped and released
 */
import type { Logger } from "pino";
import { sleepOn, systemClock, type Clock } from "../base/clock.ts";
import type { KubeClient } from "../kube/index.ts";
import {
  DEFAULT_LEASE_DURATION_MS,
  DEFAULT_RENEW_DEADLINE_MS,
  DEFAULT_RETRY_PERIOD_MS,
} from "../leader/election.ts";
import { assignShards, shardOf } from "./hash.ts";
import { Membership } from "./membership.ts";
import { LeaseObserver } from "./observed.ts";
import { ShardLease } from "./shard-lease.ts";

/** The label every shard Lease carries, valued with the fleet's prefix. */
export const SHARD_LEASE_LABEL = "devicelet.dev/shard-lease";
/** A tick waits retryPeriod × [1, 1 + this): replicas do not list and campaign in step. */
const tickJitter = 0.2;
const dnsLabel = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

/** The Lease of one shard. */
export const shardLeaseName = (prefix: string, shard: number): string => `${prefix}-shard-${shard}`;

export interface ShardCoordinatorOptions {
  readonly kube: Pick<KubeClient, "getLease" | "createLease" | "replaceLease" | "listLeases" | "deleteLease">;
  /** Where the Leases live (devicelet's state namespace). */
  readonly namespace: string;
  /** Names the fleet: a DNS label of at most 63 characters, the same on every replica. */
  readonly prefix: string;
  /** This replica's identity, unique among the replicas (e.g. the pod name). */
  readonly identity: string;
  /** The shard count: the same on every replica (see hash.ts). */
  readonly shards: number;
  /** How long a member or shard Lease lasts without renewal; default 15 s (whole seconds). */
  readonly leaseDurationMs?: number;
  /** How long a holder keeps trying to renew before it stops; default 10 s. */
  readonly renewDeadlineMs?: number;
  /** How often Leases are renewed and listed; default 2 s. */
  readonly retryPeriodMs?: number;
  /** On `run`'s signal, release the shard Leases and delete the member Lease; default true. */
  readonly releaseOnCancel?: boolean;
  readonly logger: Logger;
  /** Default {@link systemClock}. */
  readonly clock?: Clock;
  /** Jitter source in [0, 1); default `Math.random`. */
  readonly random?: () => number;
  /**
   * This replica now owns `shard`: start serving its devices. `signal` aborts the moment it no
   * longer does (stop writing at once). Must not block; a throw is logged.
   */
  readonly onShardStarted: (shard: number, signal: AbortSignal) => void;
  /**
   * Called right after that signal aborted. A returned promise is awaited, up to the renew
   * deadline, before the shard's Lease is released or taken again.
   */
  readonly onShardStopped: (shard: number) => void | Promise<void>;
}

export class ShardCoordinator {
  readonly #o: ShardCoordinatorOptions;
  readonly #clock: Clock;
  readonly #random: () => number;
  readonly #leaseDurationMs: number;
  readonly #retryPeriodMs: number;
  readonly #membership: Membership;
  readonly #observer: LeaseObserver;
  readonly #names: readonly string[];
  readonly #leases: readonly ShardLease[];
  /** Our clock when a shard Lease we had seen vanished from the list (deleted). */
  readonly #goneAt = new Map<string, number>();
  #assigned = "";
  #running = false;

  constructor(options: ShardCoordinatorOptions) {
    const { prefix, identity, shards } = options;
    if (!dnsLabel.test(prefix) || prefix.length > 63)
      throw new RangeError(`the shard prefix must be a DNS label of at most 63 characters, not "${prefix}"`);
    if (identity === "") throw new RangeError("the shard member identity must not be empty");
    if (!Number.isInteger(shards) || shards < 1 || shards > 0x7fff_ffff)
      throw new RangeError(`the shard count must be a positive integer, not ${shards}`);
    const leaseDurationMs = options.leaseDurationMs ?? DEFAULT_LEASE_DURATION_MS;
    const renewDeadlineMs = options.renewDeadlineMs ?? DEFAULT_RENEW_DEADLINE_MS;
    const retryPeriodMs = options.retryPeriodMs ?? DEFAULT_RETRY_PERIOD_MS;
    if (!(leaseDurationMs > renewDeadlineMs))
      throw new RangeError("leaseDuration must be greater than renewDeadline");
    if (!(renewDeadlineMs > (1 + tickJitter) * retryPeriodMs))
      throw new RangeError("renewDeadline must be greater than retryPeriod × 1.2");
    if (leaseDurationMs % 1000 !== 0)
      throw new RangeError("leaseDuration must be whole seconds (Lease leaseDurationSeconds)");

    this.#o = options;
    this.#clock = options.clock ?? systemClock;
    this.#random = options.random ?? Math.random;
    this.#leaseDurationMs = leaseDurationMs;
    this.#retryPeriodMs = retryPeriodMs;
    const timings = { leaseDurationMs, renewDeadlineMs, retryPeriodMs };
    const logger = options.logger;
    this.#membership = new Membership({
      kube: options.kube,
      namespace: options.namespace,
      prefix,
      identity,
      shards,
      ...timings,
      logger,
      clock: this.#clock,
    });
    this.#observer = new LeaseObserver(this.#clock);
    this.#names = Array.from({ length: shards }, (_, shard) => shardLeaseName(prefix, shard));
    this.#leases = this.#names.map(
      (name, shard) =>
        new ShardLease({
          kube: options.kube,
          namespace: options.namespace,
          name,
          shard,
          identity,
          labels: { [SHARD_LEASE_LABEL]: prefix },
          ...timings,
          logger,
          clock: this.#clock,
          onStarted: (signal) => options.onShardStarted(shard, signal),
          onStopped: () => options.onShardStopped(shard),
        }),
    );
  }

  get shards(): number {
    return this.#o.shards;
  }

  /** The shards this replica owns now, ascending (their signals have not aborted). */
  owned(): number[] {
    return this.#leases.flatMap((lease, shard) => (lease.held() ? [shard] : []));
  }

  /** Whether this replica owns the shard of `deviceId` now. */
  owns(deviceId: string): boolean {
    return this.#leases[shardOf(deviceId, this.#o.shards)]?.held() ?? false;
  }

  /** The live members as this replica judges them now, sorted (itself included while renewing). */
  members(): string[] {
    return this.#membership.members();
  }

  /**
   * Joins, keeps the assignment and the shard Leases, until `signal` aborts; then stops every
   * shard and (with `releaseOnCancel`) gives the Leases up. Resolves once that is done; never
   * rejects: API errors are logged and retried. Call it once.
   */
  async run(signal: AbortSignal): Promise<void> {
    if (this.#running) throw new Error("ShardCoordinator.run may be called only once");
    this.#running = true;
    const release = this.#o.releaseOnCancel ?? true;
    const heartbeatStop = new AbortController();
    let heartbeat = Promise.resolve();
    this.#o.logger.info(
      { identity: this.#o.identity, shards: this.#o.shards, lease: this.#membership.leaseName },
      "joining the shard members",
    );
    try {
      if (!signal.aborted) {
        await this.#membership.renew();
        heartbeat = this.#membership.run(heartbeatStop.signal);
      }
      while (!signal.aborted) {
        await this.#tick();
        await sleepOn(this.#clock, this.#retryPeriodMs * (1 + this.#random() * tickJitter), signal);
      }
    } finally {
      // Work first, on every shard; then the Leases.
      await Promise.all(this.#leases.map((lease) => lease.stop(release)));
      heartbeatStop.abort();
      await heartbeat;
      if (release) await this.#membership.leave();
      this.#o.logger.info({ identity: this.#o.identity, released: release }, "left the shard members");
    }
  }

  /** One round: list, assign, hand over what moved away, campaign for what is ours and free. */
  async #tick(): Promise<void> {
    const [, listed] = await Promise.all([this.#membership.refresh(), this.#listShards()]);
    const members = this.#membership.members();
    const owners = assignShards(this.#o.shards, members);
    this.#noteAssignment(members, owners);
    for (const [shard, lease] of this.#leases.entries()) {
      const owner = owners[shard];
      if (lease.held()) {
        // Only to a live member: with nobody else live, keep serving what we hold.
        if (owner !== undefined && owner !== this.#o.identity) void lease.stop(true);
      } else if (listed && owner === this.#o.identity && lease.idle() && this.#free(shard)) {
        void lease.acquire(this.#observer.get(this.#names[shard] ?? "")?.lease);
      }
    }
  }

  /** Lists the shard Leases into the observer; false when the list failed. */
  async #listShards(): Promise<boolean> {
    const { kube, namespace, prefix } = this.#o;
    let items;
    try {
      items = (await kube.listLeases(namespace, `${SHARD_LEASE_LABEL}=${prefix}`)).items;
    } catch (err) {
      this.#o.logger.warn({ err }, "could not list the shard leases");
      return false;
    }
    const names = new Set(this.#names);
    const ours = items.filter((lease) => names.has(lease.metadata?.name ?? ""));
    const present = new Set(ours.map((lease) => lease.metadata?.name ?? ""));
    for (const name of this.#names) {
      if (present.has(name)) this.#goneAt.delete(name);
      else if (this.#observer.get(name) && !this.#goneAt.has(name)) this.#goneAt.set(name, this.#clock.now());
    }
    this.#observer.observeAll(ours);
    return true;
  }

  /**
   * Whether a shard's Lease may be taken: released, ours, or unchanged for its duration by our
   * clock. A missing one only if we never saw it, or it vanished a lease duration ago (a holder
   * whose Lease was deleted keeps serving until its next renewal finds out).
   */
  #free(shard: number): boolean {
    const name = this.#names[shard] ?? "";
    const seen = this.#observer.get(name);
    if (!seen) {
      const gone = this.#goneAt.get(name);
      return gone === undefined || this.#clock.now() >= gone + this.#leaseDurationMs;
    }
    return seen.holder === "" || seen.holder === this.#o.identity || !this.#observer.isLive(name);
  }

  #noteAssignment(members: readonly string[], owners: readonly (string | undefined)[]): void {
    const assigned = owners.flatMap((owner, shard) => (owner === this.#o.identity ? [shard] : []));
    const key = `${members.join(",")}|${assigned.join(",")}`;
    if (key === this.#assigned) return;
    this.#assigned = key;
    this.#o.logger.info({ members, assigned }, "shard assignment changed");
  }
}
