/**
 * {@link startResync}: the periodic resync of a level-triggered controller. Every `intervalMs`
 * (each period jittered by ±`jitter`, so many replicas and restarts do not line up) it hands the
 * keys to re-check to `enqueue`, each after a random delay within the first tenth of the period,
 * so a large fleet is spread out instead of arriving in one burst. A resync finds what a lost
 * watch event or a dropped notification left behind; when nothing changed, the reconcile it
 * causes must cost no API call (the controller's caches and status comparison see to that).
 *
 *   startResync({ intervalMs: 300_000, keys: () => managedKeys(), enqueue: (k, d) => queue.addAfter(k, d) }, signal);
 */
import { systemClock, type Clock } from "../base/clock.ts";

export interface ResyncOptions {
  /** Period; 0 or less turns the resync off. */
  readonly intervalMs: number;
  /** Fraction of the period each one may be shorter or longer by (default 0.1). */
  readonly jitter?: number;
  readonly keys: () => Iterable<string>;
  readonly enqueue: (key: string, delayMs: number) => void;
  /** Randomness for the jitter and the spread; default `Math.random`. */
  readonly random?: () => number;
  /** Times the periods; default {@link systemClock}. */
  readonly clock?: Clock;
}

/** Starts the resync loop; it stops when `signal` aborts. */
export function startResync(options: ResyncOptions, signal: AbortSignal): void {
  if (options.intervalMs <= 0 || signal.aborted) return;
  const random = options.random ?? Math.random;
  const jitter = options.jitter ?? 0.1;
  const clock = options.clock ?? systemClock;
  let timer: unknown;
  const schedule = () => {
    const period = options.intervalMs * (1 - jitter + 2 * jitter * random());
    timer = clock.setTimeout(() => {
      if (signal.aborted) return;
      for (const key of options.keys()) options.enqueue(key, Math.floor(random() * period * 0.1));
      schedule();
    }, period);
  };
  signal.addEventListener("abort", () => clock.clearTimeout(timer), { once: true });
  schedule();
}
