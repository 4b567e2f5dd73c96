/**
 * Leader election on a `coordination.k8s.io` Lease, with the semantics and defaults of client-go's
 * `leaderelection` package, so two devicelet replicas agree on one writer:
 *
 * - A candidate reads the Lease every `retryPeriod` (jittered, so candidates do not beat in step)
 *   and takes it when it is absent, released (empty holder), already ours, or expired. Expiry is
 *   judged by OUR clock: the lease has expired when it has not changed for `leaseDurationSeconds`
 *   since the local time we last saw it change. The holder's `renewTime` is never compared with
 *   our clock, so clock skew between replicas cannot make a live leader look dead (or the other
 *   way round).
 * - Every write is optimistic (a replace with the resourceVersion read): of two candidates racing
 *   for an expired lease, exactly one wins; the other gets a Conflict and re-reads.
 * - The leader renews every `retryPeriod`. When it has not renewed for `renewDeadline` (which is
 *   shorter than the lease duration, so it steps down before anyone else may take over), or it
 *   sees that someone else holds the lease, it has lost: the signal given to `onStartedLeading`
 *   aborts and `onStoppedLeading` is called at once, so the caller stops writing. It then becomes
 *   a candidate again.
 * - On a clean stop with `releaseOnCancel`, the leader empties the holder so a standby takes over
 *   at its next retry rather than after a whole lease duration (client-go's `ReleaseOnCancel`).
 */
import type { Logger } from "pino";
import { sleepOn, systemClock, type Clock } from "../base/clock.ts";
import { isAlreadyExists, isConflict, toMicroTime, type KubeClient, type Lease } from "../kube/index.ts";

export interface LeaderElectorOptions {
  readonly kube: Pick<KubeClient, "getLease" | "createLease" | "replaceLease">;
  /** Namespace and name of the Lease (devicelet's state namespace). */
  readonly namespace: string;
  readonly name: string;
  /** This replica's identity, unique among the replicas (e.g. the pod name). */
  readonly identity: string;
  /** How long a lease lasts without renewal before a standby may take it; default 15 s. */
  readonly leaseDurationMs?: number;
  /** How long the leader keeps trying to renew before it gives up; default 10 s. */
  readonly renewDeadlineMs?: number;
  /** How often candidates try to acquire and the leader renews; default 2 s. */
  readonly retryPeriodMs?: number;
  /** Release the lease when `run`'s signal aborts while leading; default false. */
  readonly releaseOnCancel?: boolean;
  readonly logger: Logger;
  /** Default {@link systemClock}; observation times and `renewTime` stamps come from it. */
  readonly clock?: Clock;
  /** Jitter source in [0, 1); default `Math.random`. */
  readonly random?: () => number;
  /**
   * Called when this replica becomes leader; `signal` aborts the moment leadership is lost or
   * `run` is stopped. Must not block (start work and return).
   */
  readonly onStartedLeading: (signal: AbortSignal) => void;
  /** Called right after leadership is lost or given up (after `signal` aborted). */
  readonly onStoppedLeading: () => void;
  /** Called when the holder of the lease is seen to change (ours included). */
  readonly onNewLeader?: (identity: string) => void;
}

/** client-go's defaults (`LeaseDuration`, `RenewDeadline`, `RetryPeriod`). */
export const DEFAULT_LEASE_DURATION_MS = 15_000;
export const DEFAULT_RENEW_DEADLINE_MS = 10_000;
export const DEFAULT_RETRY_PERIOD_MS = 2_000;
/** client-go's `JitterFactor`: a candidate waits retryPeriod × [1, 2.2). */
const jitterFactor = 1.2;

/**
 * The lease given up as client-go's `release` writes it: no holder and a one-second duration, so
 * a candidate takes it at its next try (`nowMs` stamps acquire and renew times).
 */
export function releasedLease(lease: Lease, nowMs: number): Lease {
  const stamp = toMicroTime(new Date(nowMs));
  return {
    ...lease,
    spec: {
      ...lease.spec,
      holderIdentity: "",
      leaseDurationSeconds: 1,
      acquireTime: stamp,
      renewTime: stamp,
    },
  };
}

