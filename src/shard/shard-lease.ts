/**
 * {@link ShardLease}: this replica's hold on one shard's Lease `<prefix>-shard-<i>`, with the
 * semantics of leader election (src/leader/election.ts) for one shard:
 *
 * - {@link ShardLease.acquire} takes the Lease from what the coordinator last listed (it decides
 *   the Lease is free: absent, released, ours, or expired by our clock) with an optimistic write:
 *   a create, or a replace with the observed resourceVersion, so of two replicas racing for it
 *   exactly one wins, and a holder that renewed since we looked keeps it.
 * - Once held, the shard's work starts (`onStarted` with a signal) and the Lease is renewed every
 *   retry period from our own last write. The signal aborts, and `onStopped` is called, the moment
 *   a renewal finds another holder or no renewal has succeeded within the renew deadline (counted
 *   from when the last good one was SENT, on its own timer, so a hanging request cannot keep us
 *   holding): before anyone else may take the Lease (lease duration > renew deadline).
 * - {@link ShardLease.stop} gives the shard up: work first (signal, then `onStopped`, awaited up to
 *   the renew deadline), then, with `release`, an empty holder with a 1 s duration so the next
 *   owner takes it at its next try (client-go's `ReleaseOnCancel`).
 * - Writes to the Lease never overlap: one acquire, renewal or release at a time.
 *
 *   const shard = new ShardLease({ kube, namespace, name, shard: 3, identity, labels, ...timings, logger,
 *     onStarted: (signal) => serve(3, signal), onStopped: () => undefined });
 *   if (shard.idle() && !shard.held()) await shard.acquire(observed?.lease);
 *   await shard.stop(true);
 */
import type { Logger } from "pino";
import { sleepOn, type Clock } from "../base/clock.ts";
import {
  isAlreadyExists,
  isConflict,
  isNotFound,
  toMicroTime,
  type KubeClient,
  type Lease,
} from "../kube/index.ts";
import { releasedLease } from "../leader/election.ts";

export interface ShardLeaseOptions {
  readonly kube: Pick<KubeClient, "getLease" | "createLease" | "replaceLease">;
  readonly namespace: string;
  readonly name: string;
  readonly shard: number;
  readonly identity: string;
  /** Labels every write puts on the Lease (how the coordinator lists the shard Leases). */
  readonly labels: Readonly<Record<string, string>>;
  readonly leaseDurationMs: number;
  readonly renewDeadlineMs: number;
  readonly retryPeriodMs: number;
  readonly logger: Logger;
  readonly clock: Clock;
  /** The shard is ours: start its work; `signal` aborts when it no longer is. Must not block. */
  readonly onStarted: (signal: AbortSignal) => void;
  /** Called right after that signal aborted; a returned promise is awaited (bounded) before a release. */
  readonly onStopped: () => void | Promise<void>;
}

/** One term of holding the shard. */
interface Term {
  readonly controller: AbortController;
  deadline: unknown;
  loop: Promise<void>;
}

export class ShardLease {
  readonly #o: ShardLeaseOptions;
  /** Our last write (or a re-read after a Conflict); the base of the next renewal. */
  #lease: Lease | undefined;
  /** Our clock when the last successful write was sent. */
  #renewedAt = 0;
  /** Why the last renewal found the Lease no longer ours ("" when it did not). */
  #lostReason = "";
  #term: Term | undefined;
  /** The acquire or stop in flight. */
  #pending: Promise<unknown> | undefined;
  /** The previous term's `onStopped`, until it settled (bounded). */
  #stopping: Promise<void> | undefined;

  constructor(options: ShardLeaseOptions) {
    this.#o = options;
  }

  /** Whether this replica holds the shard now (its signal has not aborted). */
  held(): boolean {
    return this.#term !== undefined;
  }

  /** No acquire or release in flight and the previous term's work has stopped. */
  idle(): boolean {
    return this.#pending === undefined && this.#stopping === undefined;
  }

