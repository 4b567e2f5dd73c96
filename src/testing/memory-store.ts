/**
 * A {@link DurableStore} in memory, with the same compare-and-swap contract as the ConfigMap store
 * devicelet gives providers: `update` re-reads and retries when another writer got in between
 * (tests make that happen with `interleave`), and `writes` counts what would be API writes. The
 * conformance kit shares one per target between the provider instances it builds, as successive
 * runs of devicelet share their state ConfigMap.
 *
 *   const store = new MemoryStore();
 *   store.interleave = () => store.values.set("k", "theirs"); // before our next CAS write
 */
import type { DurableStore } from "../provider/types.ts";

/** How many times `update` re-reads after a conflict before it rejects (the ConfigMap store's bound). */
const MAX_ATTEMPTS = 10;

export class MemoryStore implements DurableStore {
  readonly values = new Map<string, string>();
  /** Stores that changed a value: what the ConfigMap store would have written to the API server. */
  writes = 0;
  /** `update` attempts that found another writer had been first. */
  conflicts = 0;
  /** Makes the next `get` reject, as an API server that is away does. */
  failNextGet = false;
  /** Runs once between an `update`'s read and its write, as a competing writer would. */
  interleave: (() => void) | undefined;

  get(key: string): Promise<string | undefined> {
    if (this.failNextGet) {
      this.failNextGet = false;
      return Promise.reject(new Error("API server unavailable"));
    }
    return Promise.resolve(this.values.get(key));
  }

  set(key: string, value: string): Promise<void> {
    this.writes++;
    this.values.set(key, value);
    return Promise.resolve();
  }

  delete(key: string): Promise<void> {
    if (this.values.delete(key)) this.writes++;
    return Promise.resolve();
  }

  update(
    key: string,
    change: (current: string | undefined) => string | undefined,
  ): Promise<string | undefined> {
    for (let attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
      const read = this.values.get(key);
      let next: string | undefined;
      try {
        next = change(read);
      } catch (err) {
        return Promise.reject(err instanceof Error ? err : new Error(String(err)));
      }
      const competitor = this.interleave;
      this.interleave = undefined;
      competitor?.();
      if (next === undefined || next === read) return Promise.resolve(read);
      if (this.values.get(key) !== read) {
        this.conflicts++;
        continue;
      }
      this.writes++;
      this.values.set(key, next);
      return Promise.resolve(next);
    }
    return Promise.reject(new Error(`store: ${key} changed under ${MAX_ATTEMPTS} attempts in a row`));
  }

  entries(prefix: string): Promise<ReadonlyMap<string, string>> {
    return Promise.resolve(new Map([...this.values].filter(([k]) => k.startsWith(prefix))));
  }
}
