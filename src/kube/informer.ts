/**
 * {@link Informer}: a local cache of one collection kept in sync by list + watch, with
 * synchronous add/update/delete handlers. One informer per collection for the whole process
 * (pods bound to any node, device nodes, ...), never one per object.
 *
 *   const pods = new Informer<Pod>({ client, logger, path: "/api/v1/pods", fieldSelector: "spec.nodeName!=" });
 *   pods.addIndex("node", (p) => p.spec?.nodeName);
 *   pods.onUpdate((pod) => queue.add(objectKey(pod)));    // handlers only enqueue keys
 *   const done = pods.start(signal);
 *   await pods.ready;                                      // first list is in the cache
 *   pods.byIndex("node", "dev-1");
 *
 * Behaviour: list (in pages, through the budget) then watch from the list's resourceVersion with
 * bookmarks and a server-side timeout of 5–10 minutes. A 410 Gone re-lists at once, and the
 * re-list is diffed against the cache so objects deleted while no watch was open are reported as
 * deletes. Any other end of a watch or failure retries after a jittered exponential backoff
 * (1 s doubling to 30 s, back to 1 s after a healthy watch). Runs until the signal aborts.
 *
 * What is cached: every listed or watched object goes through `trim` (keep only what is read),
 * then `keep` (a client-side filter, for what no selector can express: pods on the nodes this
 * process manages). An object `keep` refuses never reaches the store; one already cached that an
 * event shows no longer passing is removed and reported as a delete. When `keep` starts passing
 * objects it refused before, {@link Informer.pickUp} lists them; when it stops passing cached
 * ones, {@link Informer.refilter} drops them.
 */
import { setTimeout as sleepFor } from "node:timers/promises";
import type { Logger } from "pino";
import { retryDelay } from "../base/backoff.ts";
import type { KubeClient } from "./client.ts";
import { isGone } from "./errors.ts";
import { ObjectStore, type IndexFunction, type StoreChange } from "./store.ts";
import { objectKey, type KubeObject } from "./types.ts";

/** What an informer needs of the client; `KubeClient` has it, a test fake needs only these two. */
export type ListWatchClient = Pick<KubeClient, "list" | "watch">;

export interface InformerOptions<T extends KubeObject> {
  readonly client: ListWatchClient;
  readonly logger: Logger;
  /** Collection path, e.g. `/api/v1/pods`, `/api/v1/nodes`, `/api/v1/namespaces/ns/configmaps`. */
  readonly path: string;
  readonly labelSelector?: string;
  readonly fieldSelector?: string;
  /**
   * Applied to every object before it is stored or handed to a handler, to keep only what
   * devicelet reads. Default {@link dropManagedFields}. May mutate its argument.
   */
  readonly trim?: (object: T) => T;
  /**
   * Which trimmed objects to cache (default: all). Refused objects are never stored or handed to
   * a handler; an ADDED or MODIFIED event for a cached object that no longer passes removes it
   * (delete handlers see the event's object). DELETED events always apply. Must not throw.
   */
  readonly keep?: (object: T) => boolean;
  /** First retry delay (default 1000 ms); doubles per failure up to `maxBackoffMs` (30 000). */
  readonly initialBackoffMs?: number;
  readonly maxBackoffMs?: number;
  /** A watch that delivered an event or lasted this long (default 10 s) resets the backoff. */
  readonly healthyAfterMs?: number;
  /** List page size (default 500). */
  readonly pageSize?: number;
  /**
   * Cache `PartialObjectMetadata` only: the API server sends no data (ConfigMap and Secret
   * contents never cross the wire or sit in memory); read the full object with a GET when needed.
   */
  readonly metadataOnly?: boolean;
  /** Tests: randomness for jitter and watch timeouts, the clock, and the wait between tries. */
  readonly random?: () => number;
  readonly now?: () => number;
  readonly sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
}

/** Drops `metadata.managedFields` and kubectl's last-applied annotation (often the largest parts). */
export function dropManagedFields<T extends KubeObject>(object: T): T {
  const meta = object.metadata;
  if (meta) {
    delete meta.managedFields;
    if (meta.annotations?.["kubectl.kubernetes.io/last-applied-configuration"] !== undefined) {
      delete meta.annotations["kubectl.kubernetes.io/last-applied-configuration"];
    }
  }
  return object;
}

/**
 * For a `trim` that keeps a whitelist: the listed own properties of `from` that are set, in a new
 * object (an absent key stays absent rather than becoming `undefined`; values are shared).
 */
