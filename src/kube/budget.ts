/**
 * The one request budget every API-server call of the process draws from: a token bucket
 * (`qps` refill, `burst` capacity, like client-go's `QPS`/`Burst`), served first come first
 * served, plus counters of requests by verb and resource so tests and benchmarks can count API
 * calls ("at most 2 API writes per pod start").
 *
 *   const budget = new RequestBudget({ qps: 50, burst: 100 });
 *   await budget.take(signal);              // waits for a token; rejects when `signal` aborts
 *   budget.record("patch", "pods/status");  // counted once per HTTP request actually sent
 *   budget.counts();                        // { "patch pods/status": 1 }
 *   budget.observe({ waited: (s) => ..., answered: (verb, code) => ... });  // metrics (src/metrics)
 */

import { monotonicClock, type Clock } from "../base/clock.ts";

export interface RequestBudgetOptions {
  /** Sustained requests per second; `Infinity` disables the limit (counting still works). */
  readonly qps: number;
  /** Requests allowed at once after a quiet period; at least 1. */
  readonly burst: number;
  readonly clock?: Clock;
}

/**
 * Told about every token taken and every answer recorded (src/metrics). Called synchronously, so
 * each must be cheap and must not throw.
 */
export interface BudgetObserver {
  /** A token was taken after waiting this long (0 when one was free at once). */
  readonly waited?: (seconds: number) => void;
  /** An answer came: the HTTP status code as text, or `error` when none came (refused, timed out). */
  readonly answered?: (verb: string, code: string) => void;
}

interface Waiter {
  resolve: () => void;
  reject: (reason: unknown) => void;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
}

export class RequestBudget {
  readonly qps: number;
  readonly burst: number;
  readonly #clock: Clock;
  #tokens: number;
  #last: number;
  readonly #queue: Waiter[] = [];
  #timer: unknown;
  readonly #counts = new Map<string, number>();
  readonly #observers = new Set<BudgetObserver>();

  constructor(options: RequestBudgetOptions) {
    if (!(options.qps > 0)) throw new RangeError(`RequestBudget: qps must be > 0, got ${options.qps}`);
    if (!(options.burst >= 1))
      throw new RangeError(`RequestBudget: burst must be >= 1, got ${options.burst}`);
    this.qps = options.qps;
    this.burst = Math.floor(options.burst);
    this.#clock = options.clock ?? monotonicClock;
    this.#tokens = this.burst;
    this.#last = this.#clock.now();
  }

  /**
   * Waits for one request token. Resolves at once while tokens remain and nobody is queued;
   * otherwise queues (FIFO) until the bucket refills. Rejects with `signal.reason` if the signal
   * aborts first, and then gives no token away.
   */
  take(signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.reject(signal.reason as Error);
    if (this.qps === Infinity || this.#tryTake()) {
      this.#waited(0);
      return Promise.resolve();
    }
    const queuedAt = this.#clock.now();
    return new Promise<void>((resolve, reject) => {
      const granted = () => {
        this.#waited((this.#clock.now() - queuedAt) / 1000);
        resolve();
      };
      const waiter: Waiter = { resolve: granted, reject, signal, onAbort: undefined };
      if (signal) {
        waiter.onAbort = () => {
          const i = this.#queue.indexOf(waiter);
          if (i >= 0) this.#queue.splice(i, 1);
          reject(signal.reason as Error);
          if (this.#queue.length === 0) this.#cancelTimer();
        };
        signal.addEventListener("abort", waiter.onAbort, { once: true });
      }
      this.#queue.push(waiter);
      this.#schedule();
    });
  }

  /** Starts telling `observer` about waits and answers; returns the function that stops it. */
  observe(observer: BudgetObserver): () => void {
    this.#observers.add(observer);
    return () => this.#observers.delete(observer);
  }

  /** Tells the observers how a request sent was answered (`code`: HTTP status, or `error`). */
  answered(verb: string, code: string): void {
    for (const o of this.#observers) o.answered?.(verb, code);
  }

  /** Counts one request sent, under `"<verb> <resource>"` (e.g. `"patch pods/status"`). */
  record(verb: string, resource: string): void {
    const key = `${verb} ${resource}`;
    this.#counts.set(key, (this.#counts.get(key) ?? 0) + 1);
  }

  /** A snapshot of the request counters, keyed `"<verb> <resource>"`. The caller owns it. */
  counts(): Record<string, number> {
    return Object.fromEntries(this.#counts);
  }

  /** Sum of the counters, optionally only for some verbs (e.g. writes: create, update, patch, delete). */
  total(verbs?: readonly string[]): number {
    let sum = 0;
    for (const [key, n] of this.#counts) {
      if (!verbs || verbs.includes(key.slice(0, key.indexOf(" ")))) sum += n;
    }
    return sum;
  }

  /** Callers currently waiting for a token. */
  get waiting(): number {
    return this.#queue.length;
  }

  #tryTake(): boolean {
    this.#refill();
    if (this.#queue.length > 0 || this.#tokens < 1) return false;
    this.#tokens -= 1;
    return true;
  }

  #waited(seconds: number): void {
    for (const o of this.#observers) o.waited?.(seconds);
  }

  #refill(): void {
    const now = this.#clock.now();
    const elapsed = Math.max(0, now - this.#last);
    this.#last = now;
    this.#tokens = Math.min(this.burst, this.#tokens + (elapsed * this.qps) / 1000);
  }

  #schedule(): void {
    if (this.#timer !== undefined || this.#queue.length === 0) return;
    const ms = Math.max(0, Math.ceil(((1 - this.#tokens) * 1000) / this.qps));
    this.#timer = this.#clock.setTimeout(() => {
      this.#timer = undefined;
      this.#drain();
    }, ms);
  }

  #drain(): void {
    this.#refill();
    while (this.#queue.length > 0 && this.#tokens >= 1) {
      const waiter = this.#queue.shift();
      if (!waiter) break;
      this.#tokens -= 1;
      if (waiter.signal && waiter.onAbort) waiter.signal.removeEventListener("abort", waiter.onAbort);
      waiter.resolve();
    }
    this.#schedule();
  }

  #cancelTimer(): void {
    if (this.#timer === undefined) return;
    this.#clock.clearTimeout(this.#timer);
    this.#timer = undefined;
  }
}
