/**
 * Client-side budgets for IoT Hub's service operations: one token bucket per operation class, so
 * devicelet stays inside its share of the hub's quotas instead of meeting 429s, and counters of the
 * operations sent per class (metrics, the benchmark's "hub operations per pod").
 *
 * A call waits for a token (`take` resolves when one is free, in call order per class, urgent
 * calls first); it never fails for lack of budget. The buckets hold at most one second's worth (one minute's for queries),
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

interface Waiter {
  readonly resolve: () => void;
  readonly signal: AbortSignal;
}

interface Bucket {
  /** Tokens added per millisecond. */
  readonly perMs: number;
  readonly capacity: number;
  tokens: number;
  at: number;
  /** Takers in call order; every urgent one is served before any normal one. */
  readonly urgent: Waiter[];
  readonly normal: Waiter[];
  /** Whether a loop hands out tokens now (one per bucket). */
  serving: boolean;
}

/** `urgent`: an operation something waits on now (a desired write's etag read), served first. */
export type Priority = "urgent" | "normal";

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
      return {
        perMs: perSecond / 1000,
        capacity,
        tokens: capacity,
        at: now,
        urgent: [],
        normal: [],
        serving: false,
      };
    };
    this.#buckets = {
      query: bucket(o.rates.queriesPerMinute / 60, 60),
      twinRead: bucket(o.rates.twinReadsPerSecond, 1),
      twinUpdate: bucket(o.rates.twinUpdatesPerSecond, 1),
      method: bucket(o.rates.methodsPerSecond, 1),
    };
  }

  /**
   * Resolves when an operation of `kind` may be sent (at once when the signal aborts), urgent
   * takers before normal ones, each in call order. Counts it.
   */
  take(kind: OperationClass, signal: AbortSignal, priority: Priority = "normal"): Promise<void> {
    const bucket = this.#buckets[kind];
    return new Promise<void>((resolve) => {
      bucket[priority].push({ resolve, signal });
      void this.#serve(kind, bucket);
    });
  }

  async #serve(kind: OperationClass, bucket: Bucket): Promise<void> {
    if (bucket.serving) return;
    bucket.serving = true;
    try {
      for (;;) {
        const next = bucket.urgent[0] ?? bucket.normal[0];
        if (next === undefined) return;
        if (!next.signal.aborted) {
          const now = this.#clock.now();
          bucket.tokens = Math.min(bucket.capacity, bucket.tokens + (now - bucket.at) * bucket.perMs);
          bucket.at = now;
          if (bucket.tokens < 1) {
            // An urgent taker arriving meanwhile is looked at first when the wait ends.
            await sleepOn(this.#clock, Math.ceil((1 - bucket.tokens) / bucket.perMs), next.signal);
            continue;
          }
          bucket.tokens -= 1;
          this.#counts[kind] += 1;
        }
        (bucket.urgent[0] === next ? bucket.urgent : bucket.normal).shift();
        next.resolve();
      }
    } finally {
      bucket.serving = false;
    }
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