export function pickFields<T extends object, K extends keyof T>(
  from: T,
  keys: readonly K[],
): Partial<Pick<T, K>> {
  const out: Partial<Pick<T, K>> = {};
  for (const key of keys) {
    if (Object.hasOwn(from, key) && from[key] !== undefined) out[key] = from[key];
  }
  return out;
}

const defaultSleep = async (ms: number, signal: AbortSignal) => {
  try {
    await sleepFor(ms, undefined, { signal });
  } catch {
    // aborted: the loop checks the signal
  }
};

export class Informer<T extends KubeObject> {
  /** Resolves once the first list is in the cache and its adds were handed out; rejects if stopped before. */
  readonly ready: Promise<void>;
  readonly #o: InformerOptions<T>;
  readonly #log: Logger;
  readonly #store = new ObjectStore<T>();
  readonly #add = new Set<(object: T) => void>();
  readonly #update = new Set<(object: T, old: T) => void>();
  readonly #delete = new Set<(object: T) => void>();
  #resolveReady!: () => void;
  #rejectReady!: (reason: unknown) => void;
  #synced = false;
  #resourceVersion = "";
  #done: Promise<void> | undefined;
  #signal: AbortSignal | undefined;
  /** Full lists applied so far: a pick-up that saw another list start is covered by it. */
  #lists = 0;
  /** Pick-ups listing now; watch events wait until none is (see {@link pickUp}). */
  #pickingUp = 0;
  #pickedUp: PromiseWithResolvers<undefined> | undefined;

  constructor(options: InformerOptions<T>) {
    this.#o = options;
    this.#log = options.logger.child({ informer: options.path });
    this.ready = new Promise<void>((resolve, reject) => {
      this.#resolveReady = resolve;
      this.#rejectReady = reject;
    });
    this.ready.catch(() => undefined);
  }

  /** Called for each object new to the cache (first list included). Returns an unsubscribe. */
  onAdd(handler: (object: T) => void): () => void {
    this.#add.add(handler);
    return () => this.#add.delete(handler);
  }

  /** Called when an object's resourceVersion changed. */
  onUpdate(handler: (object: T, old: T) => void): () => void {
    this.#update.add(handler);
    return () => this.#update.delete(handler);
  }

  /** Called with the deleted object's final state (or the last state seen, after a re-list). */
  onDelete(handler: (object: T) => void): () => void {
    this.#delete.add(handler);
    return () => this.#delete.delete(handler);
  }

