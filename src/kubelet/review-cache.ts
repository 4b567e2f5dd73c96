/**
 * {@link ReviewCache}: a bounded least-recently-used cache whose entries expire, for TokenReview and
 * SubjectAccessReview answers, as the kubelet's delegating authenticator and webhook authorizer
 * keep them (each answer for its own time to live: allowed 5 min, denied 30 s, tokens 2 min).
 * Concurrent lookups of a key that is not cached share one review (`resolve`).
 *
 *   const cache = new ReviewCache<boolean>({ size: 4096, clock });
 *   const allowed = await cache.resolve(key, async () => {
 *     const ok = await review();
 *     return { value: ok, ttlMs: ok ? 300_000 : 30_000 };
 *   });
 *
 * Time is the injected clock's, so expiry is tested without sleeping. A rejected review is never
 * cached: the next request asks again.
 */
import { systemClock, type Clock } from "../base/clock.ts";

export class ReviewCache<V> {
  readonly #size: number;
  readonly #clock: Clock;
  /** Insertion order is recency order: a hit moves its key to the end, eviction takes the first. */
  readonly #entries = new Map<string, { value: V; expires: number }>();
  readonly #inflight = new Map<string, Promise<V>>();

  constructor(o: { size: number; clock?: Clock }) {
    if (!(o.size >= 1)) throw new RangeError("a review cache holds at least one entry");
    this.#size = o.size;
    this.#clock = o.clock ?? systemClock;
  }

  get size(): number {
    return this.#entries.size;
  }

  /** The live value for `key`, marking it recently used; undefined when absent or expired. */
  get(key: string): V | undefined {
    const entry = this.#entries.get(key);
    if (!entry) return undefined;
    this.#entries.delete(key);
    if (entry.expires <= this.#clock.now()) return undefined;
    this.#entries.set(key, entry);
    return entry.value;
  }

  /** Stores `value` for `ttlMs` (0 or less: not at all), evicting the least recently used beyond the size. */
  set(key: string, value: V, ttlMs: number): void {
    this.#entries.delete(key);
    if (ttlMs <= 0) return;
    this.#entries.set(key, { value, expires: this.#clock.now() + ttlMs });
    while (this.#entries.size > this.#size) {
      const oldest = this.#entries.keys().next();
      if (oldest.done) break;
      this.#entries.delete(oldest.value);
    }
  }

  /** The cached value, else `review`'s (shared by concurrent callers of the same key), cached for its ttl. */
  async resolve(key: string, review: () => Promise<{ value: V; ttlMs: number }>): Promise<V> {
    const cached = this.get(key);
    if (cached !== undefined) return cached;
    const pending = this.#inflight.get(key);
    if (pending) return pending;
    const running = (async () => {
      try {
        const { value, ttlMs } = await review();
        this.set(key, value, ttlMs);
        return value;
      } finally {
        this.#inflight.delete(key);
      }
    })();
    this.#inflight.set(key, running);
    return running;
  }
}
