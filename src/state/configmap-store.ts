/**
 * {@link DurableStore} in ConfigMaps: one small ConfigMap per key in devicelet's own namespace, so
 * what a provider must never forget (the generation high-water mark of each device) lives in the
 * API server with the rest of the cluster's state and survives devicelet, its pod and its node.
 * Values are cached after the first read; every `set` is one API write.
 */
import type { KubeClient } from "../kube/index.ts";
import type { DurableStore } from "../provider/types.ts";
import { createHash } from "node:crypto";

const nameFor = (key: string) => {
  const readable = key
    .toLowerCase()
    .replace(/[^a-z0-9.-]+/g, "-")
    .replace(/^[-.]+|[-.]+$/g, "")
    .slice(0, 200);
  const hash = createHash("sha256").update(key).digest("hex").slice(0, 8);
  return `devicelet-state-${readable}-${hash}`;
};

export class ConfigMapStore implements DurableStore {
  readonly #kube: Pick<KubeClient, "getConfigMap" | "upsertConfigMap">;
  readonly #namespace: string;
  readonly #cache = new Map<string, string | undefined>();

  constructor(kube: Pick<KubeClient, "getConfigMap" | "upsertConfigMap">, namespace: string) {
    this.#kube = kube;
    this.#namespace = namespace;
  }

  async get(key: string): Promise<string | undefined> {
    if (this.#cache.has(key)) return this.#cache.get(key);
    const cm = await this.#kube.getConfigMap(this.#namespace, nameFor(key));
    const value = cm?.data?.value;
    this.#cache.set(key, value);
    return value;
  }

  async set(key: string, value: string): Promise<void> {
    await this.#kube.upsertConfigMap(
      this.#namespace,
      nameFor(key),
      { key, value },
      { "app.kubernetes.io/managed-by": "devicelet" },
    );
    this.#cache.set(key, value);
  }
}
