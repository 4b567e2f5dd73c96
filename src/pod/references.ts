/**
 * {@link ReferenceCache}: the ConfigMaps and Secrets that managed pods refer to, read without a GET
 * per reconcile.
 *
 * ConfigMaps: a cluster-wide informer keeps only the metadata of every ConfigMap (name, namespace,
 * resourceVersion; the data is dropped before it is stored). The full object of one a managed pod
 * refers to is read with a GET on first need and again only when its resourceVersion moves, and a
 * change enqueues the pods that refer to it.
 *
 * Secrets are never listed or watched (devicelet's RBAC grants `get` on them, nothing more): each
 * one a managed pod refers to is read with a GET and read again at most `secretTtlMs` later, as
 * the kubelet's TTL-based secret manager does ({@link SecretCache}); a change seen then enqueues the
 * pods that refer to it. So a Secret edit reaches its pods within the TTL.
 *
 * A reconcile of a pod whose references did not change costs no API call.
 *
 *   const refs = new ReferenceCache({ kube, logger, onChange: (keys) => keys.forEach(queue.add) });
 *   await refs.start(signal);                         // ConfigMap metadata listed, Secret refresh running
 *   const lookups = await refs.lookups("ns/pod", "ns", { configMaps: ["cfg"], secrets: [] });
 *   translatePod(pod, { lookups, ... });
 *   refs.untrack("ns/pod");                           // when the pod is forgotten
 *
 * One cache can serve several PodControllers (the shard engines of a process): each
 * {@link ReferenceCache.subscribe}s and tracks its own pods, and is told only of changes to what
 * its pods refer to. Tracking is per subscriber, so a pod key that moves from one engine to another
 * (a pod deleted and created again on another shard's node) is never untracked under the other's
 * feet; ConfigMap and Secret data is shared.
 *
 *   const shared = new ReferenceCache({ kube, logger });
 *   void shared.start(signal);                        // once per process
 *   const refs = shared.subscribe((keys) => keys.forEach(queue.add));
 *   await refs.start(engineSignal);                   // ConfigMaps listed; untracks all at abort
 *
 * The data of objects no tracked pod (of any subscriber) refers to any more is dropped.
 */
import type { Logger } from "pino";
import { sleepOn, systemClock, type Clock } from "../base/clock.ts";
import { Informer, objectKey, type ConfigMap, type KubeClient, type KubeObject } from "../kube/index.ts";
import type { ObjectLookups } from "../workload/index.ts";
import { SecretCache, secretKey } from "./secret-cache.ts";

export interface ReferencedNames {
  readonly configMaps: readonly string[];
  readonly secrets: readonly string[];
}

export interface ReferenceCacheOptions {
  readonly kube: Pick<KubeClient, "list" | "watch" | "getConfigMap" | "getSecret">;
  readonly logger: Logger;
  /**
   * Called with the keys of the pods tracked through {@link ReferenceCache.lookups} that refer to an
   * object that appeared, changed or went. Subscribers ({@link ReferenceCache.subscribe}) have
   * their own.
   */
  readonly onChange?: (podKeys: readonly string[]) => void;
  /** Times the informer's re-list backoff and the Secret refreshes; default {@link systemClock}. */
  readonly clock?: Clock;
  /** How long a Secret read is trusted before it is read again; default {@link DEFAULT_SECRET_TTL_MS}. */
  readonly secretTtlMs?: number;
}

/** The kubelet's default TTL of its secret manager (`node.alpha.kubernetes.io/ttl` unset): one minute. */
export const DEFAULT_SECRET_TTL_MS = 60_000;

/** Keeps what tells one version from another, and nothing of the content. */
const metadataOnly = <T extends KubeObject>(object: T): T => {
  const m = object.metadata ?? {};
  const kept = { name: m.name, namespace: m.namespace, uid: m.uid, resourceVersion: m.resourceVersion };
  return { metadata: kept } as T;
};

/** Whether `held` is at least `current` (etcd resourceVersions are increasing integers). */
const atLeast = (held: string, current: string) =>
  /^\d+$/.test(held) && /^\d+$/.test(current) ? BigInt(held) >= BigInt(current) : held === current;

const configMapKey = (namespace: string, name: string) => `configmap/${namespace}/${name}`;

/** What a PodController asks of the ConfigMaps and Secrets its pods refer to. */
export interface PodReferences {
  /** Resolves once ConfigMap metadata is listed; see {@link ReferenceCache.start}, {@link ReferenceCache.subscribe}. */
  start(signal: AbortSignal): Promise<void>;
  /** See {@link ReferenceCache.lookups}. */
  lookups(podKey: string, namespace: string, names: ReferencedNames): Promise<ObjectLookups>;
  /** Forgets a pod's references. */
  untrack(podKey: string): void;
  /** Full-object GETs made and objects held (by the whole cache), and the pods tracked here. */
  stats(): { gets: number; held: number; pods: number };
}

