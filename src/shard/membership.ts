/**
 * {@link Membership}: who the live replicas of a sharded fleet are, from one Lease per replica.
 * What it guarantees:
 *
 * - This replica holds its member Lease `<prefix>-member-<identity>` in the state namespace,
 *   labelled `devicelet.dev/shard-member=<prefix>` and annotated with its shard count, and renews
 *   it every retry period ({@link Membership.run}).
 * - {@link Membership.refresh} lists the member Leases by that label; {@link Membership.members}
 *   then says who is live: every other holder whose Lease changed within its duration by OUR clock
 *   (never by comparing its `renewTime` with our clock: see observed.ts), plus this replica while
 *   its own last successful renewal was sent within the renew deadline. A replica that cannot renew
 *   thus drops out of its own view as soon as others may start to drop it from theirs.
 * - The list is sorted, so every replica that saw the same Leases computes the same members.
 * - {@link Membership.leave} deletes our Lease (others see us gone at their next list); the Lease
 *   of a replica that died without leaving is deleted by the survivors once it has been unchanged
 *   for `forgetAfterMs` (resourceVersion precondition: a Lease renewed meanwhile is kept).
 * - A live member that reports another shard count is logged as an error once: every replica of a
 *   fleet must use the same count.
 *
 *   const membership = new Membership({ kube, namespace, prefix, identity, shards: 8, logger });
 *   await membership.renew();                 // announce ourselves
 *   void membership.run(signal);              // keep renewing
 *   await membership.refresh();               // every retry period
 *   membership.members();                     // ["devicelet-0", "devicelet-2"]
 */
import { createHash } from "node:crypto";
import type { Logger } from "pino";
import { sleepOn, systemClock, type Clock } from "../base/clock.ts";
import {
  isAlreadyExists,
  isConflict,
  isNotFound,
  toMicroTime,
  type KubeClient,
  type Lease,
} from "../kube/index.ts";
import { LeaseObserver } from "./observed.ts";

/** The label every member Lease carries, valued with the fleet's prefix. */
export const SHARD_MEMBER_LABEL = "devicelet.dev/shard-member";
/** The annotation on a member Lease that says how many shards that replica uses. */
export const SHARD_COUNT_ANNOTATION = "devicelet.dev/shards";
/** How long a dead member's Lease is kept before a survivor deletes it: 5 minutes. */
export const MEMBER_FORGET_AFTER_MS = 300_000;

const dnsSubdomain = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

/**
 * The name of a member's Lease: `<prefix>-member-<identity>` when that is a valid object name,
 * else the identity with every run of other characters turned into `-`, plus a hash of it (so two
 * identities never share a Lease).
 */
export function memberLeaseName(prefix: string, identity: string): string {
  const base = `${prefix}-member-`;
  if (dnsSubdomain.test(identity) && base.length + identity.length <= 253) return base + identity;
  const hash = createHash("sha256").update(identity, "utf8").digest("hex").slice(0, 10);
  const safe = identity
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, "-")
    .slice(0, 253 - base.length - hash.length - 1)
    .replace(/^-+|-+$/g, "");
  return `${base}${safe === "" ? "" : `${safe}-`}${hash}`;
}

export interface MembershipOptions {
  readonly kube: Pick<KubeClient, "getLease" | "createLease" | "replaceLease" | "listLeases" | "deleteLease">;
  /** The state namespace. */
  readonly namespace: string;
  /** Names the fleet: its Leases' names start with it and its label value is it. */
  readonly prefix: string;
  /** This replica's identity, unique among the replicas (e.g. the pod name). */
  readonly identity: string;
  /** This replica's shard count, written on its Lease so a mismatch is seen. */
  readonly shards: number;
  readonly leaseDurationMs: number;
  readonly renewDeadlineMs: number;
  readonly retryPeriodMs: number;
  /** Default {@link MEMBER_FORGET_AFTER_MS}. */
  readonly forgetAfterMs?: number;
  readonly logger: Logger;
  readonly clock?: Clock;
}

export class Membership {
  readonly #o: MembershipOptions;
  readonly #clock: Clock;
  readonly #name: string;
  readonly #seen: LeaseObserver;
  /** Our Lease as last written (or read after a Conflict); renewals replace it without re-reading. */
  #lease: Lease | undefined;
  /** Our clock when our last successful write was sent; undefined before the first. */
  #renewedAt: number | undefined;
  readonly #mismatchLogged = new Set<string>();

  constructor(options: MembershipOptions) {
    this.#o = options;
    this.#clock = options.clock ?? systemClock;
    this.#name = memberLeaseName(options.prefix, options.identity);
    this.#seen = new LeaseObserver(this.#clock);
  }

  get leaseName(): string {
    return this.#name;
  }

  /** Whether our own Lease was renewed within the renew deadline (so others still count us). */
  isMember(): boolean {
    return this.#renewedAt !== undefined && this.#clock.now() < this.#renewedAt + this.#o.renewDeadlineMs;
  }

