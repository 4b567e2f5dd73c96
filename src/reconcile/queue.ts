/**
 * A keyed work queue in the manner of client-go's workqueue: a key is processed by at most one
 * worker at a time, adding a key that is already waiting is a no-op, adding one that is being
 * processed marks it dirty so it runs once more afterwards, and failures are retried with
 * exponential backoff up to a bound. Watch handlers only `add(key)`; the reconcile function re-reads
 * state, so nothing is lost by coalescing.
 *
 *   const queue = new WorkQueue({ concurrency: 8, reconcile: (key) => controller.reconcile(key), ... });
 *   queue.start(signal); queue.add("ns/pod");
 *
 * A key added `first` goes ahead of every key added without: a status a device reported waits for
 * a worker behind other reported statuses only, not behind deletes and re-reads (a fleet coming
 * back with a queued change each has both for every device). Within each line, oldest first. A
 * failed key is retried in the line it was taken from.
 *
 * `reconcile` resolves to `undefined` when done, or `{ requeueAfterMs }` to look again later
 * without counting a failure. Throwing counts a failure and is retried with capped exponential
 * backoff (at least as long as the error's `retryAfterMs` asks), for as long as it keeps failing:
 * work is never dropped because the API server had a bad afternoon. Only a terminal error (per
 * `isTerminal`: the request itself is wrong) is logged and not retried; the next `add` of the key,
 * which a change of the object brings, tries again.
 */
import type { Logger } from "pino";
import { retryDelay } from "../base/backoff.ts";
import { systemClock, type Clock } from "../base/clock.ts";

/** Which line a waiting key is in. */
type Line = "first" | "later";

export type ReconcileResult = undefined | { readonly requeueAfterMs: number };

export interface WorkQueueOptions {
  readonly name: string;
  /**
   * The log field a key goes in (docs/configuration.md § Log fields): `pod` for
   * `namespace/name` keys, `device` for device ids; default `key`.
   */
  readonly keyField?: "pod" | "device";
  readonly concurrency: number;
  readonly reconcile: (key: string) => Promise<ReconcileResult>;
  readonly logger: Logger;
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
  readonly isTerminal?: (err: unknown) => boolean;
  /** The least delay the failure itself asks for (an HTTP `Retry-After`), in milliseconds. */
  readonly retryAfterMs?: (err: unknown) => number | undefined;
  /** Called once per terminal failure, after it is logged (e.g. to record an Event). */
  readonly onTerminal?: (key: string, err: unknown) => void;
  /** Times delayed adds and retries; default {@link systemClock}. */
  readonly clock?: Clock;
}

export class WorkQueue {
  readonly #options: WorkQueueOptions;
  /** The two lines; a key moved to `first` stays behind in `later`, skipped when its turn comes. */
  readonly #lines = { first: [] as string[], later: [] as string[] };
  /** Keys waiting, by the line they wait in. */
  readonly #queued = new Map<string, Line>();
  /** Keys being processed, by the line each was taken from (a retry goes back to it). */
  readonly #active = new Map<string, Line>();
  /** Keys added while being processed, to run once more, by line. */
  readonly #dirty = new Map<string, Line>();
  readonly #failures = new Map<string, number>();
  readonly #clock: Clock;
  readonly #timers = new Map<string, { at: number; timer: unknown; line: Line }>();
  #running = 0;
  #signal: AbortSignal | undefined;
  #idleWaiters: (() => void)[] = [];
  #processed = 0;
  #failed = 0;

  constructor(options: WorkQueueOptions) {
    this.#options = options;
    this.#clock = options.clock ?? systemClock;
  }

