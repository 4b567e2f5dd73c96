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
 * without counting a failure. Throwing counts a failure; a terminal error (per `isTerminal`) is
 * logged and not retried.
 */
import type { Logger } from "pino";

export type ReconcileResult = undefined | { readonly requeueAfterMs: number };

export interface WorkQueueOptions {
  readonly name: string;
  readonly concurrency: number;
  readonly reconcile: (key: string) => Promise<ReconcileResult>;
  readonly logger: Logger;
  readonly maxRetries: number;
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
  readonly isTerminal?: (err: unknown) => boolean;
}

export class WorkQueue {
  readonly #options: WorkQueueOptions;
  readonly #pending: string[] = [];
  readonly #queued = new Set<string>();
  readonly #active = new Set<string>();
  readonly #dirty = new Set<string>();
  readonly #failures = new Map<string, number>();
  readonly #timers = new Map<string, { at: number; timer: NodeJS.Timeout }>();
  #running = 0;
  #signal: AbortSignal | undefined;
  #idleWaiters: (() => void)[] = [];
  #processed = 0;
  #failed = 0;

  constructor(options: WorkQueueOptions) {
    this.#options = options;
  }

  /** Starts processing; stops taking new work when `signal` aborts. */
  start(signal: AbortSignal): void {
    this.#signal = signal;
    signal.addEventListener("abort", () => {
      for (const { timer } of this.#timers.values()) clearTimeout(timer);
      this.#timers.clear();
    });
    this.#pump();
  }

  /** Queues `key` now (coalesced with any pending or delayed add). */
  add(key: string): void {
    if (this.#signal?.aborted) return;
    const delayed = this.#timers.get(key);
    if (delayed) {
      clearTimeout(delayed.timer);
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
    const at = Date.now() + delayMs;
    const existing = this.#timers.get(key);
    if (existing && existing.at <= at) return;
    if (existing) clearTimeout(existing.timer);
    const timer = setTimeout(() => {
      this.#timers.delete(key);
      this.add(key);
    }, delayMs);
    timer.unref();
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

  /** Resolves when nothing is pending or running (delayed keys do not count). */
  async idle(): Promise<void> {
    if (this.#pending.length === 0 && this.#running === 0) return;
    await new Promise<void>((resolve) => this.#idleWaiters.push(resolve));
  }

  #pump(): void {
    if (!this.#signal || this.#signal.aborted) return;
    while (this.#running < this.#options.concurrency && this.#pending.length > 0) {
      const key = this.#pending.shift() as string;
      this.#queued.delete(key);
      this.#active.add(key);
      this.#running++;
      void this.#process(key);
    }
    if (this.#running === 0 && this.#pending.length === 0) {
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
    const { logger, maxRetries, baseDelayMs, maxDelayMs, isTerminal, name } = this.#options;
    if (isTerminal?.(err)) {
      logger.error({ err, key, queue: name }, "reconcile failed terminally; not retrying");
      this.#failures.delete(key);
      return;
    }
    const failures = (this.#failures.get(key) ?? 0) + 1;
    if (failures > maxRetries) {
      logger.error(
        { err, key, queue: name, failures },
        "reconcile failed too often; giving up until the object changes",
      );
      this.#failures.delete(key);
      return;
    }
    this.#failures.set(key, failures);
    const delay = Math.min(maxDelayMs, baseDelayMs * 2 ** (failures - 1)) * (0.8 + Math.random() * 0.4);
    logger.warn(
      { err, key, queue: name, failures, retryInMs: Math.round(delay) },
      "reconcile failed; retrying",
    );
    this.addAfter(key, delay);
  }
}