/** What a pod that refers to no ConfigMap or Secret can look up. */
const NO_LOOKUPS: ObjectLookups = Object.freeze({
  configMap: () => undefined,
  secret: () => undefined,
});

/** One subscriber's pods and what they refer to. */
class Tracker {
  readonly onChange: (podKeys: readonly string[]) => void;
  /** Pod keys by ref key, and ref keys by pod key. */
  readonly #users = new Map<string, Set<string>>();
  readonly #refsOf = new Map<string, readonly string[]>();
  /** Told when no pod of this tracker refers to a ref key any more. */
  readonly #released: (refKey: string) => void;

  constructor(onChange: (podKeys: readonly string[]) => void, released: (refKey: string) => void) {
    this.onChange = onChange;
    this.#released = released;
  }

  get pods(): number {
    return this.#refsOf.size;
  }

  usersOf(refKey: string): ReadonlySet<string> | undefined {
    return this.#users.get(refKey);
  }

  /** Records that `podKey` refers to `keys` now (none: forgets it). */
  track(podKey: string, keys: readonly string[]): void {
    const before = this.#refsOf.get(podKey) ?? [];
    for (const key of before) {
      if (keys.includes(key)) continue;
      const users = this.#users.get(key);
      users?.delete(podKey);
      if (users?.size === 0) {
        this.#users.delete(key);
        this.#released(key);
      }
    }
    for (const key of keys) {
      let users = this.#users.get(key);
      if (!users) this.#users.set(key, (users = new Set()));
      users.add(podKey);
    }
    if (keys.length === 0) this.#refsOf.delete(podKey);
    else this.#refsOf.set(podKey, keys);
  }

  /** Forgets every pod. */
  clear(): void {
    for (const podKey of [...this.#refsOf.keys()]) this.track(podKey, []);
  }
}

/** Rejects once `signal` aborts. */
const aborted = (signal: AbortSignal) =>
  new Promise<never>((_resolve, reject) => {
    const fail = () =>
      reject(signal.reason instanceof Error ? signal.reason : new Error("stopped", { cause: signal.reason }));
    if (signal.aborted) fail();
    else signal.addEventListener("abort", fail, { once: true });
  });

export class ReferenceCache implements PodReferences {
  readonly #o: ReferenceCacheOptions;
  readonly #configMaps: Informer<ConfigMap>;
  readonly #secrets: SecretCache;
  /** Full ConfigMaps by ref key, as last read. */
  readonly #full = new Map<string, ConfigMap>();
  /** The cache's own tracker (its `lookups`), and every subscriber's. */
  readonly #own: Tracker;
  readonly #trackers = new Set<Tracker>();
  #gets = 0;

  constructor(options: ReferenceCacheOptions) {
    this.#o = options;
    const clock = options.clock ?? systemClock;
    const common = {
      client: options.kube,
      logger: options.logger,
      metadataOnly: true,
      now: () => clock.now(),
      sleep: (ms: number, signal: AbortSignal) => sleepOn(clock, ms, signal),
    } as const;
    this.#configMaps = new Informer<ConfigMap>({ ...common, path: "/api/v1/configmaps", trim: metadataOnly });
    this.#watch(this.#configMaps);
    this.#secrets = new SecretCache({
      kube: options.kube,
      logger: options.logger,
      clock,
      ttlMs: options.secretTtlMs ?? DEFAULT_SECRET_TTL_MS,
      referenced: (key) => this.#referenced(key),
      onChange: (key) => this.#changed(key),
    });
    this.#own = new Tracker(options.onChange ?? (() => undefined), (key) => this.#released(key));
    this.#trackers.add(this.#own);
  }

  /**
   * Starts the ConfigMap metadata informer and the Secret refresh until `signal` aborts; resolves
   * once ConfigMaps are listed (rejects if stopped before). Call once.
   */
  async start(signal: AbortSignal): Promise<void> {
    void this.#configMaps.start(signal);
    void this.#secrets.run(signal);
    await this.#configMaps.ready;
  }

