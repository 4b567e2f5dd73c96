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

  async #run(signal: AbortSignal): Promise<void> {
    const o = this.#o;
    const random = o.random ?? Math.random;
    const now = o.now ?? Date.now;
    const sleep = o.sleep ?? defaultSleep;
    const trim = o.trim ?? dropManagedFields;
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
          });
          this.#emit(this.#store.replace(list.items.map(trim)));
          this.#resourceVersion = list.resourceVersion;
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
          if (event.type === "DELETED") this.#emitOne(this.#store.remove(trim(event.object)));
          else if (event.type !== "BOOKMARK") this.#emitOne(this.#store.upsert(trim(event.object)));
          this.#resourceVersion = event.object.metadata?.resourceVersion ?? this.#resourceVersion;
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
      // Ends in a row without a healthy watch; equal jitter so a fleet of restarts spreads out.
      failures = healthy ? 1 : failures + 1;
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