  /**
   * Starts listing and watching until `signal` aborts. Returns a promise that resolves when the
   * loop has stopped (it never rejects). Handlers are called synchronously, one at a time, and
   * must not block; an exception from one is logged and does not stop the others.
   */
  start(signal: AbortSignal): Promise<void> {
    if (this.#done) throw new Error("informer already started");
    this.#signal = signal;
    this.#done = this.#run(signal).finally(() => {
      this.#rejectReady(signal.reason ?? new Error("informer stopped"));
    });
    return this.#done;
  }

  /** Resolves when the loop has stopped; resolves at once if never started. */
  get done(): Promise<void> {
    return this.#done ?? Promise.resolve();
  }

  get hasSynced(): boolean {
    return this.#synced;
  }

  /** resourceVersion of the last list or event seen. */
  get resourceVersion(): string {
    return this.#resourceVersion;
  }

  get size(): number {
    return this.#store.size;
  }

  /**
   * The cached object by key (`namespace/name`, or `name` when cluster-scoped). Objects are the
   * informer's: read, never mutate; copy before changing.
   */
  get(key: string): T | undefined {
    return this.#store.get(key);
  }

  getByName(namespace: string | undefined, name: string): T | undefined {
    return this.#store.get(namespace ? `${namespace}/${name}` : name);
  }

  /** A new array of the cached objects (the objects themselves are shared; do not mutate). */
  list(): T[] {
    return [...this.#store.values()];
  }

  keys(): string[] {
    return [...this.#store.keys()];
  }

  /** Adds a secondary index, e.g. pods by `spec.nodeName`; see {@link byIndex}. */
  addIndex(name: string, fn: IndexFunction<T>): void {
    this.#store.addIndex(name, fn);
  }

  byIndex(name: string, value: string): T[] {
    return this.#store.byIndex(name, value);
  }

  /** Trim, then keep or drop (undefined): a list applies it to each item as its page arrives. */
  #trimKept(): (object: T) => T | undefined {
    const trim = this.#o.trim ?? dropManagedFields;
    const keep = this.#o.keep ?? (() => true);
    return (object) => {
      const trimmed = trim(object);
      return keep(trimmed) ? trimmed : undefined;
    };
  }

  /**
   * Lists the objects matching `selectors` as well as the informer's own and caches those `keep`
   * passes now (adds and updates go to the handlers): for objects `keep` refused before and
   * accepts now, e.g. `pickUp({ fieldSelector: "spec.nodeName=dev-7" })` once node dev-7 is
   * managed. Resolves once they are cached, at once when no list is cached yet (the coming list
   * applies `keep` itself), and when the informer stops. Never rejects: a failed list is logged
   * and tried again with the informer's backoff.
   *
   * Consistent with the watch: watch events wait while a pick-up lists, and the list asks for
   * data at least as new as the last event applied (`resourceVersionMatch=NotOlderThan`), so the
   * events that follow, applied over it, leave every object as the API server has it.
   */
  async pickUp(selectors: {
    readonly labelSelector?: string;
    readonly fieldSelector?: string;
  }): Promise<void> {
    const o = this.#o;
    const signal = this.#signal;
    const lists = this.#lists;
    const join = (a: string | undefined, b: string | undefined) =>
      [a, b].filter((x) => x !== undefined && x !== "").join(",") || undefined;
    const query = {
      labelSelector: join(o.labelSelector, selectors.labelSelector),
      fieldSelector: join(o.fieldSelector, selectors.fieldSelector),
    };
    const trimKept = this.#trimKept();
    // A function, not the property: TypeScript would keep `signal.aborted` narrowed across awaits.
    const stopped = () => signal?.aborted !== false;
    let failures = 0;
    while (signal && !stopped()) {
      // Not listed yet, or re-listing: that list applies `keep` as it is then.
      if (this.#resourceVersion === "" || this.#lists !== lists) return;
      const resume = this.#pauseWatch();
      try {
        // The newest data is no older than the last event applied; events wait meanwhile.
        const list = await o.client.list<T>(
          o.path,
          { ...query, resourceVersion: this.#resourceVersion, resourceVersionMatch: "NotOlderThan" },
          { signal, limit: 0, metadataOnly: o.metadataOnly === true, each: trimKept },
        );
        // A full list applied meanwhile covers these, from a snapshot the watch continues from.
        if (this.#lists !== lists) return;
        for (const object of list.items) this.#emitOne(this.#store.upsert(object));
        this.#log.debug({ ...selectors, count: list.items.length }, "picked up");
        return;
      } catch (err) {
        if (stopped()) return;
        failures += 1;
        this.#log.warn({ err, ...selectors }, "pick-up list failed");
      } finally {
        resume();
      }
      const wait = retryDelay({
        failures,
        baseMs: o.initialBackoffMs ?? 1000,
        maxMs: o.maxBackoffMs ?? 30_000,
        jitter: "equal",
        random: o.random ?? Math.random,
      });
      await (o.sleep ?? defaultSleep)(wait, signal);
    }
  }

  /**
   * Applies `keep` again to the cached objects with these keys (all when none are given) and
   * removes, reporting each as a delete, those it no longer passes: for when what `keep` reads
   * changed without an event, e.g. a node is no longer managed. Returns how many were removed.
   */
  refilter(keys?: Iterable<string>): number {
    const keep = this.#o.keep;
    if (!keep) return 0;
    let removed = 0;
    for (const key of keys ? [...keys] : this.keys()) {
      const object = this.#store.get(key);
      if (object === undefined || keep(object)) continue;
      this.#emitOne(this.#store.remove(object));
      removed += 1;
    }
    return removed;
  }

  /** Holds watch events back until the returned function has been called (once per pause). */
  #pauseWatch(): () => void {
    this.#pickingUp += 1;
    this.#pickedUp ??= Promise.withResolvers<undefined>();
    let resumed = false;
    return () => {
      if (resumed) return;
      resumed = true;
      this.#pickingUp -= 1;
      if (this.#pickingUp > 0) return;
      this.#pickedUp?.resolve(undefined);
      this.#pickedUp = undefined;
    };
  }

  async #run(signal: AbortSignal): Promise<void> {
    const o = this.#o;
    const random = o.random ?? Math.random;
    const now = o.now ?? Date.now;
    const sleep = o.sleep ?? defaultSleep;
    const trim = o.trim ?? dropManagedFields;
    const keep = o.keep ?? (() => true);
    const trimKept = this.#trimKept();
    const initial = o.initialBackoffMs ?? 1000;
    const max = o.maxBackoffMs ?? 30_000;
    const selectors = { labelSelector: o.labelSelector, fieldSelector: o.fieldSelector };
    // A function, not the property: TypeScript would keep `signal.aborted` narrowed across awaits.
    const stopped = () => signal.aborted;
    let failures = 0;
    while (!stopped()) {
      let healthy = false;
      let watching = false;
      try {
        if (this.#resourceVersion === "") {
          const list = await o.client.list<T>(o.path, selectors, {
            signal,
            limit: o.pageSize ?? 500,
            metadataOnly: o.metadataOnly === true,
            each: trimKept,
          });
          // The cache and its resourceVersion move together, before any handler runs.
          const changes = this.#store.replace(list.items);
          this.#lists += 1;
          this.#resourceVersion = list.resourceVersion;
          this.#emit(changes);
          this.#log.debug({ count: list.items.length, resourceVersion: list.resourceVersion }, "listed");
          if (!this.#synced) {
            this.#synced = true;
            this.#resolveReady();
          }
        }
        // client-go's spread: 5–10 minutes, so many watches do not all re-open at once.
        const timeoutSeconds = Math.floor(300 + random() * 300);
        const deadline = AbortSignal.timeout((timeoutSeconds + 30) * 1000);
        const started = now();
        let events = 0;
        watching = true;
        const stream = o.client.watch<T>(
          o.path,
          { ...selectors, resourceVersion: this.#resourceVersion, allowWatchBookmarks: true, timeoutSeconds },
          { signal: AbortSignal.any([signal, deadline]), metadataOnly: o.metadataOnly === true },
        );
        for await (const event of stream) {
          // A pick-up is listing: this event may be older than its list, so it comes after it.
          while (this.#pickedUp) await this.#pickedUp.promise;
          if (stopped()) break;
          let change: StoreChange<T> | undefined;
          if (event.type !== "BOOKMARK") {
            const object = trim(event.object);
            const drop = event.type === "DELETED" || !keep(object);
            change = drop ? this.#store.remove(object) : this.#store.upsert(object);
          }
          this.#resourceVersion = event.object.metadata?.resourceVersion ?? this.#resourceVersion;
          this.#emitOne(change);
          events += 1;
        }
        healthy = events > 0 || now() - started >= (o.healthyAfterMs ?? 10_000);
        this.#log.debug({ events, resourceVersion: this.#resourceVersion }, "watch ended");
      } catch (err) {
        if (stopped()) break;
        if (watching && isGone(err)) {
          // Our resourceVersion fell out of the server's window: re-list now and diff.
          this.#log.info({ resourceVersion: this.#resourceVersion }, "watch expired (410); re-listing");
          this.#resourceVersion = "";
          continue;
        }
        this.#log.warn({ err, watching }, watching ? "watch failed" : "list failed");
      }
      if (stopped()) break;
      // The API server ended a watch that worked: at its timeout, or because it judged this watcher
      // too slow while it was itself too busy to send (under a burst of pod events). Watch again at
      // once from where it ended, as client-go's reflector does; every moment spent waiting here is
      // a moment every pod change waits too (a 0.5-1 s wait here was the tail of the MQTT burst).
      if (healthy) {
        failures = 0;
        continue;
      }
      // Ends in a row without a healthy watch; equal jitter so a fleet of restarts spreads out.
      failures += 1;
      await sleep(retryDelay({ failures, baseMs: initial, maxMs: max, jitter: "equal", random }), signal);
    }
  }

  #emit(changes: readonly StoreChange<T>[]): void {
    for (const change of changes) this.#emitOne(change);
  }

  #emitOne(change: StoreChange<T> | undefined): void {
    if (!change) return;
    const call = (fn: () => void) => {
      try {
        fn();
      } catch (err) {
        this.#log.error(
          { err, key: objectKey(change.object), change: change.type },
          "informer handler threw",
        );
      }
    };
    switch (change.type) {
      case "add":
        for (const handler of this.#add) call(() => handler(change.object));
        break;
      case "update":
        for (const handler of this.#update) call(() => handler(change.object, change.old));
        break;
      case "delete":
        for (const handler of this.#delete) call(() => handler(change.object));
        break;
    }
  }
}
