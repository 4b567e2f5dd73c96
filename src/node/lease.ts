/**
 * The node Lease heartbeat, as the kubelet keeps it: one Lease per node in `kube-node-lease`, named
 * after the node and owned by it, renewed about every 10 s with a 40 s duration. Renewals are
 * optimistic (replace with the cached resourceVersion); a conflict re-reads and retries a bounded
 * number of times; a lease that vanished (its node was deleted and garbage-collected) is created
 * again. The first renewal of each node is spread across the whole interval, and every interval is
 * jittered, so a thousand nodes renew as a steady trickle, never as a burst.
 *
 * A heartbeat cannot die: whatever a renewal does (fails with 429 or 5xx, hangs until its timeout,
 * loses the network, fails the very first time), the next one is scheduled. A failed renewal is
 * tried again soon, with a capped backoff that honours `Retry-After`, not a whole interval later,
 * so a few failures in a row never let the lease run out. Renewal depends only on devicelet
 * reaching the API server, never on the devices or the broker (a kubelet renews while it runs).
 */
import type { Logger } from "pino";
import {
  isAlreadyExists,
  isClientClosed,
  isNotFound,
  NODE_LEASE_NAMESPACE,
  retryAfterMs,
  toMicroTime,
  type KubeClient,
  type Lease,
} from "../kube/index.ts";
import { retryDelay } from "../base/backoff.ts";
import { systemClock, type Clock } from "../base/clock.ts";

export interface LeaseOptions {
  readonly kube: Pick<KubeClient, "createLease" | "patchLeaseSpec">;
  readonly nodeName: string;
  /** The Node's uid, for the owner reference that lets the garbage collector remove the Lease. */
  readonly nodeUid: () => string | undefined;
  readonly durationSeconds: number;
  readonly renewIntervalSeconds: number;
  readonly logger: Logger;
  /** Called after every renewal attempt, successful or not. */
  readonly onTick?: () => void;
  /** Called when a renewal succeeds after failures (the API server is reachable again). */
  readonly onRecovered?: () => void;
  /** Called after every successful renewal with how long it took, a create included (metrics). */
  readonly onRenewed?: (seconds: number) => void;
  /** Delay before the first renewal; default a random point of the first interval. */
  readonly firstDelayMs?: number;
  /** Times renewals and stamps `renewTime`; default {@link systemClock}. */
  readonly clock?: Clock;
  /** Jitter source in [0, 1); default `Math.random`. */
  readonly random?: () => number;
  /**
   * The Lease is known not to be there (its Node was just created): the first renewal creates it
   * rather than patching and meeting a 404. Default false: patch first (a restart finds it there).
   */
  readonly missing?: boolean;
  /**
   * Where failures and recoveries are logged: a fleet's leases share one, so an outage reads as a
   * few lines, not one per node. Default: one of this lease's own, on `logger`.
   */
  readonly log?: LeaseLog;
}

/** How many times one renewal switches between patch and create (the lease vanished or appeared). */
const maxSwitches = 3;
/** First retry after a failed renewal; doubles per failure, capped at half the renew interval. */
const retryBaseMs = 500;

export class NodeLease {
  readonly #o: LeaseOptions;
  readonly #clock: Clock;
  readonly #random: () => number;
  /** Whether the lease is there to patch (unknown at first: tried, and created on 404). */
  #exists = true;
  #timer: unknown;
  #renewals = 0;
  #renewedAt: number | undefined;
  #failures = 0;
  #lastError: unknown;
  #signal: AbortSignal | undefined;
  #inFlight = false;
  readonly #log: LeaseLog;

  constructor(options: LeaseOptions) {
    this.#o = options;
    this.#clock = options.clock ?? systemClock;
    this.#random = options.random ?? Math.random;
    this.#log = options.log ?? new LeaseLog(options.logger, this.#clock);
    this.#exists = options.missing !== true;
  }

  get renewals(): number {
    return this.#renewals;
  }

  /** When the lease was last renewed by this process (epoch ms), or undefined. */
  get renewedAt(): number | undefined {
    return this.#renewedAt;
  }

  /** Whether the last renewal attempt failed. */
  get failing(): boolean {
    return this.#failures > 0;
  }

