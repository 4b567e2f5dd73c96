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

/**
 * Asserts that a record of polls (the times each one answered) covers `from` to `to` with no gap
 * of `maxGapMs` or more: what a "nothing went wrong meanwhile" check needs, where a count of polls
 * depends on how fast the machine and the run happened to be.
 */
export function expectContinuous(
  polls: readonly number[],
  o: { readonly from: number; readonly to: number; readonly maxGapMs: number },
): void {
  const first = polls[0];
  const last = polls.at(-1);
  if (first === undefined || last === undefined || first > o.from || last < o.to)
    throw new Error(
      `the polls (${polls.length}, ${first ?? "-"} to ${last ?? "-"}) do not cover ${o.from} to ${o.to}`,
    );
  const gaps = polls.slice(1).map((at, k) => at - (polls[k] ?? at));
  const widest = Math.max(0, ...gaps);
  if (widest >= o.maxGapMs)
    throw new Error(`the polls left a gap of ${widest} ms (at most ${o.maxGapMs} ms allowed)`);
}
