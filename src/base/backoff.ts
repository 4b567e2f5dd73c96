/**
 * The one retry delay of devicelet: exponential from `baseMs`, capped at `maxMs`, jittered, and
 * never shorter than what the failure itself asked for (an HTTP `Retry-After`). Every retry loop
 * (work queue, node leases, informers, MQTT reconnects and stores, desired documents, restarts of
 * crashed apps) computes its wait here; they differ only in their bounds and jitter.
 *
 *   retryDelay({ failures: 3, baseMs: 500, maxMs: 5_000 });                     // about 2 s
 *   retryDelay({ failures: 1, baseMs: 500, maxMs: 5_000, atLeastMs: 4_000 });   // 4 s
 *   retryDelay({ failures: 2, baseMs: 10_000, maxMs: 300_000, jitter: "none" }); // 20 s exactly
 */

/**
 * How the exponential step is spread:
 * - `"proportional"` (default): ×0.8–1.2, so many failing keys of one process do not retry in step.
 * - `"equal"`: half the step fixed, half random (0.5–1.0 ×). Wider, for clients of one shared
 *   server (watches, broker connections) that all lost it at once, yet never a hot loop.
 * - `"none"`: the step exactly, where the wait is a documented contract (the kubelet's
 *   CrashLoopBackOff: 10 s doubling to 5 min, no jitter) or is shown to users.
 */
export type Jitter = "proportional" | "equal" | "none";

export function retryDelay(o: {
  /** Consecutive failures so far, at least 1: the first retry waits about `baseMs`. */
  readonly failures: number;
  readonly baseMs: number;
  readonly maxMs: number;
  readonly atLeastMs?: number | undefined;
  readonly jitter?: Jitter;
  /** Jitter source in [0, 1); default `Math.random`. */
  readonly random?: () => number;
}): number {
  const step = Math.min(o.maxMs, o.baseMs * 2 ** Math.min(Math.max(o.failures, 1) - 1, 30));
  const random = o.random ?? Math.random;
  const jitter = o.jitter ?? "proportional";
  const jittered =
    jitter === "none"
      ? step
      : jitter === "equal"
        ? step / 2 + (random() * step) / 2
        : step * (0.8 + random() * 0.4);
  return Math.max(jittered, o.atLeastMs ?? 0);
}
