/**
 * {@link SharedPods}: one pod informer for every shard engine of a process (src/shard/engines.ts),
 * and a {@link PodSource} view of it per engine's PodController. The API server serves one list and
 * one watch of bound pods per replica, not one per shard, and each event is decoded once.
 *
 *   const pods = new SharedPods({ client: kube, logger });
 *   void pods.start(signal);                                 // before any engine starts
 *   const view = pods.view((pod) => servesNode(pod.spec?.nodeName));   // one per PodController
 *   view.onAdd((pod) => queue.add(objectKey(pod)));
 *   void view.start(engineSignal);                           // closes when the engine stops
 *   await view.ready;                                        // this engine's pods delivered
 *
 * What it guarantees:
 * - The shared cache holds a bound pod (trimmed, trim.ts) while some open view's `keep` passes it
 *   (the union of what the engines keep: their node names, the pods their providers hold).
 * - A view delivers, and `get`, `list`, `byIndex` and `size` show, exactly the cached pods its own
 *   `keep` passes, with the semantics of an {@link Informer} with that `keep`: an event for a pod
 *   it delivered that `keep` no longer passes is delivered as a delete; one for a pod it did not
 *   deliver that `keep` passes now as an add. Handlers of one view are never called with another
 *   view's pods.
 * - `start` opens the view and lists every bound pod once (shared with the views opening at the same
 *   time), so pods on node names the informer dropped before are delivered; `ready` resolves once
 *   they are (the cost of a view: one list of bound pods per shard taken over, against a list and
 *   a watch for as long as it runs with an informer per engine). `pickUp` lists only what it is
 *   asked for and delivers the pods this view keeps.
 * - When the view's signal aborts it closes: no handler of it is called again, and the pods only it
 *   kept are dropped from the shared cache.
 *
 * Objects handed out are the shared cache's: read, never mutate.
 */
import type { Logger } from "pino";
import { sleepOn, systemClock, type Clock } from "../base/clock.ts";
import { Informer, objectKey, type ListWatchClient, type Pod } from "../kube/index.ts";
import { trimPod } from "./trim.ts";

/** Selectors for {@link PodSource.pickUp}, added to those of the bound-pod watch. */
export interface PodSelectors {
  readonly labelSelector?: string;
  readonly fieldSelector?: string;
}

/**
 * The pods a PodController reads: the subset of `Informer<Pod>` it uses, with a `node` index on
 * `spec.nodeName`. A controller's own informer is one; a {@link SharedPods} view is another.
 */
export interface PodSource {
  /** Resolves once the first pods are delivered; rejects if stopped before. */
  readonly ready: Promise<void>;
  readonly size: number;
  /** Runs until `signal` aborts; the returned promise resolves then. Call once. */
  start(signal: AbortSignal): Promise<void>;
  onAdd(handler: (pod: Pod) => void): () => void;
  onUpdate(handler: (pod: Pod, old: Pod) => void): () => void;
  onDelete(handler: (pod: Pod) => void): () => void;
  get(key: string): Pod | undefined;
  list(): Pod[];
  byIndex(name: "node", nodeName: string): Pod[];
  /** Lists the pods matching `selectors` and delivers those `keep` passes now; never rejects. */
  pickUp(selectors: PodSelectors): Promise<void>;
  /** Drops (as deletes) the pods with these keys (all when none) that `keep` no longer passes. */
  refilter(keys?: Iterable<string>): number;
}

export interface SharedPodsOptions {
  readonly client: ListWatchClient;
  readonly logger: Logger;
  /** Times the informer's backoff; default the system clock. */
  readonly clock?: Clock;
}

/** What a view needs of its {@link SharedPods}. */
interface ViewHost {
  readonly informer: Informer<Pod>;
  readonly log: Logger;
  open(view: PodView): void;
  /** The view closed: it no longer keeps anything; `keys` are the pods it held. */
  close(view: PodView, keys: readonly string[]): void;
  /** A list of every bound pod, shared by the views that ask before it begins. */
  pickUpAll(): Promise<void>;
}

/** `spec.nodeName=<name>` (or `==`) in a field selector, which narrows what a pick-up can add. */
const nodeNameOf = (fieldSelector: string | undefined): string | undefined => {
  for (const term of (fieldSelector ?? "").split(",")) {
    const match = /^spec\.nodeName==?(.+)$/.exec(term.trim());
    if (match) return match[1];
  }
  return undefined;
};

