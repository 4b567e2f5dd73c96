/**
 * Slots: at most `size` holders at once; the rest wait their turn in arrival order, and a waiter
 * whose signal aborts leaves the line with the signal's reason. A waiter costs a closure, so work
 * that would be expensive to hold while it waits (an HTTP request with its body and streams) is
 * built only once it has a slot.
 *
 *   const slots = new Slots(256);
 *   const release = await slots.acquire(signal);
 *   try { await work(); } finally { release(); }
 */
export class Slots {
  readonly #size: number;
  #held = 0;
  readonly #waiting = new Set<() => void>();

  constructor(size: number) {
    if (!(size >= 1)) throw new RangeError(`slots: size must be at least 1, got ${size}`);
    this.#size = size;
  }

  /** Holders now. */
  get held(): number {
    return this.#held;
  }

  /** Waiters now. */
  get waiting(): number {
    return this.#waiting.size;
  }

  /**
   * Resolves with `release` (idempotent) once a slot is this caller's; rejects with the signal's
   * reason if it aborts first (before or while waiting).
   */
  async acquire(signal?: AbortSignal): Promise<() => void> {
    signal?.throwIfAborted();
    if (this.#held < this.#size && this.#waiting.size === 0) {
      this.#held++;
      return this.#release();
    }
    await new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        this.#waiting.delete(turn);
        reject(signal?.reason as Error);
      };
      // Called by a releasing holder, which hands its slot over: `held` does not change.
      const turn = () => {
        signal?.removeEventListener("abort", onAbort);
        resolve();
      };
      this.#waiting.add(turn);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
    return this.#release();
  }

  #release(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.#waiting.values().next();
      if (next.done) {
        this.#held--;
        return;
      }
      this.#waiting.delete(next.value);
      next.value();
    };
  }
}
