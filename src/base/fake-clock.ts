/**
 * A {@link Clock} for tests: time moves only when told to, and due timers fire in order, so
 * rate limits and backoffs are tested without sleeping.
 *
 *   const clock = new FakeClock();
 *   const budget = new RequestBudget({ qps: 10, burst: 1, clock });
 *   clock.advance(100);
 *   await clock.advanceAsync(5_000);   // a controller: promises settle between its timers
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
    for (let due = this.#takeDue(end); due; due = this.#takeDue(end)) due();
    this.t = end;
  }

  /** The earliest timer due by `end`, removed, with the clock moved to its time; undefined when none. */
  #takeDue(end: number): (() => void) | undefined {
    this.#timers.sort((a, b) => a.at - b.at);
    const due = this.#timers[0];
    if (!due || due.at > end) return undefined;
    this.#timers.shift();
    this.t = due.at;
    return due.fn;
  }

  /**
   * Runs every promise chain that waits on nothing but other promises to its end: resolves on
   * the next turn of the event loop, after the microtask queue drained. Time does not move.
   * Code under test that does real I/O or uses real timers is not waited for.
   */
  async settle(): Promise<void> {
    await new Promise<void>((resolve) => setImmediate(resolve));
  }

  /**
   * {@link advance} for code that awaits between timers (a controller's reconcile, a lease
   * renewal): settles first, then fires each due timer at its time and settles after it, so work
   * that a timer starts can schedule the next one within the same advance.
   */
  async advanceAsync(ms: number): Promise<void> {
    const end = this.t + ms;
    await this.settle();
    for (let due = this.#takeDue(end); due; due = this.#takeDue(end)) {
      due();
      await this.settle();
    }
    this.t = end;
    await this.settle();
  }
}