  /**
   * Starts renewing: the first renewal after `firstDelayMs` (default a random point of the first
   * interval), then every interval ±10 %; after a failure, again within a few seconds.
   */
  start(signal: AbortSignal): void {
    this.#signal = signal;
    signal.addEventListener("abort", () => this.#clock.clearTimeout(this.#timer), { once: true });
    this.#schedule(this.#o.firstDelayMs ?? this.#random() * this.#o.renewIntervalSeconds * 1000);
  }

  /**
   * A failing lease tries again within a quarter second instead of waiting for its backoff: the
   * API server is back (another lease just got through), and every heartbeat lost now is a step
   * towards the node-lifecycle controller's grace period.
   */
  renewSoon(): void {
    // Cheap checks first: this runs for every lease of the fleet in a recovery wave, and reading
    // `aborted` of a combined signal (AbortSignal.any) walks its sources.
    if (this.#failures === 0 || this.#inFlight || !this.#signal || this.#signal.aborted) return;
    this.#clock.clearTimeout(this.#timer);
    this.#schedule(this.#random() * 250);
  }

  #schedule(delayMs: number): void {
    const signal = this.#signal;
    if (!signal) return;
    const intervalMs = this.#o.renewIntervalSeconds * 1000;
    this.#timer = this.#clock.setTimeout(() => {
      this.#inFlight = true;
      void this.#tick(signal).then((ok) => {
        this.#inFlight = false;
        if (signal.aborted) return;
        this.#schedule(ok ? intervalMs * (0.9 + this.#random() * 0.2) : this.#retryDelay(intervalMs));
      });
    }, delayMs);
  }

  /** Renews now (also used to create the lease right after the node is registered). */
  async renew(): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        await this.#write();
        this.#exists = true;
        this.#renewals++;
        this.#renewedAt = this.#clock.now();
        return;
      } catch (err) {
        // 404: not there (yet, or any more): create it. 409 on create: it appeared meanwhile.
        if (isNotFound(err) && this.#exists && attempt < maxSwitches) {
          this.#exists = false;
          continue;
        }
        if (isAlreadyExists(err) && !this.#exists && attempt < maxSwitches) {
          this.#exists = true;
          continue;
        }
        throw err;
      }
    }
  }

  /** One renewal attempt; resolves whether it succeeded, never rejects. */
  async #tick(signal: AbortSignal): Promise<boolean> {
    if (signal.aborted) return false;
    const started = this.#clock.now();
    try {
      await this.renew();
      this.#o.onRenewed?.((this.#clock.now() - started) / 1000);
      const recovered = this.#failures > 0;
      if (recovered) this.#log.recovered(this.#o.nodeName, this.#failures);
      this.#failures = 0;
      if (recovered) this.#o.onRecovered?.();
      return true;
    } catch (err) {
      // Stopping: the API client closed under the renewal; nothing failed that the next process must know.
      if (isClientClosed(err)) return false;
      this.#failures++;
      this.#lastError = err;
      this.#log.failed(this.#o.nodeName, this.#failures, err);
      return false;
    } finally {
      this.#o.onTick?.();
    }
  }

  #retryDelay(intervalMs: number): number {
    return retryDelay({
      failures: this.#failures,
      baseMs: retryBaseMs,
      maxMs: intervalMs / 2,
      random: this.#random,
      // Honour the server's Retry-After, but never wait past the interval: the lease must not lapse.
      atLeastMs: Math.min(intervalMs, retryAfterMs(this.#lastError) ?? 0),
    });
  }

  async #write(): Promise<Lease> {
    const { kube, nodeName, durationSeconds } = this.#o;
    const spec = {
      holderIdentity: nodeName,
      leaseDurationSeconds: durationSeconds,
      renewTime: toMicroTime(new Date(this.#clock.now())),
    };
    if (this.#exists) return kube.patchLeaseSpec(nodeName, NODE_LEASE_NAMESPACE, spec);
    const uid = this.#o.nodeUid();
    return kube.createLease({
      apiVersion: "coordination.k8s.io/v1",
      kind: "Lease",
      metadata: {
        name: nodeName,
        namespace: NODE_LEASE_NAMESPACE,
        ownerReferences: uid ? [{ apiVersion: "v1", kind: "Node", name: nodeName, uid }] : undefined,
      },
      spec,
    });
  }
}

/**
 * When one node's lease gets through again after failures, every lease still failing tries now
 * rather than after its backoff (`renewSoon`): at most one such wave per `minGapMs` (default
 * 1 s). A fleet coming back from an outage has thousands of leases recover within a second, and
 * a wave for each would cost leases squared calls: 5,000 nodes made 25 million, which held the
 * event loop long enough for renewals to time out again and the pod watch to stop.
 *
 *   const recovery = new LeaseRecovery(() => [...entries.values()].map((e) => e.lease), clock);
 *   new NodeLease({ ..., onRecovered: () => recovery.recovered() });
 */
export class LeaseRecovery {
  readonly #leases: () => Iterable<Pick<NodeLease, "renewSoon"> | undefined>;
  readonly #clock: Clock;
  readonly #minGapMs: number;
  #lastWaveMs = Number.NEGATIVE_INFINITY;

  constructor(
    leases: () => Iterable<Pick<NodeLease, "renewSoon"> | undefined>,
    clock: Clock = systemClock,
    minGapMs = 1_000,
  ) {
    this.#leases = leases;
    this.#clock = clock;
    this.#minGapMs = minGapMs;
  }

  /** A lease got through after failures: the others try now, unless a wave ran just before. */
  recovered(): void {
    const now = this.#clock.now();
    if (now - this.#lastWaveMs < this.#minGapMs) return;
    this.#lastWaveMs = now;
    for (const lease of this.#leases()) lease?.renewSoon();
  }
}

/**
 * Lease failures and recoveries, logged for a whole fleet: in each window (default 30 s) the first
 * few (default 5) get a line of their own, with the error, and the rest one line between them when
 * the window ends: how many, on how many nodes, a few of their names and the last error. A node's
 * own failures are worth a line only while they are news: its first three, then every tenth.
 * Without this, an API server outage at 5,000 nodes logged 20,000 warnings with a stack each.
 *
 *   const log = new LeaseLog(logger, clock);
 *   new NodeLease({ ..., log });   // every lease of the fleet
 */
export class LeaseLog {
  readonly #logger: Logger;
  readonly #clock: Clock;
  readonly #windowMs: number;
  readonly #detailed: number;
  #window: Window | undefined;

  constructor(
    logger: Logger,
    clock: Clock = systemClock,
    options: { windowMs?: number; detailed?: number } = {},
  ) {
    this.#logger = logger;
    this.#clock = clock;
    this.#windowMs = options.windowMs ?? 30_000;
    this.#detailed = options.detailed ?? 5;
  }

  /** The `failures`-th renewal of `node` in a row failed with `err`. */
  failed(node: string, failures: number, err: unknown): void {
    if (failures > 3 && failures % 10 !== 0) return;
    const tally = this.#open().failures;
    if (tally.logged < this.#detailed) {
      tally.logged++;
      this.#logger.warn({ err, node, failures }, "node lease renewal failed; retrying soon");
      return;
    }
    tally.add(node);
    tally.lastError = err instanceof Error ? err.message : String(err);
  }

  /** `node`'s lease was renewed after `failures` failures in a row. */
  recovered(node: string, failures: number): void {
    const tally = this.#open().recoveries;
    if (tally.logged < this.#detailed) {
      tally.logged++;
      this.#logger.info({ node, failures }, "node lease renewed again after failures");
      return;
    }
    tally.add(node);
  }

  /**
   * Writes the open window's summary now rather than when the window ends: called when the fleet
   * stops, so the last window of a stopping process is not lost.
   */
  flush(): void {
    const window = this.#window;
    if (!window) return;
    this.#clock.clearTimeout(window.timer);
    this.#close(window);
  }

  #open(): Window {
    if (this.#window) return this.#window;
    const window: Window = { failures: new Tally(), recoveries: new Tally(), timer: undefined };
    this.#window = window;
    window.timer = this.#clock.setTimeout(() => this.#close(window), this.#windowMs);
    return window;
  }

  #close({ failures, recoveries }: Window): void {
    this.#window = undefined;
    if (failures.count > 0)
      this.#logger.warn(
        {
          failures: failures.count,
          nodes: failures.nodes.size,
          some: failures.some(),
          lastError: failures.lastError,
        },
        "node lease renewals failing on more nodes (not logged one by one); retrying soon",
      );
    if (recoveries.count > 0)
      this.#logger.info(
        { nodes: recoveries.nodes.size, some: recoveries.some() },
        "node leases renewed again after failures on more nodes (not logged one by one)",
      );
  }
}

interface Window {
  readonly failures: Tally;
  readonly recoveries: Tally;
  /** The clock's handle of the timer that ends the window. */
  timer: unknown;
}

/** One window's events of one kind: those logged one by one, and the rest counted. */
class Tally {
  logged = 0;
  count = 0;
  readonly nodes = new Set<string>();
  lastError: string | undefined;

  add(node: string): void {
    this.count++;
    this.nodes.add(node);
  }

  /** A few of the nodes, for an operator to look at. */
  some(): string[] {
    return [...this.nodes].slice(0, 5);
  }
}