  /**
   * One attempt to take the shard from `observed` (undefined: the Lease does not exist). Resolves
   * whether it is held afterwards; never rejects.
   */
  acquire(observed: Lease | undefined): Promise<boolean> {
    if (this.#term) return Promise.resolve(true);
    if (!this.idle()) return Promise.resolve(false);
    const attempt = this.#acquire(observed).finally(() => {
      // A stop may have queued behind this attempt meanwhile: it is pending now.
      if (this.#pending === attempt) this.#pending = undefined;
    });
    this.#pending = attempt;
    return attempt;
  }

  /**
   * Gives the shard up: waits for an acquire in flight, stops the work (signal, then `onStopped`),
   * then with `release` empties the holder if the Lease is still ours. Never rejects.
   */
  stop(release: boolean): Promise<void> {
    const run = async () => {
      await this.#pending;
      const term = this.#term;
      if (term) {
        this.#end(term, "given up");
        // The renewal in flight, if any, lands before the release is written.
        await term.loop;
      }
      await this.#stopping;
      if (release && term) await this.#release();
    };
    const stopping = run().finally(() => {
      if (this.#pending === stopping) this.#pending = undefined;
    });
    this.#pending = stopping;
    return stopping;
  }

  async #acquire(observed: Lease | undefined): Promise<boolean> {
    const { kube, namespace, name, identity } = this.#o;
    const now = this.#o.clock.now();
    const stamp = toMicroTime(new Date(now));
    const spec = { holderIdentity: identity, leaseDurationSeconds: this.#o.leaseDurationMs / 1000 };
    try {
      if (!observed) {
        this.#lease = await kube.createLease({
          metadata: { name, namespace, labels: { ...this.#o.labels } },
          spec: { ...spec, acquireTime: stamp, renewTime: stamp, leaseTransitions: 0 },
        });
      } else {
        const ours = observed.spec?.holderIdentity === identity;
        const transitions = observed.spec?.leaseTransitions ?? 0;
        this.#lease = await kube.replaceLease({
          ...observed,
          metadata: { ...observed.metadata, labels: { ...observed.metadata?.labels, ...this.#o.labels } },
          spec: {
            ...observed.spec,
            ...spec,
            renewTime: stamp,
            acquireTime: ours ? observed.spec?.acquireTime : stamp,
            leaseTransitions: ours ? transitions : transitions + 1,
          },
        });
      }
    } catch (err) {
      if (isConflict(err) || isAlreadyExists(err)) {
        // Someone wrote it since the coordinator listed it (or created it): the next list tells.
        this.#o.logger.debug({ err, lease: this.#leaseKey() }, "shard lease changed before we could take it");
      } else {
        this.#o.logger.warn({ err, lease: this.#leaseKey() }, "could not take the shard lease");
      }
      return false;
    }
    this.#renewedAt = now;
    this.#start();
    return true;
  }

  #start(): void {
    const controller = new AbortController();
    const term: Term = { controller, deadline: undefined, loop: Promise.resolve() };
    this.#term = term;
    this.#armDeadline(term);
    this.#o.logger.info({ shard: this.#o.shard, lease: this.#leaseKey() }, "took the shard");
    try {
      this.#o.onStarted(controller.signal);
    } catch (err) {
      this.#o.logger.error({ err, shard: this.#o.shard }, "starting the shard's work threw");
    }
    term.loop = this.#renewLoop(term);
  }

