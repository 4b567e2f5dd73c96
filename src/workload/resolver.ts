/**
 * Per-translation state shared by env and volume resolution: cached ConfigMap/Secret lookups in the
 * pod's namespace, the Events to record on the pod, and the configuration error that stops the
 * translation (as the kubelet stops at the first one and reports `CreateContainerConfigError`).
 */
import type { V1ConfigMap, V1Secret } from "../kube/types.ts";
import type { DownwardContext } from "./downward.ts";
import { own, rec, str, type Model } from "./shape.ts";

/** An Event to record on the pod. */
export interface PodEvent {
  readonly type: "Normal" | "Warning";
  readonly reason: string;
  readonly message: string;
}

/**
 * Read access to the ConfigMaps and Secrets a pod refers to, typically an informer cache: undefined
 * means "does not exist". It should not throw; if it does, the translation ends in a configError.
 */
export interface ObjectLookups {
  configMap(namespace: string, name: string): Model<V1ConfigMap> | undefined;
  secret(namespace: string, name: string): Model<V1Secret> | undefined;
}

/** Thrown inside the translator to stop at the first configuration error; never escapes it. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

/** Event reasons, as virtual-kubelet and the kubelet record them. */
export const EventReason = {
  MandatoryConfigMapNotFound: "MandatoryConfigMapNotFound",
  OptionalConfigMapNotFound: "OptionalConfigMapNotFound",
  MandatoryConfigMapKeyNotFound: "MandatoryConfigMapKeyNotFound",
  OptionalConfigMapKeyNotFound: "OptionalConfigMapKeyNotFound",
  MandatorySecretNotFound: "MandatorySecretNotFound",
  OptionalSecretNotFound: "OptionalSecretNotFound",
  MandatorySecretKeyNotFound: "MandatorySecretKeyNotFound",
  OptionalSecretKeyNotFound: "OptionalSecretKeyNotFound",
  InvalidEnvironmentVariableNames: "InvalidEnvironmentVariableNames",
} as const;

export type RefKind = "configmap" | "secret";

export class Resolver {
  readonly namespace: string;
  readonly downward: DownwardContext;
  readonly #lookups: ObjectLookups;
  readonly #configMaps = new Map<string, Model<V1ConfigMap> | undefined>();
  readonly #secrets = new Map<string, Model<V1Secret> | undefined>();
  readonly #events: PodEvent[] = [];
  readonly #seen = new Set<string>();

  constructor(namespace: string, lookups: ObjectLookups, downward: DownwardContext) {
    this.namespace = namespace;
    this.#lookups = lookups;
    this.downward = downward;
  }

  /** The Events recorded so far, each once, in order. */
  get events(): PodEvent[] {
    return [...this.#events];
  }

  event(type: PodEvent["type"], reason: string, message: string): void {
    const key = `${type}\0${reason}\0${message}`;
    if (this.#seen.has(key)) return;
    this.#seen.add(key);
    this.#events.push({ type, reason, message });
  }

  fail(message: string): never {
    throw new ConfigError(message);
  }

  /**
   * The object's string data by key (Secrets decoded from base64 to UTF-8), or undefined when the
   * object does not exist.
   */
  object(kind: RefKind, name: string): { data: Map<string, DataValue> } | undefined {
    return kind === "configmap" ? this.#configMap(name) : this.#secret(name);
  }

  /**
   * The object, or undefined after recording `Optional*NotFound` for an optional reference; a
   * mandatory reference to a missing object records `Mandatory*NotFound` and fails with
   * `failMessage` (default: the kubelet's `configmap "x" not found`).
   */
  require(kind: RefKind, name: string, optional: boolean, context = "", failMessage?: string) {
    const found = this.object(kind, name);
    if (found !== undefined) return found;
    const label = kind === "configmap" ? "ConfigMap" : "Secret";
    const notFound = `${kind} ${JSON.stringify(name)} not found`;
    if (optional) {
      this.event("Warning", `Optional${label}NotFound`, context + notFound);
      return undefined;
    }
    this.event("Warning", `Mandatory${label}NotFound`, notFound);
    return this.fail(failMessage ?? notFound);
  }

  #configMap(name: string) {
    if (!this.#configMaps.has(name))
      this.#configMaps.set(name, this.#lookups.configMap(this.namespace, name));
    const cm = rec(this.#configMaps.get(name));
    if (cm === undefined) return undefined;
    const data = new Map<string, DataValue>();
    for (const [k, v] of entries(cm["binaryData"]))
      data.set(k, { content: v, encoding: "base64", binary: true });
    for (const [k, v] of entries(cm["data"])) data.set(k, { content: v, encoding: "utf8", binary: false });
    return { data };
  }

  #secret(name: string) {
    if (!this.#secrets.has(name)) this.#secrets.set(name, this.#lookups.secret(this.namespace, name));
    const secret = rec(this.#secrets.get(name));
    if (secret === undefined) return undefined;
    const data = new Map<string, DataValue>();
    // stringData is write-only on the API server; honoured for objects built by hand (tests, fakes).
    for (const [k, v] of entries(secret["stringData"]))
      data.set(k, { content: Buffer.from(v, "utf8").toString("base64"), encoding: "base64", binary: false });
    for (const [k, v] of entries(secret["data"]))
      data.set(k, { content: v, encoding: "base64", binary: false });
    return { data };
  }
}

/** One value of a ConfigMap or Secret, as stored: UTF-8 text or base64. */
export interface DataValue {
  readonly content: string;
  readonly encoding: "utf8" | "base64";
  /** From `ConfigMap.binaryData`: mounted as files, but invisible to env (as in the kubelet). */
  readonly binary: boolean;
}

/** The value as text, as the kubelet puts `[]byte` into an env var. */
export const asText = (v: DataValue): string =>
  v.encoding === "utf8" ? v.content : Buffer.from(v.content, "base64").toString("utf8");

const entries = (v: unknown): [string, string][] => {
  const o = rec(v);
  if (o === undefined) return [];
  return Object.keys(o).flatMap((k): [string, string][] => {
    const value = str(own(o, k));
    return value === undefined ? [] : [[k, value]];
  });
};
