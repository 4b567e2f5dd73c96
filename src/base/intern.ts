/**
 * {@link StringTable}: one shared copy of each repeated string value, for caches that hold many
 * similar objects (10,000 pods of a few Deployments repeat their namespace, image, env, owner and
 * condition strings). JSON.parse gives every parsed object its own copy of each string value; the
 * table hands back the copy it saw first, so the others can be collected.
 *
 *   const strings = new StringTable({ generationSize: 8_192 });
 *   const namespace = strings.intern(text);             // one string
 *   strings.internFields(container, ["name", "image"]); // listed fields, swapped in place
 *   strings.internValues(pod.metadata.labels);          // a string map's values
 *   strings.internIn(container.envFrom);                // every string under a value
 *
 * Guarantees:
 * - A returned string is always equal (`===`) to the one given: swapping one for the other is
 *   invisible to every reader. Only memory changes. The in-place methods write only strings over
 *   equal strings, never add or remove a property, and leave frozen objects alone; the caller owns
 *   what it passes (in devicelet: objects JSON.parse just made).
 * - Bounded: at most two generations of `generationSize` entries each. When the current one is
 *   full, it becomes the old one and the previous old one is dropped; a string found in the old
 *   generation moves to the current one. Strings seen again and again stay; strings seen once go
 *   after two generations. Losing an entry costs only memory: the next copy becomes canonical.
 * - Strings longer than `maxLength` are never stored. Strings of fewer than 10 characters are
 *   left as they are: V8's JSON parser returns its one internalized copy of those (one-byte values
 *   shorter than its `kMaxInternalizedStringValueLength`, 10 in Node 24), so looking them up would
 *   cost time and save nothing.
 * - What the caller passes should repeat: values unique to one object (UIDs, resourceVersions,
 *   generated names) only churn the table. `admit` refuses such values by their form.
 * - Cost: a Map lookup, hashing the fresh string, for each string looked up (about 0.1 µs).
 */

import { deepFreeze } from "./freeze.ts";

/** Strings this short come out of JSON.parse already internalized by V8. */
const V8_INTERNALIZED_LENGTH = 9;

export interface StringTableOptions {
  /** Entries of one generation; the table holds at most twice as many. */
  readonly generationSize: number;
  /** Longer strings are returned as given and never stored. Default 256. */
  readonly maxLength?: number;
  /**
   * Whether a string the table does not hold yet may be stored (default: every string). Called
   * only on a miss, so it may cost a little: for values that never repeat, told by their form.
   */
  readonly admit?: (value: string) => boolean;
}

/** The keys of `T` whose values are strings (or absent). */
export type StringKey<T> = { [K in keyof T]-?: NonNullable<T[K]> extends string ? K : never }[keyof T];

/**
 * The bounded store both tables keep: two generations of `generationSize` entries. When the
 * current one is full it becomes the old one and the previous old one is dropped; an entry found
 * in the old generation moves to the current one.
 */
class Generations<V> {
  readonly #size: number;
  #current = new Map<string, V>();
  #old = new Map<string, V>();
  /** Generations started so far, the first included. */
  started = 1;

  constructor(table: string, generationSize: number) {
    if (!Number.isSafeInteger(generationSize) || generationSize < 1) {
      throw new RangeError(`${table}: generationSize must be a positive integer, got ${generationSize}`);
    }
    this.#size = generationSize;
  }

  get size(): number {
    return this.#current.size + this.#old.size;
  }

  has(key: string): boolean {
    return this.#current.has(key) || this.#old.has(key);
  }

  /** The value under `key`, else `make()`'s, stored unless it is undefined (then nothing is). */
  lookup(key: string, make: () => V | undefined): V | undefined {
    const current = this.#current.get(key);
    if (current !== undefined) return current;
    const value = this.#old.get(key) ?? make();
    if (value === undefined) return undefined;
    if (this.#current.size >= this.#size) {
      this.#old = this.#current;
      this.#current = new Map();
      this.started += 1;
    }
    this.#current.set(key, value);
    return value;
  }
}

export class StringTable {
  readonly #strings: Generations<string>;
  readonly #maxLength: number;
  readonly #admit: ((value: string) => boolean) | undefined;

  constructor(options: StringTableOptions) {
    this.#strings = new Generations("StringTable", options.generationSize);
    const maxLength = options.maxLength ?? 256;
    if (!Number.isSafeInteger(maxLength) || maxLength < 0) {
      throw new RangeError(`StringTable: maxLength must be a non-negative integer, got ${maxLength}`);
    }
    this.#maxLength = maxLength;
    this.#admit = options.admit;
  }

  /** Entries held now, over both generations (a string in both counts twice). */
  get size(): number {
    return this.#strings.size;
  }

  /** Generations started so far, the first included: grows by one each time one fills. */
  get generations(): number {
    return this.#strings.started;
  }

  /** Whether `value` has a canonical copy in the table. */
  has(value: string): boolean {
    return this.#strings.has(value);
  }