  async #renewLoop(term: Term): Promise<void> {
    const signal = term.controller.signal;
    // A function, not a property read: the signal aborts while we await.
    const ended = () => signal.aborted;
    while (!ended()) {
      await sleepOn(this.#o.clock, this.#o.retryPeriodMs, signal);
      if (ended()) return;
      const ok = await this.#renew();
      if (ended()) return;
      if (ok) this.#armDeadline(term);
      else if (this.#lostReason !== "") this.#end(term, this.#lostReason);
    }
  }

  /** The deadline counts from when the last good write was sent: see the module doc. */
  #armDeadline(term: Term): void {
    const { clock, renewDeadlineMs } = this.#o;
    if (term.deadline !== undefined) clock.clearTimeout(term.deadline);
    term.deadline = clock.setTimeout(
      () => this.#end(term, "renew deadline exceeded"),
      Math.max(0, this.#renewedAt + renewDeadlineMs - clock.now()),
    );
  }

  /**
   * One renewal from our last write (after a Conflict: a re-read). True when it is still ours;
   * otherwise `#lostReason` says when it is known not to be. A Lease deleted under us counts as
   * lost, not re-created (unlike client-go): another replica may have created it meanwhile.
   */
  async #renew(): Promise<boolean> {
    const { kube, namespace, name, identity } = this.#o;
    const now = this.#o.clock.now();
    const stamp = toMicroTime(new Date(now));
    this.#lostReason = "";
    try {
      this.#lease ??= await kube.getLease(name, namespace);
      const current = this.#lease;
      const holder = current?.spec?.holderIdentity ?? "";
      if (!current || holder !== identity) {
        this.#lostReason = !current
          ? "shard lease deleted"
          : holder === ""
            ? "shard lease released by someone else"
            : `shard lease taken by ${holder}`;
        return false;
      }
      this.#lease = await kube.replaceLease({ ...current, spec: { ...current.spec, renewTime: stamp } });
      this.#renewedAt = now;
      return true;
    } catch (err) {
      if (isNotFound(err)) this.#lostReason = "shard lease deleted";
      if (isConflict(err) || isNotFound(err)) this.#lease = undefined;
      this.#o.logger.warn({ err, lease: this.#leaseKey() }, "shard lease renewal failed");
      return false;
    }
  }

  /** Ends a term at once: the signal aborts, then `onStopped` runs (its promise bounded). */
  #end(term: Term, reason: string): void {
    if (this.#term !== term) return;
    this.#term = undefined;
    this.#o.clock.clearTimeout(term.deadline);
    term.controller.abort(new Error(`shard ${this.#o.shard}: ${reason}`));
    this.#o.logger.info(
      { shard: this.#o.shard, lease: this.#leaseKey(), reason },
      "stopped serving the shard",
    );
    let result: void | Promise<void> = undefined;
    try {
      result = this.#o.onStopped();
    } catch (err) {
      this.#logStopError(err);
    }
    const stopped = this.#settleStop(result).finally(() => {
      if (this.#stopping === stopped) this.#stopping = undefined;
    });
    this.#stopping = stopped;
  }

  /** What `onStopped` returned, awaited up to the renew deadline; its errors are logged. */
  async #settleStop(result: void | Promise<void>): Promise<void> {
    if (!(result instanceof Promise)) return;
    const bound = new AbortController();
    try {
      await Promise.race([
        result.catch((err: unknown) => this.#logStopError(err)),
        sleepOn(this.#o.clock, this.#o.renewDeadlineMs, bound.signal),
      ]);
    } finally {
      bound.abort();
    }
  }

  #logStopError(err: unknown): void {
    this.#o.logger.error({ err, shard: this.#o.shard }, "stopping the shard's work failed");
  }

  /** Empties the holder if our last write still says us (a stale one fails: then it simply expires). */
  async #release(): Promise<void> {
    const lease = this.#lease;
    if (!lease || lease.spec?.holderIdentity !== this.#o.identity) return;
    try {
      this.#lease = await this.#o.kube.replaceLease(releasedLease(lease, this.#o.clock.now()));
      this.#o.logger.info({ shard: this.#o.shard, lease: this.#leaseKey() }, "released the shard lease");
    } catch (err) {
      this.#lease = undefined;
      this.#o.logger.warn({ err, lease: this.#leaseKey() }, "could not release the shard lease; it expires");
    }
  }

  #leaseKey(): string {
    return `${this.#o.namespace}/${this.#o.name}`;
  }
}
