/**
 * Kubernetes objects as devicelet holds them: plain parsed JSON, exactly what the API server sent
 * (`JSON.parse` of the response or watch line), typed with client-node's models but with every
 * `Date` as its RFC 3339 wire string.
 *
 * Why not client-node's model classes: its typed calls turn times into `Date` objects (and
 * MicroTime into a bare string despite the type), drop fields the generated model does not know,
 * and cost ~35% more heap per pod; the watch stream gives plain JSON anyway. One representation
 * everywhere (direct reads, informer caches, handlers) avoids mixing the two. Times are compared
 * with `parseKubeTime` and written with `toKubeTime` / `toMicroTime`.
 */
import type {
  CoreV1Event,
  V1ConfigMap,
  V1ContainerStatus,
  V1Lease,
  V1LeaseSpec,
  V1Node,
  V1NodeCondition,
  V1NodeStatus,
  V1ObjectMeta,
  V1ObjectReference,
  V1OwnerReference,
  V1Pod,
  V1PodCondition,
  V1PodStatus,
  V1Secret,
  V1Status,
  V1Taint,
} from "@kubernetes/client-node";

/**
 * client-node's models by name, for the folders that must not import the SDK themselves
 * (`src/workload`, `src/node`, `src/pod`: the SDK stays behind `src/kube`). Types only.
 */
export type {
  V1ConfigMap,
  V1Container,
  V1ContainerState,
  V1ContainerStatus,
  V1Node,
  V1NodeCondition,
  V1NodeStatus,
  V1Pod,
  V1PodCondition,
  V1PodStatus,
  V1Secret,
  V1Volume,
} from "@kubernetes/client-node";

/** A client-node model as wire JSON: `Date` becomes `string`, recursively. */
export type Wire<T> = T extends Date
  ? string
  : T extends readonly (infer U)[]
    ? Wire<U>[]
    : T extends object
      ? { [K in keyof T]: Wire<T[K]> }
      : T;

export type ObjectMeta = Wire<V1ObjectMeta>;
export type ObjectReference = Wire<V1ObjectReference>;
export type OwnerReference = Wire<V1OwnerReference>;
export type Pod = Wire<V1Pod>;
export type PodStatus = Wire<V1PodStatus>;
export type PodCondition = Wire<V1PodCondition>;
export type ContainerStatus = Wire<V1ContainerStatus>;
export type Node = Wire<V1Node>;
export type NodeStatus = Wire<V1NodeStatus>;
export type NodeCondition = Wire<V1NodeCondition>;
export type Taint = Wire<V1Taint>;
/** `spec.renewTime` / `spec.acquireTime` are MicroTime strings: six fractional digits. */
export type Lease = Wire<V1Lease>;
export type LeaseSpec = Wire<V1LeaseSpec>;
export type ConfigMap = Wire<V1ConfigMap>;
/** `data` values are base64; never log them. */
export type Secret = Wire<V1Secret>;
/** core/v1 Event (not events.k8s.io). */
export type CoreEvent = Wire<CoreV1Event>;
export type Status = Wire<V1Status>;

/** Anything with object metadata, as the informer and store need it. */
export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata?: ObjectMeta;
}

/** One event of a watch stream (`BOOKMARK` objects carry only `metadata.resourceVersion`). */
export interface WatchEvent<T> {
  readonly type: "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK";
  readonly object: T;
}

/** The key devicelet uses for an object: `namespace/name`, or `name` when cluster-scoped. */
export function objectKey(obj: KubeObject): string {
  const ns = obj.metadata?.namespace;
  const name = obj.metadata?.name ?? "";
  return ns ? `${ns}/${name}` : name;
}

/**
 * The wire form of an object built with `Date`s (`src/node/build.ts`, `src/pod/status.ts`): a deep
 * copy with every `Date` as an RFC 3339 string, exactly as it will travel and come back.
 */
export function toWire<T extends object>(value: T): Wire<T> {
  return JSON.parse(JSON.stringify(value)) as Wire<T>;
}
