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
  readonly #pending: string[] = [];
  readonly #queued = new Set<string>();
  readonly #active = new Set<string>();
  readonly #dirty = new Set<string>();
  readonly #failures = new Map<string, number>();
  readonly #clock: Clock;
  readonly #timers = new Map<string, { at: number; timer: unknown }>();
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
      this.#pending.length = 0;
      this.#queued.clear();
      this.#dirty.clear();
      this.#pump();
    });
    this.#pump();
  }

  /** Queues `key` now (coalesced with any pending or delayed add). */
  add(key: string): void {
    if (this.#signal?.aborted) return;
    const delayed = this.#timers.get(key);
    if (delayed) {
      this.#clock.clearTimeout(delayed.timer);
      this.#timers.delete(key);
    }
    if (this.#active.has(key)) {
      this.#dirty.add(key);
      return;
    }
    if (this.#queued.has(key)) return;
    this.#queued.add(key);
    this.#pending.push(key);
    this.#pump();
  }

  /** Queues `key` after `delayMs`; an earlier add for the same key wins. */
  addAfter(key: string, delayMs: number): void {
    if (this.#signal?.aborted) return;
    if (delayMs <= 0) {
      this.add(key);
      return;
    }
    const at = this.#clock.now() + delayMs;
    const existing = this.#timers.get(key);
    if (existing && existing.at <= at) return;
    if (existing) this.#clock.clearTimeout(existing.timer);
    // The clock's timers never keep a finished process alive (systemClock unrefs them).
    const timer = this.#clock.setTimeout(() => {
      this.#timers.delete(key);
      this.add(key);
    }, delayMs);
    this.#timers.set(key, { at, timer });
  }

  /** Forgets a key's failure count (after a success, or when its object is gone). */
  forget(key: string): void {
    this.#failures.delete(key);
  }

  get length(): number {
    return this.#pending.length;
  }

  stats() {
    return {
      pending: this.#pending.length,
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
    if (this.#running === 0 && (this.#pending.length === 0 || this.#signal?.aborted)) return;
    await new Promise<void>((resolve) => this.#idleWaiters.push(resolve));
  }

  #pump(): void {
    if (!this.#signal) return;
    while (!this.#signal.aborted && this.#running < this.#options.concurrency && this.#pending.length > 0) {
      const key = this.#pending.shift() as string;
      this.#queued.delete(key);
      this.#active.add(key);
      this.#running++;
      void this.#process(key);
    }
    if (this.#running === 0 && (this.#pending.length === 0 || this.#signal.aborted)) {
      const waiters = this.#idleWaiters;
      this.#idleWaiters = [];
      for (const w of waiters) w();
    }
  }

  async #process(key: string): Promise<void> {
    const { reconcile } = this.#options;
    try {
      const result = await reconcile(key);
      this.#failures.delete(key);
      if (result) this.addAfter(key, result.requeueAfterMs);
    } catch (err) {
      this.#failed++;
      this.#retry(key, err);
    } finally {
      this.#processed++;
      this.#active.delete(key);
      this.#running--;
      if (this.#dirty.delete(key)) this.add(key);
      this.#pump();
    }
  }

  #retry(key: string, err: unknown): void {
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
    this.addAfter(key, delay);
  }

  /** Keys failing right now and their consecutive failure counts; for metrics and tests. */
  failing(): number {
    return this.#failures.size;
  }
}
