/**
 * The one time source of the process, injected wherever code waits or stamps: the work queue, the
 * lease loop, both controllers, the request budget, the providers and the device side. Tests pass
 * a {@link FakeClock} (`src/base/fake-clock.ts`) and move time by hand instead of sleeping.
 *
 *   const clock: Clock = options.clock ?? systemClock;
 *   const handle = clock.setTimeout(() => queue.add(key), 500);
 *   clock.clearTimeout(handle);
 */
export interface Clock {
  /** Milliseconds since the epoch ({@link monotonicClock}: on a scale that never goes back). */
  now(): number;
  /** Runs `fn` once after `ms`; the handle is only for {@link Clock.clearTimeout}. */
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

const unrefTimeout = (fn: () => void, ms: number): unknown => {
  // The global is looked up at each call, so vitest fake timers installed later still apply.
  const timer = setTimeout(fn, ms) as { unref?: () => void };
  // A pending retry, report or restart never keeps a finished process alive.
  timer.unref?.();
  return timer;
};
const clearAnyTimeout = (handle: unknown): void => {
  clearTimeout(handle as ReturnType<typeof setTimeout>);
};

/** Wall-clock time (`Date.now`) and unref'd timers. */
export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: unrefTimeout,
  clearTimeout: clearAnyTimeout,
};

/** `performance.now` (unaffected by wall-clock steps) for rates and budgets; unref'd timers. */
export const monotonicClock: Clock = {
  now: () => performance.now(),
  setTimeout: unrefTimeout,
  clearTimeout: clearAnyTimeout,
};

/**
 * Resolves after `ms` on `clock`'s time, or at once when `signal` aborts (never rejects): the
 * wait between tries of a loop that checks its signal itself (the informers' re-list backoff).
 */
export function sleepOn(clock: Clock, ms: number, signal: AbortSignal): Promise<void> {
  return new Promise<void>((resolve) => {
    if (signal.aborted) {
      resolve();
      return;
    }
    const done = () => {
      clock.clearTimeout(handle);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const handle = clock.setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}