  /** The table's copy of `value`, storing `value` as that copy when there is none (and it is admitted). */
  intern(value: string): string {
    if (value.length <= V8_INTERNALIZED_LENGTH || value.length > this.#maxLength) return value;
    const admit = this.#admit;
    return (
      this.#strings.lookup(value, () => (admit === undefined || admit(value) ? value : undefined)) ?? value
    );
  }

  /**
   * Swaps, in place, the string values of the `keys` of `object` for their canonical copies. Keys
   * that are absent or hold something else than a string are left alone (never added).
   */
  internFields<T extends object>(object: T | undefined, keys: readonly StringKey<T>[]): void {
    if (object === undefined || Object.isFrozen(object)) return;
    const record = object as Record<PropertyKey, unknown>;
    for (const key of keys) {
      const item = record[key];
      if (typeof item === "string") record[key] = this.intern(item);
    }
  }

  /**
   * Swaps, in place, the values of a string map (labels, annotations) for their canonical copies,
   * except under the keys in `skip`: labels whose value is unique to the object, such as
   * `statefulset.kubernetes.io/pod-name` or a Node's `kubernetes.io/hostname`.
   */
  internValues(record: Record<string, string> | undefined, skip?: ReadonlySet<string>): void {
    if (record === undefined || Object.isFrozen(record)) return;
    for (const key of Object.keys(record)) {
      const item = record[key];
      if (typeof item === "string" && skip?.has(key) !== true) record[key] = this.intern(item);
    }
  }

  /**
   * Swaps, in place, every string in the arrays and objects under `value` (own enumerable
   * properties, at any depth) for its canonical copy. Costs a visit of every property, so meant
   * for small parts (an env source, a volume) rather than whole objects.
   */
  internIn(value: unknown): void {
    if (typeof value !== "object" || value === null || Object.isFrozen(value)) return;
    if (Array.isArray(value)) {
      const items = value as unknown[];
      for (let i = 0; i < items.length; i++) {
        const item = items[i];
        if (typeof item === "string") items[i] = this.intern(item);
        else if (typeof item === "object" && item !== null) this.internIn(item);
      }
      return;
    }
    const record = value as Record<string, unknown>;
    for (const key of Object.keys(record)) {
      const item = record[key];
      if (typeof item === "string") record[key] = this.intern(item);
      else if (typeof item === "object" && item !== null) this.internIn(item);
    }
  }
}

/**
 * {@link ValueTable}: one shared copy of each repeated small JSON value, for the parts of cached
 * objects that are whole values repeated across many of them: the conditions of pods that changed
 * in the same second, the resources, command and owner of every replica of a Deployment, the
 * empty `{}` the API server defaults `securityContext` and `lastState` to.
 *
 *   const values = new ValueTable({ generationSize: 8_192 });
 *   status.conditions = values.share(status.conditions.map((c) => values.share(c)));
 *
 * Guarantees:
 * - A returned value is JSON-equal to the one given (the same JSON text): readers see the same
 *   content. It is deeply frozen, because it is shared: a reader that writes into it throws
 *   instead of changing every object that shares it. `share` freezes what it is given when it
 *   keeps it, so the caller must own the value (in devicelet: objects JSON.parse just made, on
 *   their way into a cache) and give only plain JSON data (no Dates, no undefined).
 * - Bounded like {@link StringTable}: two generations of `generationSize` entries; a value seen
 *   once goes after two generations. Values whose JSON is longer than `maxLength` (default 512)
 *   are returned as given and never stored.
 * - Frozen values are returned as given: they are shared already, or someone else's.
 * - Cost: a JSON.stringify of the value and a Map lookup on that text (a few microseconds for a
 *   pod condition).
 */
export class ValueTable {
  readonly #values: Generations<unknown>;
  readonly #maxLength: number;
  /** A number for each value the table keeps, by which {@link ValueTable.shareList} keys a list. */
  readonly #ids = new WeakMap<object, number>();
  #nextId = 0;

  constructor(options: { readonly generationSize: number; readonly maxLength?: number }) {
    this.#values = new Generations("ValueTable", options.generationSize);
    this.#maxLength = options.maxLength ?? 512;
  }

  /** Entries held now, over both generations. */
  get size(): number {
    return this.#values.size;
  }

  /** The table's copy of `value`, keeping `value` (frozen) as that copy when there is none. */
  share<T>(value: T): T {
    if (typeof value !== "object" || value === null || Object.isFrozen(value)) return value;
    const key = JSON.stringify(value);
    return key.length > this.#maxLength
      ? value
      : (this.#values.lookup(key, () => this.#number(deepFreeze(value))) as T);
  }

  /**
   * `items` with each item shared ({@link ValueTable.share}), then the list itself, frozen: one
   * copy for every list of the same shared items in the same order. The list is keyed by its items'
   * identities, not by its JSON, so a list longer than `maxLength` is shared as long as each item
   * is short enough: a pod's five conditions with their `lastProbeTime: null` come to about 590
   * characters, over the pod table's 512, where each alone is at most 180. When an item is not the
   * table's (a primitive, a frozen value from elsewhere, an over-long one), the list is returned
   * with the items that could be shared swapped in, in place, and is not stored.
   */
  shareList<T>(items: T[]): readonly T[] {
    if (Object.isFrozen(items)) return items;
    let key = "#"; // JSON text never starts with "#": no list key is a value's key
    for (let i = 0; i < items.length; i++) {
      const item = this.share(items[i]);
      items[i] = item as T;
      const id = typeof item === "object" && item !== null ? this.#ids.get(item) : undefined;
      key = key === "" || id === undefined ? "" : `${key}${id},`;
    }
    if (key === "") return items;
    return this.#values.lookup(key, () => this.#number(Object.freeze(items))) as readonly T[];
  }

  /**
   * The table's value under `key`, made by `make` when there is none: for a shared value that
   * cannot be frozen (a Map), whose `key` the caller derives from its content. Whoever gets it
   * must only read it. The same bounds hold; a `key` longer than `maxLength` is not stored.
   */
  shareAs<T>(key: string, make: () => T): T {
    return key.length > this.#maxLength ? make() : (this.#values.lookup(key, make) as T);
  }

  /** Gives a value the table keeps its number; returns it. */
  #number<T extends object>(value: T): T {
    this.#ids.set(value, (this.#nextId += 1));
    return value;
  }
}