export class SharedPods {
  readonly #informer: Informer<Pod>;
  readonly #views = new Set<PodView>();
  readonly #host: ViewHost;
  /** A list of every bound pod not begun yet, which views opening now share. */
  #nextPickUp: Promise<void> | undefined;
  #lastPickUp: Promise<void> = Promise.resolve();

  constructor(options: SharedPodsOptions) {
    const clock = options.clock ?? systemClock;
    const log = options.logger.child({ component: "shared-pods" });
    this.#informer = new Informer<Pod>({
      client: options.client,
      logger: log,
      path: "/api/v1/pods",
      fieldSelector: "spec.nodeName!=",
      trim: trimPod,
      keep: (pod) => this.#keeps(pod),
      now: () => clock.now(),
      sleep: (ms, signal) => sleepOn(clock, ms, signal),
    });
    this.#informer.addIndex("node", (pod) => pod.spec?.nodeName);
    this.#informer.onAdd((pod) => {
      const key = objectKey(pod);
      for (const view of this.#views) view.offer(key, pod, undefined);
    });
    this.#informer.onUpdate((pod, old) => {
      const key = objectKey(pod);
      for (const view of this.#views) view.offer(key, pod, old);
    });
    this.#informer.onDelete((pod) => {
      const key = objectKey(pod);
      for (const view of this.#views) view.gone(key, pod);
    });
    this.#host = {
      informer: this.#informer,
      log,
      open: (view) => this.#views.add(view),
      close: (view, keys) => {
        this.#views.delete(view);
        // Dropped unless another view keeps them; their deletes reach no view that holds them.
        this.#informer.refilter(keys);
      },
      pickUpAll: () => this.#pickUpAll(),
    };
  }

  /** Resolves once the first list is cached; rejects if stopped before. */
  get ready(): Promise<void> {
    return this.#informer.ready;
  }

  /** Pods cached for all views together. */
  get size(): number {
    return this.#informer.size;
  }

  /** Views open now. */
  get views(): number {
    return this.#views.size;
  }

  /** Lists and watches bound pods until `signal` aborts; resolves then. Call once. */
  start(signal: AbortSignal): Promise<void> {
    return this.#informer.start(signal);
  }

  /**
   * A view for one PodController, keeping the pods `keep` passes (its node names, the pods its
   * provider holds). `keep` is read on every event while the view is open; it must not throw.
   * Nothing is delivered before the view's `start`.
   */
  view(keep: (pod: Pod) => boolean): PodSource {
    return new PodView(this.#host, keep);
  }

  #keeps(pod: Pod): boolean {
    for (const view of this.#views) if (view.keeps(pod)) return true;
    return false;
  }

  #pickUpAll(): Promise<void> {
    if (this.#nextPickUp) return this.#nextPickUp;
    const next = this.#lastPickUp.then(() => {
      this.#nextPickUp = undefined;
      return this.#informer.pickUp({});
    });
    this.#nextPickUp = next;
    this.#lastPickUp = next;
    return next;
  }
}

class PodView implements PodSource {
  readonly ready: Promise<void>;
  readonly #host: ViewHost;
  readonly #keep: (pod: Pod) => boolean;
  /** Keys of the pods delivered and not deleted since. */
  readonly #members = new Set<string>();
  readonly #add = new Set<(pod: Pod) => void>();
  readonly #update = new Set<(pod: Pod, old: Pod) => void>();
  readonly #delete = new Set<(pod: Pod) => void>();
  readonly #readiness = Promise.withResolvers<undefined>();
  #state: "new" | "open" | "closed" = "new";

  constructor(host: ViewHost, keep: (pod: Pod) => boolean) {
    this.#host = host;
    this.#keep = keep;
    this.ready = this.#readiness.promise;
    this.ready.catch(() => undefined);
  }

  get size(): number {
    return this.#members.size;
  }

  onAdd(handler: (pod: Pod) => void): () => void {
    this.#add.add(handler);
    return () => this.#add.delete(handler);
  }

  onUpdate(handler: (pod: Pod, old: Pod) => void): () => void {
    this.#update.add(handler);
    return () => this.#update.delete(handler);
  }

  onDelete(handler: (pod: Pod) => void): () => void {
    this.#delete.add(handler);
    return () => this.#delete.delete(handler);
  }