  /**
   * Starts processing; when `signal` aborts it stops taking new work, drops what is pending, and
   * `idle()` resolves once the reconciles already running have returned.
   */
  start(signal: AbortSignal): void {
    this.#signal = signal;
    signal.addEventListener("abort", () => {
      for (const { timer } of this.#timers.values()) this.#clock.clearTimeout(timer);
      this.#timers.clear();
      this.#lines.first.length = 0;
      this.#lines.later.length = 0;
      this.#queued.clear();
      this.#dirty.clear();
      this.#pump();
    });
    this.#pump();
  }

  /**
   * Queues `key` now (coalesced with any pending or delayed add); `first` puts it in the first
   * line, or moves it there when it waits in the other.
   */
  add(key: string, o: { readonly first?: boolean } = {}): void {
    if (this.#signal?.aborted) return;
    let line: Line = o.first ? "first" : "later";
    const delayed = this.#timers.get(key);
    if (delayed) {
      this.#clock.clearTimeout(delayed.timer);
      this.#timers.delete(key);
      if (delayed.line === "first") line = "first";
    }
    if (this.#active.has(key)) {
      if (line === "first" || !this.#dirty.has(key)) this.#dirty.set(key, line);
      return;
    }
    const queued = this.#queued.get(key);
    if (queued === "first" || queued === line) return;
    this.#queued.set(key, line);
    this.#lines[line].push(key);
    this.#pump();
  }

  /** Queues `key` after `delayMs`; an earlier add for the same key wins, and `first` sticks. */
  addAfter(key: string, delayMs: number, o: { readonly first?: boolean } = {}): void {
    if (this.#signal?.aborted) return;
    if (delayMs <= 0) {
      this.add(key, o);
      return;
    }
    const at = this.#clock.now() + delayMs;
    const existing = this.#timers.get(key);
    if (existing && existing.at <= at) {
      if (o.first) existing.line = "first";
      return;
    }
    if (existing) this.#clock.clearTimeout(existing.timer);
    const line: Line = o.first || existing?.line === "first" ? "first" : "later";
    // The clock's timers never keep a finished process alive (systemClock unrefs them).
    const timer = this.#clock.setTimeout(() => {
      const entry = this.#timers.get(key);
      this.#timers.delete(key);
      this.add(key, { first: entry?.line === "first" });
    }, delayMs);
    this.#timers.set(key, { at, timer, line });
  }

  /** Forgets a key's failure count (after a success, or when its object is gone). */
  forget(key: string): void {
    this.#failures.delete(key);
  }

  get length(): number {
    return this.#queued.size;
  }

  stats() {
    return {
      pending: this.#queued.size,
      active: this.#active.size,
      delayed: this.#timers.size,
      processed: this.#processed,
      failed: this.#failed,
    };
  }

  /**
   * Resolves when nothing is pending or running (delayed keys do not count); once stopped, when
   * nothing is running. Start-up code awaits this, so it must settle on stop too.
   */
  async idle(): Promise<void> {
    if (this.#running === 0 && (this.#queued.size === 0 || this.#signal?.aborted)) return;
    await new Promise<void>((resolve) => this.#idleWaiters.push(resolve));
  }

  #pump(): void {
    if (!this.#signal) return;
    while (!this.#signal.aborted && this.#running < this.#options.concurrency && this.#queued.size > 0) {
      const key = this.#next();
      if (key === undefined) break;
      this.#active.set(key, this.#queued.get(key) ?? "later");
      this.#queued.delete(key);
      this.#running++;
      void this.#process(key);
    }
    if (this.#running === 0 && (this.#queued.size === 0 || this.#signal.aborted)) {
      const waiters = this.#idleWaiters;
      this.#idleWaiters = [];
      for (const w of waiters) w();
    }
  }

  /** The oldest key of the first line, else of the other; skips keys that moved to the first. */
  #next(): string | undefined {
    for (const line of ["first", "later"] as const) {
      const keys = this.#lines[line];
      while (keys.length > 0) {
        const key = keys.shift() as string;
        if (this.#queued.get(key) === line) return key;
      }
    }
    return undefined;
  }

  async #process(key: string): Promise<void> {
    const { reconcile } = this.#options;
    try {
      const result = await reconcile(key);
      this.#failures.delete(key);
      if (result) this.addAfter(key, result.requeueAfterMs);
    } catch (err) {
      // Stopping: a request cut short by the shutdown (the API client closed under it) is no
      // failure to retry or warn of; the next process reconciles the key from scratch.
      if (this.#signal?.aborted)
        this.#options.logger.debug({ err, queue: this.#options.name }, "reconcile cut short by the shutdown");
      else {
        this.#failed++;
        this.#retry(key, err, this.#active.get(key) ?? "later");
      }
    } finally {
      this.#processed++;
      this.#active.delete(key);
      this.#running--;
      const dirty = this.#dirty.get(key);
      if (dirty !== undefined) {
        this.#dirty.delete(key);
        this.add(key, { first: dirty === "first" });
      }
      this.#pump();
    }
  }

  /** Retries `key` after its backoff, in the line it was taken from. */
  #retry(key: string, err: unknown, line: Line): void {
    const { logger, baseDelayMs, maxDelayMs, isTerminal, name } = this.#options;
    const keyField = this.#options.keyField ?? "key";
    if (isTerminal?.(err)) {
      logger.error(
        { err, [keyField]: key, queue: name },
        "reconcile failed terminally; retrying when the object changes",
      );
      this.#failures.delete(key);
      this.#options.onTerminal?.(key, err);
      return;
    }
    const failures = (this.#failures.get(key) ?? 0) + 1;
    this.#failures.set(key, failures);
    const delay = retryDelay({
      failures,
      baseMs: baseDelayMs,
      maxMs: maxDelayMs,
      atLeastMs: this.#options.retryAfterMs?.(err),
    });
    // Every failure of a short streak, then one line in ten: a long outage must not flood the log.
    if (failures <= 3 || failures % 10 === 0)
      logger.warn(
        { err, [keyField]: key, queue: name, failures, retryInMs: Math.round(delay) },
        "reconcile failed; retrying",
      );
    this.addAfter(key, delay, { first: line === "first" });
  }

  /** Keys failing right now and their consecutive failure counts; for metrics and tests. */
  failing(): number {
    return this.#failures.size;
  }
}
