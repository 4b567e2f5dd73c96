/**
 * {@link DurableStore} in ConfigMaps: one small ConfigMap per key in devicelet's own namespace, so
 * what a provider must never forget (the generation high-water mark of each device, commands
 * waiting for a device) lives in the API server with the rest of the cluster's state and survives
 * devicelet, its pod and its node.
 *
 * `get` caches after the first read; every `set` is one API write (a merge patch, last writer
 * wins). `update` is a compare-and-swap on the ConfigMap's `metadata.resourceVersion` (a PUT that
 * the API server refuses with 409 Conflict when the object changed since it was read), so two
 * devicelet processes writing the same key never lose each other's write. It starts from the
 * object as this process last read or wrote it, so a key's next update costs one write, not a
 * read and a write; a stale copy costs a 409 and a read, and "nothing to write" is decided on a
 * fresh read only. `entries` lists the store's ConfigMaps
 * (label `app.kubernetes.io/managed-by=devicelet`) in one paged read; `delete` removes a key's.
 *
 *   const store = new ConfigMapStore(kube, "devicelet-system");
 *   await store.update("mqtt.gw-1", (current) => next(current));
 */
import { createHash } from "node:crypto";
import { isAlreadyExists, isConflict, type ConfigMap, type KubeClient } from "../kube/index.ts";
import type { DurableStore } from "../provider/types.ts";

const nameFor = (key: string) => {
  const readable = key
    .toLowerCase()
    .replace(/[^a-z0-9.-]+/g, "-")
    .replace(/^[-.]+|[-.]+$/g, "")
    .slice(0, 200);
  const hash = createHash("sha256").update(key).digest("hex").slice(0, 8);
  return `devicelet-state-${readable}-${hash}`;
};

const LABELS = { "app.kubernetes.io/managed-by": "devicelet" } as const;
const SELECTOR = "app.kubernetes.io/managed-by=devicelet";

/** Reads and writes of one `update` before it gives up (each lost race costs one of each). */
const MAX_CAS_ATTEMPTS = 10;

export class ConfigMapStore implements DurableStore {
  readonly #kube: Pick<
    KubeClient,
    "getConfigMap" | "upsertConfigMap" | "replaceConfigMap" | "deleteConfigMap" | "list"
  >;
  readonly #namespace: string;
  readonly #cache = new Map<string, string | undefined>();
  /** Each key's ConfigMap as this process last read or wrote it; null: it was not there. */
  readonly #objects = new Map<string, ConfigMap | null>();

  constructor(
    kube: Pick<
      KubeClient,
      "getConfigMap" | "upsertConfigMap" | "replaceConfigMap" | "deleteConfigMap" | "list"
    >,
    namespace: string,
  ) {
    this.#kube = kube;
    this.#namespace = namespace;
  }

  async get(key: string): Promise<string | undefined> {
    if (this.#cache.has(key)) return this.#cache.get(key);
    return (await this.#read(key))?.data?.value;
  }

  async set(key: string, value: string): Promise<void> {
    const cm = await this.#kube.upsertConfigMap(this.#namespace, nameFor(key), { key, value }, LABELS);
    this.#cache.set(key, value);
    this.#objects.set(key, cm);
  }

  async update(
    key: string,
    change: (current: string | undefined) => string | undefined,
  ): Promise<string | undefined> {
    const name = nameFor(key);
    for (let attempt = 1; ; attempt++) {
      const known = attempt === 1 ? this.#objects.get(key) : undefined;
      const cm = known === undefined ? await this.#read(key) : known;
      const current = cm?.data?.value;
      const next = change(current);
      if (next === undefined || next === current) {
        // Nothing to write is a decision only a fresh read may back: a copy could be stale.
        if (known !== undefined) continue;
        this.#cache.set(key, current);
        return current;
      }
      const body: ConfigMap = cm
        ? { ...cm, data: { ...cm.data, key, value: next } }
        : {
            metadata: { name, namespace: this.#namespace, labels: { ...LABELS } },
            data: { key, value: next },
          };
      try {
        const written = await this.#kube.replaceConfigMap(body);
        this.#cache.set(key, next);
        this.#objects.set(key, written);
        return next;
      } catch (err) {
        // Someone wrote (or created) it since our read: read again and decide again.
        if (!(isConflict(err) || isAlreadyExists(err)) || attempt >= MAX_CAS_ATTEMPTS) throw err;
      }
    }
  }

  async delete(key: string): Promise<void> {
    await this.#kube.deleteConfigMap(this.#namespace, nameFor(key));
    this.#cache.delete(key);
    this.#objects.delete(key);
  }

  async entries(prefix: string): Promise<ReadonlyMap<string, string>> {
    const path = `/api/v1/namespaces/${encodeURIComponent(this.#namespace)}/configmaps`;
    const { items } = await this.#kube.list<ConfigMap>(path, undefined, { labelSelector: SELECTOR });
    const out = new Map<string, string>();
    for (const cm of items) {
      const key = cm.data?.key;
      const value = cm.data?.value;
      if (key === undefined || value === undefined || !key.startsWith(prefix)) continue;
      if (cm.metadata?.name !== nameFor(key)) continue;
      out.set(key, value);
      this.#cache.set(key, value);
      this.#objects.set(key, cm);
    }
    return out;
  }

  async #read(key: string): Promise<ConfigMap | undefined> {
    const cm = await this.#kube.getConfigMap(this.#namespace, nameFor(key));
    this.#cache.set(key, cm?.data?.value);
    this.#objects.set(key, cm ?? null);
    return cm;
  }
}