  start(signal: AbortSignal): Promise<void> {
    if (this.#state !== "new") throw new Error("pod view already started");
    this.#state = "open";
    this.#host.open(this);
    const closed = new Promise<void>((resolve) => {
      const close = () => {
        this.#close(signal.reason);
        resolve();
      };
      if (signal.aborted) close();
      else signal.addEventListener("abort", close, { once: true });
    });
    void this.#sync();
    return closed;
  }

  get(key: string): Pod | undefined {
    return this.#members.has(key) ? this.#host.informer.get(key) : undefined;
  }

  list(): Pod[] {
    const out: Pod[] = [];
    for (const key of this.#members) {
      const pod = this.#host.informer.get(key);
      if (pod) out.push(pod);
    }
    return out;
  }

  byIndex(name: "node", nodeName: string): Pod[] {
    return this.#host.informer.byIndex(name, nodeName).filter((pod) => this.#members.has(objectKey(pod)));
  }

  /** Resolves at once before `start` (its list covers everything) and once closed. */
  async pickUp(selectors: PodSelectors): Promise<void> {
    if (!this.#isOpen()) return;
    const { informer } = this.#host;
    await informer.pickUp(selectors);
    if (!this.#isOpen()) return;
    // Pods another view keeps were cached already: the list changed nothing, so no event came.
    const nodeName = nodeNameOf(selectors.fieldSelector);
    this.#adopt(nodeName === undefined ? informer.list() : informer.byIndex("node", nodeName));
  }

  refilter(keys?: Iterable<string>): number {
    if (this.#state !== "open") return 0;
    const { informer } = this.#host;
    const removed: string[] = [];
    for (const key of keys ? [...keys] : [...this.#members]) {
      if (!this.#members.has(key)) continue;
      const pod = informer.get(key);
      if (pod && this.#keep(pod)) continue;
      this.#members.delete(key);
      removed.push(key);
      if (pod) this.#emit(this.#delete, pod, (h) => h(pod));
    }
    // Out of the shared cache too, unless another view keeps them.
    informer.refilter(removed);
    return removed.length;
  }

  /** Whether this view keeps `pod` (the shared informer's `keep` asks every open view). */
  keeps(pod: Pod): boolean {
    return this.#keep(pod);
  }

  /** The shared informer added or updated `pod` (`old`: its state before, for an update). */
  offer(key: string, pod: Pod, old: Pod | undefined): void {
    const member = this.#members.has(key);
    if (this.#keep(pod)) {
      if (!member) {
        this.#members.add(key);
        this.#emit(this.#add, pod, (h) => h(pod));
      } else if (old) this.#emit(this.#update, pod, (h) => h(pod, old));
      else this.#emit(this.#add, pod, (h) => h(pod));
    } else if (member) {
      this.#members.delete(key);
      this.#emit(this.#delete, pod, (h) => h(pod));
    }
  }

  /** The shared informer deleted `pod`. */
  gone(key: string, pod: Pod): void {
    if (this.#members.delete(key)) this.#emit(this.#delete, pod, (h) => h(pod));
  }

  async #sync(): Promise<void> {
    const { informer } = this.#host;
    try {
      // Before the first list this returns at once: that list applies `keep`, this view's included.
      await this.#host.pickUpAll();
      await informer.ready;
    } catch (err) {
      this.#readiness.reject(err);
      return;
    }
    if (!this.#isOpen()) return;
    this.#adopt(informer.list());
    this.#readiness.resolve(undefined);
  }

  /** Delivers as adds the `candidates` this view keeps and has not delivered. */
  #adopt(candidates: Iterable<Pod>): void {
    for (const pod of candidates) {
      const key = objectKey(pod);
      if (this.#members.has(key) || !this.#keep(pod)) continue;
      this.#members.add(key);
      this.#emit(this.#add, pod, (h) => h(pod));
    }
  }

  /** A method, not the property: TypeScript would keep `#state` narrowed across awaits. */
  #isOpen(): boolean {
    return this.#state === "open";
  }

  #close(reason: unknown): void {
    if (this.#state === "closed") return;
    this.#state = "closed";
    this.#readiness.reject(reason ?? new Error("pod view closed"));
    const keys = [...this.#members];
    this.#members.clear();
    this.#host.close(this, keys);
  }

  /** Calls every handler; one that throws is logged and does not stop the others. */
  #emit<F>(handlers: ReadonlySet<F>, pod: Pod, call: (handler: F) => void): void {
    for (const handler of handlers) {
      try {
        call(handler);
      } catch (err) {
        this.#host.log.error({ err, key: objectKey(pod) }, "pod view handler threw");
      }
    }
  }
}