export class LeaderElector {
  readonly #o: LeaderElectorOptions;
  readonly #clock: Clock;
  readonly #random: () => number;
  readonly #leaseDurationMs: number;
  readonly #renewDeadlineMs: number;
  readonly #retryPeriodMs: number;
  /** The Lease as last read or written; the leader's renewals replace it without re-reading. */
  #lease: Lease | undefined;
  /** The last holder/renewTime/resourceVersion we saw, and our local time when it changed. */
  #observed = "";
  #observedAt = 0;
  #leader = "";
  #leading = false;
  /** Our clock when the last successful write was sent (its renewTime). */
  #renewedAt = 0;

  constructor(options: LeaderElectorOptions) {
    this.#o = options;
    this.#clock = options.clock ?? systemClock;
    this.#random = options.random ?? Math.random;
    this.#leaseDurationMs = options.leaseDurationMs ?? DEFAULT_LEASE_DURATION_MS;
    this.#renewDeadlineMs = options.renewDeadlineMs ?? DEFAULT_RENEW_DEADLINE_MS;
    this.#retryPeriodMs = options.retryPeriodMs ?? DEFAULT_RETRY_PERIOD_MS;
    if (!(this.#leaseDurationMs > this.#renewDeadlineMs))
      throw new RangeError("leaseDuration must be greater than renewDeadline");
    if (!(this.#renewDeadlineMs > jitterFactor * this.#retryPeriodMs))
      throw new RangeError("renewDeadline must be greater than retryPeriod × 1.2");
    if (this.#leaseDurationMs % 1000 !== 0)
      throw new RangeError("leaseDuration must be whole seconds (Lease leaseDurationSeconds)");
  }

  /** Whether this replica holds the lease now. */
  isLeader(): boolean {
    return this.#leading;
  }

  /** The holder last seen ("" when none). */
  leader(): string {
    return this.#leader;
  }

  /**
   * Campaigns, leads, and campaigns again after a loss, until `signal` aborts; resolves after
   * leadership was given up (and released, with `releaseOnCancel`). Never rejects: API errors
   * are logged and retried.
   */
  async run(signal: AbortSignal): Promise<void> {
    while (await this.#acquire(signal)) await this.#lead(signal);
  }

  /** Resolves true once the lease is ours, false when `signal` aborted first. */
  async #acquire(signal: AbortSignal): Promise<boolean> {
    this.#o.logger.info({ lease: this.#leaseName() }, "attempting to acquire the leader lease");
    while (!signal.aborted) {
      if (await this.#tryAcquireOrRenew(false)) return !signal.aborted;
      await sleepOn(this.#clock, this.#retryPeriodMs * (1 + this.#random() * jitterFactor), signal);
    }
    return false;
  }

  /** Leads until a renewal misses the deadline, someone else is seen holding, or `signal` aborts. */
  async #lead(signal: AbortSignal): Promise<void> {
    const lost = new AbortController();
    // A function, not a property read: the signal aborts while we await.
    const isLost = () => lost.signal.aborted;
    this.#leading = true;
    this.#o.logger.info({ lease: this.#leaseName(), identity: this.#o.identity }, "became leader");
    this.#o.onStartedLeading(lost.signal);
    const stop = (reason: string) => {
      if (lost.signal.aborted) return;
      this.#leading = false;
      lost.abort(new Error(reason));
      this.#o.logger.info(
        { lease: this.#leaseName(), identity: this.#o.identity, reason },
        "stopped leading",
      );
      this.#o.onStoppedLeading();
    };
    // The deadline runs on its own timer, so a renewal that hangs cannot keep us leading. It counts
    // from when the last successful write was SENT: a standby cannot have seen it any earlier, so
    // we always step down before its lease duration (> renewDeadline) runs out.
    const armDeadline = () =>
      this.#clock.setTimeout(
        () => stop("renew deadline exceeded"),
        Math.max(0, this.#renewedAt + this.#renewDeadlineMs - this.#clock.now()),
      );
    let deadline = armDeadline();
    const onAbort = () => stop("stopped");
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      while (!isLost()) {
        await sleepOn(this.#clock, this.#retryPeriodMs, lost.signal);
        if (isLost()) break;
        const ok = await this.#tryAcquireOrRenew(true);
        if (isLost()) break;
        if (ok) {
          this.#clock.clearTimeout(deadline);
          deadline = armDeadline();
        } else if (this.#leader !== "" && this.#leader !== this.#o.identity) {
          stop(`lease taken by ${this.#leader}`);
        }
      }
    } finally {
      this.#clock.clearTimeout(deadline);
      signal.removeEventListener("abort", onAbort);
    }
    if (signal.aborted && this.#o.releaseOnCancel) await this.#release();
  }

  /**
   * One attempt (client-go's `tryAcquireOrRenew`): true when the lease is ours after it. Errors
   * count as false; a Conflict drops the cached lease so the next attempt re-reads.
   */
  async #tryAcquireOrRenew(renewing: boolean): Promise<boolean> {
    const { kube, namespace, name, identity } = this.#o;
    const now = this.#clock.now();
    const stamp = toMicroTime(new Date(now));
    const spec = { holderIdentity: identity, leaseDurationSeconds: this.#leaseDurationMs / 1000 };
    try {
      // The leader renews from its own last write (client-go's fast path); others always read.
      if (!renewing || !this.#lease) {
        this.#lease = await kube.getLease(name, namespace);
        if (this.#lease) this.#observe(this.#lease, now);
      }
      const current = this.#lease;
      if (!current) {
        this.#lease = await kube.createLease({
          metadata: { name, namespace },
          spec: { ...spec, acquireTime: stamp, renewTime: stamp, leaseTransitions: 0 },
        });
        this.#observe(this.#lease, now);
        this.#renewedAt = now;
        return true;
      }
      const holder = current.spec?.holderIdentity ?? "";
      if (holder !== "" && holder !== identity && !this.#expired(current, now)) return false;
      const ours = holder === identity;
      const transitions = current.spec?.leaseTransitions ?? 0;
      this.#lease = await kube.replaceLease({
        ...current,
        spec: {
          ...current.spec,
          ...spec,
          renewTime: stamp,
          acquireTime: ours ? current.spec?.acquireTime : stamp,
          leaseTransitions: ours ? transitions : transitions + 1,
        },
      });
      this.#observe(this.#lease, now);
      this.#renewedAt = now;
      return true;
    } catch (err) {
      // Someone else wrote (or created) the lease since we read it: read again next time.
      if (isConflict(err) || isAlreadyExists(err)) this.#lease = undefined;
      this.#o.logger.warn({ err, lease: this.#leaseName() }, "leader lease update failed");
      return false;
    }
  }

  /** Notes the record and, when it changed, our local time of seeing the change. */
  #observe(lease: Lease, now: number): void {
    const s = lease.spec;
    const record = JSON.stringify([
      s?.holderIdentity ?? "",
      s?.renewTime ?? "",
      lease.metadata?.resourceVersion,
    ]);
    if (record !== this.#observed) {
      this.#observed = record;
      this.#observedAt = now;
    }
    const holder = s?.holderIdentity ?? "";
    if (holder !== this.#leader) {
      this.#leader = holder;
      if (holder !== "") {
        this.#o.logger.info({ lease: this.#leaseName(), leader: holder }, "new leader observed");
        this.#o.onNewLeader?.(holder);
      }
    }
  }

  /** Whether the holder's lease ran out, by our clock since we saw it change (skew-proof). */
  #expired(lease: Lease, now: number): boolean {
    const seconds = lease.spec?.leaseDurationSeconds ?? this.#leaseDurationMs / 1000;
    return this.#observedAt + seconds * 1000 <= now;
  }

  /**
   * Gives the lease up (client-go's `release`): an empty holder with a one-second duration, so a
   * standby takes it at its next try. Only if we still hold it; failures are logged and ignored
   * (the lease then simply expires).
   */
  async #release(): Promise<void> {
    const lease = this.#lease;
    if (!lease || lease.spec?.holderIdentity !== this.#o.identity) return;
    try {
      this.#lease = await this.#o.kube.replaceLease(releasedLease(lease, this.#clock.now()));
      this.#leader = "";
      this.#o.logger.info({ lease: this.#leaseName() }, "released the leader lease");
    } catch (err) {
      this.#o.logger.warn({ err, lease: this.#leaseName() }, "could not release the leader lease");
    }
  }

  #leaseName(): string {
    return `${this.#o.namespace}/${this.#o.name}`;
  }
}
