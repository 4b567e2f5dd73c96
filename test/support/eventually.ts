/**
 * Waits for an end state: polls `probe` until it stops throwing and returns, or rethrows its last
 * error at the deadline. This is how tests wait on a distributed system without sleeping for a
 * guessed time; the deadline only bounds a failing test, it is not a performance assertion.
 */
import { setTimeout as sleep } from "node:timers/promises";

export async function eventually<T>(
  probe: () => Promise<T> | T,
  options: { timeoutMs?: number; intervalMs?: number } = {},
): Promise<T> {
  const deadline = Date.now() + (options.timeoutMs ?? 60_000);
  let last: unknown;
  for (;;) {
    try {
      return await probe();
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw last;
    await sleep(options.intervalMs ?? 250);
  }
}