  /** The live members now, sorted: see the module doc. */
  members(): string[] {
    const live = new Set<string>();
    for (const seen of this.#seen.all()) {
      const name = seen.lease.metadata?.name ?? "";
      if (name === this.#name || seen.holder === this.#o.identity) continue;
      if (this.#seen.isLive(name)) live.add(seen.holder);
    }
    if (this.isMember()) live.add(this.#o.identity);
    return [...live].sort();
  }

  /** Renews our Lease every retry period until `signal` aborts (the first renewal after one period). */
  async run(signal: AbortSignal): Promise<void> {
    const stopped = () => signal.aborted;
    while (!stopped()) {
      await sleepOn(this.#clock, this.#o.retryPeriodMs, signal);
      if (!stopped()) await this.renew();
    }
  }

  /** One renewal (a create when our Lease is missing). Never rejects: failures are logged. */
  async renew(): Promise<void> {
    const { kube, namespace, identity, prefix, shards } = this.#o;
    const now = this.#clock.now();
    const stamp = toMicroTime(new Date(now));
    const spec = { holderIdentity: identity, leaseDurationSeconds: this.#o.leaseDurationMs / 1000 };
    try {
      this.#lease ??= await kube.getLease(this.#name, namespace);
      const current = this.#lease;
      const metadata = {
        ...current?.metadata,
        name: this.#name,
        namespace,
        labels: { ...current?.metadata?.labels, [SHARD_MEMBER_LABEL]: prefix },
        annotations: { ...current?.metadata?.annotations, [SHARD_COUNT_ANNOTATION]: String(shards) },
      };
      if (!current) {
        this.#lease = await kube.createLease({
          metadata,
          spec: { ...spec, acquireTime: stamp, renewTime: stamp, leaseTransitions: 0 },
        });
      } else {
        const ours = current.spec?.holderIdentity === identity;
        this.#lease = await kube.replaceLease({
          ...current,
          metadata,
          spec: {
            ...current.spec,
            ...spec,
            renewTime: stamp,
            acquireTime: ours ? current.spec?.acquireTime : stamp,
          },
        });
      }
      this.#renewedAt = now;
    } catch (err) {
      // Changed, deleted or created elsewhere since we wrote it: read it again next time.
      if (isConflict(err) || isNotFound(err) || isAlreadyExists(err)) this.#lease = undefined;
      this.#o.logger.warn({ err, lease: `${namespace}/${this.#name}` }, "member lease renewal failed");
    }
  }

  /**
   * Lists the member Leases and notes what changed; deletes the Leases of members dead for
   * `forgetAfterMs`. Never rejects: on a failed list the last one stands (its members then expire
   * by our clock).
   */
  async refresh(): Promise<void> {
    const { kube, namespace, prefix } = this.#o;
    let items: Lease[];
    try {
      items = (await kube.listLeases(namespace, `${SHARD_MEMBER_LABEL}=${prefix}`)).items;
    } catch (err) {
      this.#o.logger.warn({ err }, "could not list the member leases");
      return;
    }
    this.#seen.observeAll(items);
    const forgetAfter = this.#o.forgetAfterMs ?? MEMBER_FORGET_AFTER_MS;
    const stale: Lease[] = [];
    for (const seen of this.#seen.all()) {
      const name = seen.lease.metadata?.name ?? "";
      if (name === this.#name) continue;
      if (this.#seen.isLive(name)) this.#checkShardCount(seen.holder, seen.lease);
      else if ((this.#seen.unchangedFor(name) ?? 0) >= forgetAfter) stale.push(seen.lease);
    }
    await Promise.all(stale.map((lease) => this.#forget(lease)));
  }

  /** Deletes our Lease (only the version we wrote). Never rejects. */
  async leave(): Promise<void> {
    const lease = this.#lease;
    this.#renewedAt = undefined;
    if (!lease) return;
    try {
      if (await this.#o.kube.deleteLease(this.#name, this.#o.namespace, lease.metadata?.resourceVersion))
        this.#o.logger.info({ lease: `${this.#o.namespace}/${this.#name}` }, "left the shard members");
    } catch (err) {
      this.#o.logger.warn({ err }, "could not delete the member lease; it expires");
    }
  }

  async #forget(lease: Lease): Promise<void> {
    const name = lease.metadata?.name ?? "";
    try {
      const deleted = await this.#o.kube.deleteLease(
        name,
        this.#o.namespace,
        lease.metadata?.resourceVersion,
      );
      if (deleted)
        this.#o.logger.info({ lease: `${this.#o.namespace}/${name}` }, "deleted a dead member's lease");
      this.#seen.forget(name);
    } catch (err) {
      this.#o.logger.warn(
        { err, lease: `${this.#o.namespace}/${name}` },
        "could not delete a dead member's lease",
      );
    }
  }

  #checkShardCount(holder: string, lease: Lease): void {
    const theirs = lease.metadata?.annotations?.[SHARD_COUNT_ANNOTATION];
    if (theirs === undefined || theirs === String(this.#o.shards) || this.#mismatchLogged.has(holder)) return;
    this.#mismatchLogged.add(holder);
    this.#o.logger.error(
      { member: holder, theirs: Number(theirs), ours: this.#o.shards },
      "a live member uses another shard count: devices may be served twice until every replica uses the same",
    );
  }
}
