/**
 * {@link ReferenceCache}: the ConfigMaps and Secrets that managed pods refer to, read without a GET
 * per reconcile.
 *
 * Two cluster-wide informers keep only the metadata of every ConfigMap and Secret (name,
 * namespace, resourceVersion; the data is dropped before it is stored). The full object of one a
 * managed pod refers to is read with a GET on first need and again only when its resourceVersion
 * moves, and a change to any object enqueues the pods that refer to it. A reconcile of a pod whose
 * references did not change costs no API call.
 *
 *   const refs = new ReferenceCache({ kube, logger, onChange: (keys) => keys.forEach(queue.add) });
 *   await refs.start(signal);                         // both metadata caches listed
 *   const lookups = await refs.lookups("ns/pod", "ns", { configMaps: ["cfg"], secrets: [] });
 *   translatePod(pod, { lookups, ... });
 *   refs.untrack("ns/pod");                           // when the pod is forgotten
 *
 * The data of objects no tracked pod refers to any more is dropped.
 */
import type { Logger } from "pino";
import { sleepOn, systemClock, type Clock } from "../base/clock.ts";
import {
  Informer,
  objectKey,
  type ConfigMap,
  type KubeClient,
  type KubeObject,
  type Secret,
} from "../kube/index.ts";
import type { ObjectLookups } from "../workload/index.ts";

export interface ReferencedNames {
  readonly configMaps: readonly string[];
  readonly secrets: readonly string[];
}

export interface ReferenceCacheOptions {
  readonly kube: Pick<KubeClient, "list" | "watch" | "getConfigMap" | "getSecret">;
  readonly logger: Logger;
  /** Called with the keys of the pods that refer to an object that appeared, changed or went. */
  readonly onChange: (podKeys: readonly string[]) => void;
  /** Times the informers' re-list backoff; default {@link systemClock}. */
  readonly clock?: Clock;
}

type Kind = "configmap" | "secret";

/** Keeps what tells one version from another, and nothing of the content. */
const metadataOnly = <T extends KubeObject>(object: T): T => {
  const m = object.metadata ?? {};
  const kept = { name: m.name, namespace: m.namespace, uid: m.uid, resourceVersion: m.resourceVersion };
  return { metadata: kept } as T;
};

/** Whether `held` is at least `current` (etcd resourceVersions are increasing integers). */
const atLeast = (held: string, current: string) =>
  /^\d+$/.test(held) && /^\d+$/.test(current) ? BigInt(held) >= BigInt(current) : held === current;

const refKey = (kind: Kind, namespace: string, name: string) => `${kind}/${namespace}/${name}`;

export class ReferenceCache {
  readonly #o: ReferenceCacheOptions;
  readonly #configMaps: Informer<ConfigMap>;
  readonly #secrets: Informer<Secret>;
  /** Full objects by ref key, as last read. */
  readonly #full = new Map<string, ConfigMap | Secret>();
  /** Pod keys by ref key, and ref keys by pod key. */
  readonly #users = new Map<string, Set<string>>();
  readonly #refsOf = new Map<string, readonly string[]>();
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
    this.#secrets = new Informer<Secret>({ ...common, path: "/api/v1/secrets", trim: metadataOnly });
    this.#watch(this.#configMaps, "configmap");
    this.#watch(this.#secrets, "secret");
  }

  /** Starts both metadata informers; resolves once both have listed. */
  async start(signal: AbortSignal): Promise<void> {
    void this.#configMaps.start(signal);
    void this.#secrets.start(signal);
    await Promise.all([this.#configMaps.ready, this.#secrets.ready]);
  }

  /** Full-object GETs made so far and objects held, for tests and benchmarks. */
  stats() {
    return { gets: this.#gets, held: this.#full.size, pods: this.#refsOf.size };
  }

  /**
   * Records that `podKey` refers to `names` in `namespace` (replacing what it referred to before)
   * and returns lookups over their current content, reading with a GET only the objects not held
   * or changed since they were read. Rejects when a GET fails.
   */
  async lookups(podKey: string, namespace: string, names: ReferencedNames): Promise<ObjectLookups> {
    const keys = [
      ...names.configMaps.map((n) => refKey("configmap", namespace, n)),
      ...names.secrets.map((n) => refKey("secret", namespace, n)),
    ];
    this.#track(podKey, keys);
    const [configMaps, secrets] = await Promise.all([
      Promise.all(names.configMaps.map((n) => this.#current("configmap", namespace, n))),
      Promise.all(names.secrets.map((n) => this.#current("secret", namespace, n))),
    ]);
    const cm = new Map(names.configMaps.map((n, i) => [n, configMaps[i]]));
    const sec = new Map(names.secrets.map((n, i) => [n, secrets[i]]));
    return {
      configMap: (ns, name) => (ns === namespace ? cm.get(name) : undefined),
      secret: (ns, name) => (ns === namespace ? sec.get(name) : undefined),
    };
  }

  /** Forgets a pod's references (and the data no other pod refers to). */
  untrack(podKey: string): void {
    this.#track(podKey, []);
  }

  #track(podKey: string, keys: readonly string[]): void {
    const before = this.#refsOf.get(podKey) ?? [];
    for (const key of before) {
      if (keys.includes(key)) continue;
      const users = this.#users.get(key);
      users?.delete(podKey);
      if (users?.size === 0) {
        this.#users.delete(key);
        this.#full.delete(key);
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

  async #current(kind: Kind, namespace: string, name: string): Promise<ConfigMap | Secret | undefined> {
    const key = refKey(kind, namespace, name);
    const meta = (kind === "configmap" ? this.#configMaps : this.#secrets).getByName(namespace, name);
    if (!meta) {
      this.#full.delete(key);
      return undefined;
    }
    const held = this.#full.get(key);
    const version = meta.metadata?.resourceVersion ?? "";
    if (held && atLeast(held.metadata?.resourceVersion ?? "", version)) return held;
    this.#gets++;
    const read =
      kind === "configmap"
        ? await this.#o.kube.getConfigMap(namespace, name)
        : await this.#o.kube.getSecret(namespace, name);
    if (read) {
      delete read.metadata?.managedFields;
      // Kept only while a pod still refers to it (it may have been untracked during the GET).
      if (this.#users.has(key)) this.#full.set(key, read);
    } else this.#full.delete(key);
    return read;
  }

  #watch<T extends KubeObject>(informer: Informer<T>, kind: Kind): void {
    const changed = (object: T) => {
      const [namespace = "", name = ""] = objectKey(object).split("/");
      const users = this.#users.get(refKey(kind, namespace, name));
      if (users && users.size > 0) this.#o.onChange([...users]);
    };
    informer.onAdd(changed);
    informer.onUpdate(changed);
    informer.onDelete(changed);
  }
}
