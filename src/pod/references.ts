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
 * The data of objects no tracked pod refers to any more is dropped.
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
  /** Called with the keys of the pods that refer to an object that appeared, changed or went. */
  readonly onChange: (podKeys: readonly string[]) => void;
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

export class ReferenceCache {
  readonly #o: ReferenceCacheOptions;
  readonly #configMaps: Informer<ConfigMap>;
  readonly #secrets: SecretCache;
  /** Full ConfigMaps by ref key, as last read. */
  readonly #full = new Map<string, ConfigMap>();
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
    this.#watch(this.#configMaps);
    this.#secrets = new SecretCache({
      kube: options.kube,
      logger: options.logger,
      clock,
      ttlMs: options.secretTtlMs ?? DEFAULT_SECRET_TTL_MS,
      usersOf: (key) => [...(this.#users.get(key) ?? [])],
      onChange: options.onChange,
    });
  }

  /** Starts the ConfigMap metadata informer and the Secret refresh; resolves once ConfigMaps are listed. */
  async start(signal: AbortSignal): Promise<void> {
    void this.#configMaps.start(signal);
    void this.#secrets.run(signal);
    await this.#configMaps.ready;
  }

  /** Full-object GETs made so far and objects held, for tests and benchmarks. */
  stats() {
    const secrets = this.#secrets.stats();
    return {
      gets: this.#gets + secrets.gets,
      held: this.#full.size + secrets.held,
      pods: this.#refsOf.size,
    };
  }

  /**
   * Records that `podKey` refers to `names` in `namespace` (replacing what it referred to before)
   * and returns lookups over their current content, reading with a GET only the objects not held
   * or changed since they were read. Rejects when a GET fails.
   */
  async lookups(podKey: string, namespace: string, names: ReferencedNames): Promise<ObjectLookups> {
    const keys = [
      ...names.configMaps.map((n) => configMapKey(namespace, n)),
      ...names.secrets.map((n) => secretKey(namespace, n)),
    ];
    this.#track(podKey, keys);
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
        this.#secrets.release(key);
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
      if (this.#users.has(key)) this.#full.set(key, read);
    } else this.#full.delete(key);
    return read;
  }

  #watch(informer: Informer<ConfigMap>): void {
    const changed = (object: ConfigMap) => {
      const [namespace = "", name = ""] = objectKey(object).split("/");
      const users = this.#users.get(configMapKey(namespace, name));
      if (users && users.size > 0) this.#o.onChange([...users]);
    };
    informer.onAdd(changed);
    informer.onUpdate(changed);
    informer.onDelete(changed);
  }
}
