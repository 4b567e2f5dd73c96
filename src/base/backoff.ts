/**
 * The one retry delay of the engine's own retries (the work queue, node leases): exponential from
 * `baseMs`, capped at `maxMs`, jittered ±20 % so many failing keys do not retry in step, and never
 * shorter than what the failure itself asked for (an HTTP `Retry-After`).
 *
 *   retryDelay({ failures: 3, baseMs: 500, maxMs: 5_000 });             // about 2 s
 *   retryDelay({ failures: 1, baseMs: 500, maxMs: 5_000, atLeastMs: 4_000 }); // 4 s
 */
export function retryDelay(o: {
  /** Consecutive failures so far, at least 1. */
  readonly failures: number;
  readonly baseMs: number;
  readonly maxMs: number;
  readonly atLeastMs?: number | undefined;
  readonly random?: () => number;
}): number {
  const step = Math.min(o.maxMs, o.baseMs * 2 ** Math.min(Math.max(o.failures, 1) - 1, 30));
  const jittered = step * (0.8 + (o.random ?? Math.random)() * 0.4);
  return Math.max(jittered, o.atLeastMs ?? 0);
}