  /**
   * A user of this cache with pods of its own (one PodController), told with `onChange` of changes
   * to what they refer to and to nothing else. Its `start(signal)` does not start the cache (its
   * owner does): it resolves once ConfigMaps are listed (rejects when `signal` aborts first) and,
   * when `signal` aborts, untracks every pod of the subscriber. Track nothing before `start`.
   */
  subscribe(onChange: (podKeys: readonly string[]) => void): PodReferences {
    const tracker = new Tracker(onChange, (key) => this.#released(key));
    return {
      start: async (signal) => {
        this.#trackers.add(tracker);
        const leave = () => {
          this.#trackers.delete(tracker);
          tracker.clear();
        };
        if (signal.aborted) leave();
        else signal.addEventListener("abort", leave, { once: true });
        await Promise.race([this.#configMaps.ready, aborted(signal)]);
      },
      lookups: (podKey, namespace, names) => this.#lookups(tracker, podKey, namespace, names),
      untrack: (podKey) => tracker.track(podKey, []),
      stats: () => ({ ...this.stats(), pods: tracker.pods }),
    };
  }

  /** Full-object GETs made so far, objects held, and pods tracked (by every subscriber). */
  stats() {
    const secrets = this.#secrets.stats();
    let pods = 0;
    for (const tracker of this.#trackers) pods += tracker.pods;
    return { gets: this.#gets + secrets.gets, held: this.#full.size + secrets.held, pods };
  }

  /**
   * Records that `podKey` refers to `names` in `namespace` (replacing what it referred to before)
   * and returns lookups over their current content, reading with a GET only the objects not held
   * or changed since they were read. Rejects when a GET fails.
   */
  lookups(podKey: string, namespace: string, names: ReferencedNames): Promise<ObjectLookups> {
    return this.#lookups(this.#own, podKey, namespace, names);
  }

  /** Forgets a pod's references (and the data no other pod refers to). */
  untrack(podKey: string): void {
    this.#own.track(podKey, []);
  }

  async #lookups(
    tracker: Tracker,
    podKey: string,
    namespace: string,
    names: ReferencedNames,
  ): Promise<ObjectLookups> {
    // Most pods refer to nothing: no arrays, maps and promises to build at each of their reconciles.
    if (names.configMaps.length === 0 && names.secrets.length === 0) {
      tracker.track(podKey, []);
      return NO_LOOKUPS;
    }
    const keys = [
      ...names.configMaps.map((n) => configMapKey(namespace, n)),
      ...names.secrets.map((n) => secretKey(namespace, n)),
    ];
    tracker.track(podKey, keys);
    const [configMaps, secrets] = await Promise.all([
      Promise.all(names.configMaps.map((n) => this.#configMap(namespace, n))),
      Promise.all(names.secrets.map((n) => this.#secrets.get(namespace, n))),
    ]);
    const cm = new Map(names.configMaps.map((n, i) => [n, configMaps[i]]));
    const sec = new Map(names.secrets.map((n, i) => [n, secrets[i]]));
    return {
      configMap: (ns, name) => (ns === namespace ? cm.get(name) : undefined),
      secret: (ns, name) => (ns === namespace ? sec.get(name) : undefined),
    };
  }

  /** Whether a pod of any subscriber refers to `refKey`. */
  #referenced(refKey: string): boolean {
    for (const tracker of this.#trackers) if ((tracker.usersOf(refKey)?.size ?? 0) > 0) return true;
    return false;
  }

  /** A tracker's last pod referring to `refKey` went: its data goes unless another's refers to it. */
  #released(refKey: string): void {
    if (this.#referenced(refKey)) return;
    this.#full.delete(refKey);
    this.#secrets.release(refKey);
  }

  /** `refKey` appeared, changed or went: each subscriber is told of its own pods referring to it. */
  #changed(refKey: string): void {
    for (const tracker of this.#trackers) {
      const users = tracker.usersOf(refKey);
      if (users && users.size > 0) tracker.onChange([...users]);
    }
  }

  async #configMap(namespace: string, name: string): Promise<ConfigMap | undefined> {
    const key = configMapKey(namespace, name);
    const meta = this.#configMaps.getByName(namespace, name);
    if (!meta) {
      this.#full.delete(key);
      return undefined;
    }
    const held = this.#full.get(key);
    const version = meta.metadata?.resourceVersion ?? "";
    if (held && atLeast(held.metadata?.resourceVersion ?? "", version)) return held;
    this.#gets++;
    const read = await this.#o.kube.getConfigMap(namespace, name);
    if (read) {
      delete read.metadata?.managedFields;
      // Kept only while a pod still refers to it (it may have been untracked during the GET).
      if (this.#referenced(key)) this.#full.set(key, read);
    } else this.#full.delete(key);
    return read;
  }

  #watch(informer: Informer<ConfigMap>): void {
    const changed = (object: ConfigMap) => {
      const [namespace = "", name = ""] = objectKey(object).split("/");
      this.#changed(configMapKey(namespace, name));
    };
    informer.onAdd(changed);
    informer.onUpdate(changed);
    informer.onDelete(changed);
  }
}
