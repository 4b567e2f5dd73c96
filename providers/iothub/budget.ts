/**
 * Client-side budgets for IoT Hub's service operations: one token bucket per operation class, so
 * devicelet stays inside its share of the hub's quotas instead of meeting 429s, and counters of the
 * operations sent per class (metrics, the benchmark's "hub operations per pod").
 *
 * A call waits for a token (`take` resolves when one is free, in call order per class); it never
 * fails for lack of budget. The buckets hold at most one second's worth (one minute's for queries),
 * so an idle period never lets a burst far past the rate through.
 *
 *   const budget = new OperationBudget({ rates: DEFAULT_RATES });
 *   await budget.take("twinRead", signal);     // waits while the class is spent
 *   budget.counts();                            // { query: 3, twinRead: 41, ... }
 */
import { sleepOn, systemClock, type Clock } from "../../src/base/clock.ts";
import { budgetRates, type OperationRates } from "./quotas.ts";

export type { OperationRates } from "./quotas.ts";

export type OperationClass = "query" | "twinRead" | "twinUpdate" | "method";

/** devicelet's share of one S1 unit, the default (quotas.ts: the hub's throttles and the split). */
export const DEFAULT_RATES: OperationRates = budgetRates({ tier: "S1", units: 1 });

interface Bucket {
  /** Tokens added per millisecond. */
  readonly perMs: number;
  readonly capacity: number;
  tokens: number;
  at: number;
  /** The tail of the waiters' chain: takers are served in call order. */
  queue: Promise<void>;
}

export class OperationBudget {
  readonly #clock: Clock;
  readonly #buckets: Record<OperationClass, Bucket>;
  readonly #counts: Record<OperationClass, number> = { query: 0, twinRead: 0, twinUpdate: 0, method: 0 };

  constructor(o: { readonly rates: OperationRates; readonly clock?: Clock }) {
    this.#clock = o.clock ?? systemClock;
    const now = this.#clock.now();
    const bucket = (perSecond: number, windowSeconds: number): Bucket => {
      if (!(perSecond > 0)) throw new Error(`an operation rate must be positive, not ${perSecond}`);
      const capacity = Math.max(1, perSecond * windowSeconds);
      return { perMs: perSecond / 1000, capacity, tokens: capacity, at: now, queue: Promise.resolve() };
    };
    this.#buckets = {
      query: bucket(o.rates.queriesPerMinute / 60, 60),
      twinRead: bucket(o.rates.twinReadsPerSecond, 1),
      twinUpdate: bucket(o.rates.twinUpdatesPerSecond, 1),
      method: bucket(o.rates.methodsPerSecond, 1),
    };
  }

  /** Resolves when an operation of `kind` may be sent (at once when the signal aborts). Counts it. */
  take(kind: OperationClass, signal: AbortSignal): Promise<void> {
    const bucket = this.#buckets[kind];
    const turn = bucket.queue.then(async () => {
      for (;;) {
        const now = this.#clock.now();
        bucket.tokens = Math.min(bucket.capacity, bucket.tokens + (now - bucket.at) * bucket.perMs);
        bucket.at = now;
        if (bucket.tokens >= 1 || signal.aborted) break;
        await sleepOn(this.#clock, Math.ceil((1 - bucket.tokens) / bucket.perMs), signal);
      }
      bucket.tokens -= 1;
      this.#counts[kind] += 1;
    });
    bucket.queue = turn;
    return turn;
  }

  /** Whether an operation of `kind` could be sent now without waiting. */
  available(kind: OperationClass): boolean {
    const bucket = this.#buckets[kind];
    const tokens = Math.min(bucket.capacity, bucket.tokens + (this.#clock.now() - bucket.at) * bucket.perMs);
    return tokens >= 1;
  }

  /** Operations sent so far, by class (a copy). */
  counts(): Record<OperationClass, number> {
    return { ...this.#counts };
  }
}
