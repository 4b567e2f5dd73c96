/**
 * A {@link Clock} for tests: time moves only when told to, and due timers fire in order, so
 * rate limits and backoffs are tested without sleeping.
 *
 *   const clock = new FakeClock();
 *   const budget = new RequestBudget({ qps: 10, burst: 1, clock });
 *   clock.advance(100);
 */
import type { Clock } from "./clock.ts";

/** A clock that moves only when told to, firing due timers in order. */
export class FakeClock implements Clock {
  t: number;
  #timers: { id: number; at: number; fn: () => void }[] = [];
  #next = 1;
  /** `start` in milliseconds; pass an epoch time when the code under test formats wall-clock times. */
  constructor(start = 0) {
    this.t = start;
  }
  now(): number {
    return this.t;
  }
  setTimeout(fn: () => void, ms: number): unknown {
    const id = this.#next++;
    this.#timers.push({ id, at: this.t + ms, fn });
    return id;
  }
  clearTimeout(handle: unknown): void {
    this.#timers = this.#timers.filter((t) => t.id !== handle);
  }
  get pending(): number {
    return this.#timers.length;
  }
  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      this.#timers.sort((a, b) => a.at - b.at);
      const due = this.#timers[0];
      if (!due || due.at > end) break;
      this.#timers.shift();
      this.t = due.at;
      due.fn();
    }
    this.t = end;
  }
}
