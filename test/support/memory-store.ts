/**
 * A {@link DurableStore} in memory for unit tests, with the same compare-and-swap contract as the
 * ConfigMap store: `update` re-reads and retries when another writer got in between (tests make
 * that happen with `interleave`), and `writes` counts what would be API writes.
 *
 *   const store = new MemoryStore();
 *   store.interleave = () => store.values.set("k", "theirs"); // before our next CAS write
 */
import type { DurableStore } from "../../src/provider/types.ts";

export class MemoryStore implements DurableStore {
  readonly values = new Map<string, string>();
  writes = 0;
  conflicts = 0;
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

  update(
    key: string,
    change: (current: string | undefined) => string | undefined,
  ): Promise<string | undefined> {
    for (let attempt = 1; attempt <= 10; attempt++) {
      const read = this.values.get(key);
      const next = change(read);
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
    return Promise.reject(new Error("too many conflicts"));
  }

  entries(prefix: string): Promise<ReadonlyMap<string, string>> {
    return Promise.resolve(new Map([...this.values].filter(([k]) => k.startsWith(prefix))));
  }
}
