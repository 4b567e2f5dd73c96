/**
 * {@link FakeKube}: an in-memory API server behind the {@link KubeClient} interface, for unit tests
 * of the controllers without a cluster. It keeps what the controllers rely on:
 * - one resourceVersion counter for every write, as etcd does; list returns it, watch replays every
 *   change after the one asked for (410 Gone below {@link FakeKube.compact}), then follows;
 * - label selectors (`k=v`, `k!=v`, `k`) and field selectors (`spec.nodeName!=`, `metadata.name=x`);
 *   an object leaving a watch's selector is a DELETED to it;
 * - preconditions: pod status writes check the UID (409 Conflict, as the client turns the API
 *   server's 422) and, when given, the resourceVersion; a missing pod is 404. Pod deletes check the
 *   UID; a graceful delete of a bound pod sets `deletionTimestamp` (now + grace), grace 0 removes it
 *   (or leaves it to its finalizers). Lease and ConfigMap replaces check resourceVersion, as Lease
 *   deletes do when given one; creates answer AlreadyExists;
 * - faults: {@link FakeKube.fail} makes a verb reject while a predicate says so; watch streams can be
 *   held back (an informer cache that lags), ended, or failed.
 *
 *   const kube = new FakeKube({ clock });
 *   kube.apply("pods", pod);                          // as a user or the scheduler would
 *   kube.fail("replaceLease", () => apiError(503, "ServiceUnavailable"), { times: 2 });
 *   kube.holdWatches("pods"); ... kube.releaseWatches("pods");
 *   kube.count("patchPodStatus"); kube.object("pods", "ns/name");
 *
 * The world's other actors are explicit helpers: {@link FakeKube.apply} (a user), {@link
 * FakeKube.remove} (a force delete, the garbage collector), {@link FakeKube.removeNode} (a node
 * and the Leases it owns). Objects handed out are copies.
 */
import { systemClock, type Clock } from "../../src/base/clock.ts";
import { RequestBudget } from "../../src/kube/budget.ts";
import {
  NODE_LEASE_NAMESPACE,
  type EventInput,
  type EventUpdate,
  type KubeClient,
  type ListOptions,
  type ListResult,
  type PodDeletion,
  type PodStatusPatch,
  type WatchOptions,
} from "../../src/kube/client.ts";
import { KubeApiError, type Query } from "../../src/kube/transport.ts";
import type {
  ConfigMap,
  CoreEvent,
  KubeObject,
  Lease,
  LeaseSpec,
  Node,
  NodeStatus,
  Pod,
  Secret,
  WatchEvent,
} from "../../src/kube/types.ts";

/** The object type of each resource the fake serves. */
export interface Resources {
  pods: Pod;
  nodes: Node;
  leases: Lease;
  configmaps: ConfigMap;
  secrets: Secret;
  events: CoreEvent;
}
export type Resource = keyof Resources;
/** The KubeClient methods, by name: what {@link FakeKube.fail} and {@link FakeKube.calls} speak of. */
export type Verb = Exclude<keyof KubeClient, "budget" | "heartbeatBudget">;

/** An error as the client rejects with it: a KubeApiError carrying a `Status` body. */
export function apiError(
  code: number,
  reason: string,
  options: { message?: string; retryAfterSeconds?: number } = {},
): KubeApiError {
  const message = options.message ?? `${reason} (fake API server)`;
  const details =
    options.retryAfterSeconds === undefined ? undefined : { retryAfterSeconds: options.retryAfterSeconds };
  const body = JSON.stringify({
    kind: "Status",
    apiVersion: "v1",
    status: "Failure",
    code,
    reason,
    message,
    details,
  });
  return new KubeApiError(code, `HTTP ${code} ${reason}: ${message}`, body, {});
}

interface Change {
  readonly resource: Resource;
  readonly rv: number;
  readonly type: "ADDED" | "MODIFIED" | "DELETED";
  readonly object: KubeObject;
  readonly old: KubeObject | undefined;
}

interface Stream {
  readonly resource: Resource;
  readonly matches: (o: KubeObject | undefined) => boolean;
  readonly metadataOnly: boolean;
  readonly queue: WatchEvent<KubeObject>[];
  wake: (() => void) | undefined;
  ended: boolean;
  error: Error | undefined;
}

interface Fault {
  readonly verb: Verb;
  readonly error: (args: readonly unknown[]) => Error | undefined;
  times: number;
}

const clone = <T>(o: T): T => structuredClone(o);
const unsupported = (verb: string): Promise<never> =>
  Promise.reject(new Error(`FakeKube does not implement ${verb}`));
const keyOf = (namespace: string | undefined, name: string) => (namespace ? `${namespace}/${name}` : name);

/** RFC 7386 JSON merge patch: objects merge, `null` removes, anything else (arrays too) replaces. */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (typeof patch !== "object" || patch === null || Array.isArray(patch)) return clone(patch);
  const out: Record<string, unknown> =
    typeof target === "object" && target !== null && !Array.isArray(target)
      ? { ...(target as Record<string, unknown>) }
      : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) Reflect.deleteProperty(out, k);
    else if (v !== undefined) out[k] = mergePatch(out[k], v);
  }
  return out;
}

const path = (o: unknown, dotted: string): unknown =>
  dotted.split(".").reduce<unknown>((v, k) => (v as Record<string, unknown> | undefined)?.[k], o);

function labelMatcher(selector: string | undefined): (o: KubeObject) => boolean {
  const terms = (selector ?? "").split(",").filter((t) => t !== "");
  return (o) =>
    terms.every((t) => {
      const labels = o.metadata?.labels ?? {};
      if (t.includes("!=")) {
        const [k = "", v] = t.split("!=");
        return labels[k] !== v;
      }
      if (t.includes("=")) {
        const [k = "", v] = t.split(/==?/);
        return labels[k] === v;
      }
      return labels[t] !== undefined;
    });
}

function fieldMatcher(selector: string | undefined): (o: KubeObject) => boolean {
  const terms = (selector ?? "").split(",").filter((t) => t !== "");
  return (o) =>
    terms.every((t) => {
      const negated = t.includes("!=");
      const [field = "", value = ""] = t.split(negated ? "!=" : /==?/);
      const actual = path(o, field);
      const text = typeof actual === "string" ? actual : "";
      return negated ? text !== value : text === value;
    });
}

/** `/api/v1/pods`, `/api/v1/namespaces/ns/configmaps`, `/apis/coordination.k8s.io/v1/.../leases`. */
function parsePath(p: string): { resource: Resource; namespace: string | undefined } {
  const parts = p.split("/").filter((s) => s !== "");
  const resource = parts.at(-1) as Resource;
  const i = parts.indexOf("namespaces");
  return { resource, namespace: i >= 0 ? parts[i + 1] : undefined };
}

export class FakeKube implements KubeClient {
  readonly budget = new RequestBudget({ qps: 1_000_000, burst: 1_000_000 });
  readonly heartbeatBudget = new RequestBudget({ qps: 1_000_000, burst: 1_000_000 });
  /** Every call made through the KubeClient interface, in order (arguments as passed). */
  readonly calls: { verb: Verb; args: unknown[] }[] = [];
  readonly #clock: Clock;
  readonly #objects = new Map<Resource, Map<string, KubeObject>>();
  readonly #history: Change[] = [];
  readonly #streams = new Set<Stream>();
  readonly #held = new Set<Resource>();
  /** Events of a held resource still let through ({@link stepWatches}). */
  readonly #steps = new Map<Resource, number>();
  readonly #faults: Fault[] = [];
  #rv = 100;
  #compacted = 0;
  #uids = 0;

  constructor(options: { clock?: Clock } = {}) {
    this.#clock = options.clock ?? systemClock;
  }

  // ---- the world: users, the scheduler, the garbage collector, faults ----

  /** Creates or replaces an object as a user would (a uid is given to a new one without). */
  apply<T extends KubeObject>(resource: Resource, object: T): T {
    const meta = object.metadata ?? {};
    const existing = this.#get(resource, keyOf(meta.namespace, meta.name ?? ""));
    const next = clone(object);
    next.metadata = {
      ...next.metadata,
      uid: meta.uid ?? existing?.metadata?.uid ?? this.#uid(resource),
      creationTimestamp: existing?.metadata?.creationTimestamp ?? this.#now(),
    };
    return clone(this.#write(resource, next) as T);
  }

  /** Removes an object at once (a force delete, or the garbage collector). */
  remove(resource: Resource, key: string): void {
    const old = this.#get(resource, key);
    if (!old) return;
    this.#items(resource).delete(key);
    const deleted = clone(old);
    deleted.metadata = { ...deleted.metadata, resourceVersion: String(++this.#rv) };
    this.#record({ resource, rv: this.#rv, type: "DELETED", object: deleted, old });
  }

  /** A user deletes a Node; the garbage collector then deletes the Leases it owns. */
  removeNode(name: string): void {
    const uid = this.#get("nodes", name)?.metadata?.uid;
    this.remove("nodes", name);
    for (const [key, lease] of this.#items("leases")) {
      if (lease.metadata?.ownerReferences?.some((r) => r.uid === uid)) this.remove("leases", key);
    }
  }

  /** A user's `kubectl delete pod` (grace default: the pod's own, else 30 s). */
  deletePodAsUser(namespace: string, name: string, gracePeriodSeconds?: number): void {
    const pod = this.object("pods", keyOf(namespace, name));
    if (!pod) return;
    this.#deletePod(pod, gracePeriodSeconds ?? pod.spec?.terminationGracePeriodSeconds ?? 30);
  }

  /** A copy of the stored object, or undefined. */
  object<R extends Resource>(resource: R, key: string): Resources[R] | undefined {
    const o = this.#get(resource, key);
    return o && (clone(o) as Resources[R]);
  }

  objects<R extends Resource>(resource: R): Resources[R][] {
    return [...this.#items(resource).values()].map((o) => clone(o) as Resources[R]);
  }

  /** The resourceVersion of the last write. */
  get resourceVersion(): string {
    return String(this.#rv);
  }

  count(verb: Verb): number {
    return this.calls.filter((c) => c.verb === verb).length;
  }

  /**
   * Makes `verb` reject with what `error` returns (undefined: the call goes through), at most
   * `times` times (default: until the returned function is called).
   */
  fail(
    verb: Verb,
    error: (args: readonly unknown[]) => Error | undefined,
    options: { times?: number } = {},
  ): () => void {
    const fault: Fault = { verb, error, times: options.times ?? Infinity };
    this.#faults.push(fault);
    return () => {
      fault.times = 0;
    };
  }

  /** Holds back watch events of `resource` (its informers' caches lag) until released. */
  holdWatches(resource: Resource): void {
    this.#held.add(resource);
  }

  releaseWatches(resource: Resource): void {
    this.#held.delete(resource);
    for (const s of this.#streams) if (s.resource === resource) s.wake?.();
  }

  /** While held: lets `events` more events of `resource` through, over all its watches. */
  stepWatches(resource: Resource, events: number): void {
    this.#steps.set(resource, (this.#steps.get(resource) ?? 0) + events);
    for (const s of this.#streams) if (s.resource === resource) s.wake?.();
  }

  /** Ends every open watch of `resource` normally, as the API server's timeout does. */
  endWatches(resource: Resource): void {
    for (const s of this.#streams) {
      if (s.resource !== resource) continue;
      s.ended = true;
      s.wake?.();
    }
  }

  /** Makes every open watch of `resource` fail with `error` (e.g. a 410 Gone). */
  failWatches(resource: Resource, error: Error): void {
    for (const s of this.#streams) {
      if (s.resource !== resource) continue;
      s.error = error;
      s.wake?.();
    }
  }

  /** Forgets history up to now: a watch from an older resourceVersion gets 410 Gone. */
  compact(): void {
    this.#compacted = this.#rv;
    this.#history.length = 0;
  }

  /** Open watch streams of `resource`. */
  watching(resource: Resource): number {
    return [...this.#streams].filter((s) => s.resource === resource).length;
  }

  // ---- KubeClient ----

  async listPods(options?: ListOptions): Promise<ListResult<Pod>> {
    await this.#call("listPods", [options]);
    return this.#list<Pod>("pods", undefined, options?.labelSelector, options?.fieldSelector, false);
  }

  async patchPodStatus(patch: PodStatusPatch): Promise<Pod> {
    await this.#call("patchPodStatus", [patch]);
    const key = keyOf(patch.namespace, patch.name);
    const pod = this.#get("pods", key);
    if (!pod) throw apiError(404, "NotFound", { message: `pods "${patch.name}" not found` });
    // An empty uid is no precondition, as on the API server.
    if (patch.uid !== "" && pod.metadata?.uid !== patch.uid)
      throw apiError(409, "Conflict", { message: `UID precondition failed: pod ${key} is not ${patch.uid}` });
    if (patch.resourceVersion !== undefined && patch.resourceVersion !== pod.metadata?.resourceVersion)
      throw apiError(409, "Conflict", { message: `the object has been modified (pod ${key})` });
    const next = mergePatch(pod, { status: patch.status }) as Pod;
    return clone(this.#write("pods", next) as Pod);
  }

  async deletePod(deletion: PodDeletion): Promise<boolean> {
    await this.#call("deletePod", [deletion]);
    const pod = this.object("pods", keyOf(deletion.namespace, deletion.name));
    if (!pod || pod.metadata?.uid !== deletion.uid) return false;
    this.#deletePod(pod, deletion.gracePeriodSeconds);
    return true;
  }

  async getNode(name: string): Promise<Node | undefined> {
    await this.#call("getNode", [name]);
    return this.object("nodes", name);
  }

  async createNode(node: Node): Promise<Node> {
    await this.#call("createNode", [node]);
    return this.#create("nodes", { apiVersion: "v1", kind: "Node", ...node });
  }

  async deleteNode(name: string, uid: string): Promise<boolean> {
    await this.#call("deleteNode", [name, uid]);
    if (this.#get("nodes", name)?.metadata?.uid !== uid) return false;
    this.removeNode(name);
    return true;
  }

  async patchNode(name: string, patch: object): Promise<Node> {
    await this.#call("patchNode", [name, patch]);
    return this.#patch("nodes", name, patch);
  }

  async patchNodeStatus(
    name: string,
    status: NodeStatus,
    options?: { labels?: Readonly<Record<string, string | null>> },
  ): Promise<Node> {
    await this.#call("patchNodeStatus", [name, status, options?.labels]);
    return this.#patch(
      "nodes",
      name,
      options?.labels ? { metadata: { labels: options.labels }, status } : { status },
    );
  }

  async listNodes(labelSelector?: string): Promise<ListResult<Node>> {
    await this.#call("listNodes", [labelSelector]);
    return this.#list<Node>("nodes", undefined, labelSelector, undefined, false);
  }

  async getLease(name: string, namespace = NODE_LEASE_NAMESPACE): Promise<Lease | undefined> {
    await this.#call("getLease", [name, namespace]);
    return this.object("leases", keyOf(namespace, name));
  }

  async createLease(lease: Lease): Promise<Lease> {
    await this.#call("createLease", [lease]);
    const metadata = { ...lease.metadata, namespace: lease.metadata?.namespace ?? NODE_LEASE_NAMESPACE };
    return this.#create("leases", {
      apiVersion: "coordination.k8s.io/v1",
      kind: "Lease",
      ...lease,
      metadata,
    });
  }

  async replaceLease(lease: Lease): Promise<Lease> {
    await this.#call("replaceLease", [lease]);
    const name = lease.metadata?.name;
    if (!name || !lease.metadata?.resourceVersion)
      throw new TypeError("replaceLease needs metadata.name and metadata.resourceVersion");
    return this.#replace("leases", {
      ...lease,
      metadata: { namespace: NODE_LEASE_NAMESPACE, ...lease.metadata },
    });
  }

  async patchLeaseSpec(name: string, namespace: string, spec: LeaseSpec): Promise<Lease> {
    await this.#call("patchLeaseSpec", [name, namespace, spec]);
    return this.#patch("leases", keyOf(namespace, name), { spec });
  }

  async listLeases(namespace: string, labelSelector?: string): Promise<ListResult<Lease>> {
    await this.#call("listLeases", [namespace, labelSelector]);
    return this.#list<Lease>("leases", namespace, labelSelector, undefined, false);
  }

  async deleteLease(name: string, namespace: string, resourceVersion?: string): Promise<boolean> {
    await this.#call("deleteLease", [name, namespace, resourceVersion]);
    const key = keyOf(namespace, name);
    const lease = this.#get("leases", key);
    if (!lease || (resourceVersion !== undefined && lease.metadata?.resourceVersion !== resourceVersion))
      return false;
    this.remove("leases", key);
    return true;
  }

  async getConfigMap(namespace: string, name: string): Promise<ConfigMap | undefined> {
    await this.#call("getConfigMap", [namespace, name]);
    return this.object("configmaps", keyOf(namespace, name));
  }

  async getSecret(namespace: string, name: string): Promise<Secret | undefined> {
    await this.#call("getSecret", [namespace, name]);
    return this.object("secrets", keyOf(namespace, name));
  }

  async upsertConfigMap(
    namespace: string,
    name: string,
    data: Readonly<Record<string, string>>,
    labels?: Readonly<Record<string, string>>,
  ): Promise<ConfigMap> {
    await this.#call("upsertConfigMap", [namespace, name, data, labels]);
    if (this.#get("configmaps", keyOf(namespace, name)))
      return this.#patch("configmaps", keyOf(namespace, name), { data });
    return this.#create("configmaps", {
      apiVersion: "v1",
      kind: "ConfigMap",
      metadata: { name, namespace, labels: { ...labels } },
      data: { ...data },
    });
  }

  async deleteConfigMap(namespace: string, name: string): Promise<boolean> {
    await this.#call("deleteConfigMap", [namespace, name]);
    if (!this.#get("configmaps", keyOf(namespace, name))) return false;
    this.remove("configmaps", keyOf(namespace, name));
    return true;
  }

  async replaceConfigMap(configMap: ConfigMap): Promise<ConfigMap> {
    await this.#call("replaceConfigMap", [configMap]);
    return configMap.metadata?.resourceVersion
      ? this.#replace("configmaps", configMap)
      : this.#create("configmaps", configMap);
  }

  async createEvent(event: EventInput): Promise<CoreEvent> {
    await this.#call("createEvent", [event]);
    const namespace = event.involvedObject.namespace || "default";
    const now = this.#now();
    return this.#create<CoreEvent>("events", {
      apiVersion: "v1",
      kind: "Event",
      metadata: { name: event.name ?? `${event.involvedObject.name ?? "object"}.${++this.#uids}`, namespace },
      involvedObject: event.involvedObject,
      type: event.type,
      reason: event.reason,
      message: event.message,
      count: event.count ?? 1,
      firstTimestamp: event.firstTimestamp ?? now,
      lastTimestamp: event.lastTimestamp ?? now,
    });
  }

  async patchEvent(update: EventUpdate): Promise<CoreEvent> {
    await this.#call("patchEvent", [update]);
    const { namespace, name, ...rest } = update;
    return this.#patch("events", keyOf(namespace, name), rest);
  }

  async list<T extends KubeObject>(
    p: string,
    query?: Query,
    options?: ListOptions<T>,
  ): Promise<ListResult<T>> {
    await this.#call("list", [p, query, options]);
    const { resource, namespace } = parsePath(p);
    const selector = (k: "labelSelector" | "fieldSelector") =>
      options?.[k] ?? (typeof query?.[k] === "string" ? query[k] : undefined);
    const { items, resourceVersion } = this.#list<T>(
      resource,
      namespace,
      selector("labelSelector"),
      selector("fieldSelector"),
      options?.metadataOnly === true,
    );
    const each = options?.each;
    return { items: each ? items.flatMap((item) => each(item) ?? []) : items, resourceVersion };
  }

  watch<T extends KubeObject>(p: string, query: Query, options?: WatchOptions): AsyncIterable<WatchEvent<T>> {
    return this.#watch<T>(p, query, options);
  }

  /** Every namespace exists in the fake. */
  async getNamespace(name: string): Promise<KubeObject> {
    await this.#call("getNamespace", [name]);
    return { metadata: { name } };
  }

  // The kubelet API's reviews, CSRs and Secret writes are tested against the real API server
  // (test/integration/kubelet-*.test.ts); the controllers under test here never make them.
  createSecret(): Promise<never> {
    return unsupported("createSecret");
  }
  replaceSecret(): Promise<never> {
    return unsupported("replaceSecret");
  }
  createTokenReview(): Promise<never> {
    return unsupported("createTokenReview");
  }
  createSubjectAccessReview(): Promise<never> {
    return unsupported("createSubjectAccessReview");
  }
  createCertificateSigningRequest(): Promise<never> {
    return unsupported("createCertificateSigningRequest");
  }
  getCertificateSigningRequest(): Promise<never> {
    return unsupported("getCertificateSigningRequest");
  }
  approveCertificateSigningRequest(): Promise<never> {
    return unsupported("approveCertificateSigningRequest");
  }

  close(): Promise<void> {
    for (const s of this.#streams) {
      s.ended = true;
      s.wake?.();
    }
    return Promise.resolve();
  }

  // ---- internals ----

  #items(resource: Resource): Map<string, KubeObject> {
    let items = this.#objects.get(resource);
    if (!items) this.#objects.set(resource, (items = new Map<string, KubeObject>()));
    return items;
  }

  #get(resource: Resource, key: string): KubeObject | undefined {
    return this.#items(resource).get(key);
  }

  #now(): string {
    return new Date(this.#clock.now()).toISOString().replace(/\.\d{3}Z$/, "Z");
  }

  #uid(resource: Resource): string {
    return `${resource}-uid-${++this.#uids}`;
  }

  /** Records the call, answers asynchronously as a request would (a microtask later), applies faults. */
  async #call(verb: Verb, args: unknown[]): Promise<void> {
    this.calls.push({ verb, args });
    await Promise.resolve();
    for (const fault of this.#faults) {
      if (fault.verb !== verb || fault.times <= 0) continue;
      const error = fault.error(args);
      if (!error) continue;
      fault.times--;
      throw error;
    }
  }

  #write(resource: Resource, object: KubeObject): KubeObject {
    const meta = object.metadata ?? {};
    const key = keyOf(meta.namespace, meta.name ?? "");
    const old = this.#get(resource, key);
    const stored = clone(object);
    stored.metadata = { ...stored.metadata, resourceVersion: String(++this.#rv) };
    this.#items(resource).set(key, stored);
    this.#record({ resource, rv: this.#rv, type: old ? "MODIFIED" : "ADDED", object: stored, old });
    return stored;
  }

  #create<T extends KubeObject>(resource: Resource, object: T): T {
    const meta = object.metadata ?? {};
    if (this.#get(resource, keyOf(meta.namespace, meta.name ?? "")))
      throw apiError(409, "AlreadyExists", { message: `${resource} "${meta.name ?? ""}" already exists` });
    const next = clone(object);
    next.metadata = { ...next.metadata, uid: this.#uid(resource), creationTimestamp: this.#now() };
    return clone(this.#write(resource, next) as T);
  }

  #replace<T extends KubeObject>(resource: Resource, object: T): T {
    const meta = object.metadata ?? {};
    const current = this.#get(resource, keyOf(meta.namespace, meta.name ?? ""));
    if (!current) throw apiError(404, "NotFound", { message: `${resource} "${meta.name ?? ""}" not found` });
    if (current.metadata?.resourceVersion !== meta.resourceVersion)
      throw apiError(409, "Conflict", {
        message: `the object has been modified (${resource} ${meta.name ?? ""})`,
      });
    const next = clone(object);
    next.metadata = {
      ...next.metadata,
      uid: current.metadata?.uid,
      creationTimestamp: current.metadata?.creationTimestamp,
    };
    return clone(this.#write(resource, next) as T);
  }

  #patch<R extends Resource>(resource: R, key: string, patch: object): Resources[R] {
    const current = this.#get(resource, key);
    if (!current) throw apiError(404, "NotFound", { message: `${resource} "${key}" not found` });
    const wanted = (patch as { metadata?: { resourceVersion?: string } }).metadata?.resourceVersion;
    if (wanted !== undefined && wanted !== current.metadata?.resourceVersion)
      throw apiError(409, "Conflict", { message: `the object has been modified (${resource} ${key})` });
    const next = mergePatch(current, patch) as Resources[R];
    next.metadata = { ...next.metadata, uid: current.metadata?.uid };
    return clone(this.#write(resource, next) as Resources[R]);
  }

  /** The API server's graceful deletion of a pod. */
  #deletePod(pod: Pod, grace: number): void {
    const key = keyOf(pod.metadata?.namespace, pod.metadata?.name ?? "");
    const meta = pod.metadata ?? {};
    const bound = pod.spec?.nodeName !== undefined && pod.spec.nodeName !== "";
    const effective = bound ? grace : 0;
    if (effective === 0 && !meta.finalizers?.length) {
      // A Terminating pod's grace shortened to 0 is stored first, then the pod removed: its watches
      // see a MODIFIED event before the DELETED one, as from the API server.
      if (meta.deletionGracePeriodSeconds !== undefined && meta.deletionGracePeriodSeconds > 0)
        this.#write("pods", { ...pod, metadata: { ...meta, deletionGracePeriodSeconds: 0 } });
      this.remove("pods", key);
      return;
    }
    // Only ever shortened, as the API server does for a pod already Terminating.
    const current = meta.deletionGracePeriodSeconds;
    if (current !== undefined && current <= effective) return;
    const at = new Date(this.#clock.now() + effective * 1000).toISOString().replace(/\.\d{3}Z$/, "Z");
    this.#write("pods", {
      ...pod,
      metadata: { ...meta, deletionTimestamp: at, deletionGracePeriodSeconds: effective },
    });
  }

  #list<T extends KubeObject>(
    resource: Resource,
    namespace: string | undefined,
    labelSelector: string | undefined,
    fieldSelector: string | undefined,
    metadataOnly: boolean,
  ): ListResult<T> {
    const labels = labelMatcher(labelSelector);
    const fields = fieldMatcher(fieldSelector);
    const items = [...this.#items(resource).values()]
      .filter(
        (o) => (namespace === undefined || o.metadata?.namespace === namespace) && labels(o) && fields(o),
      )
      .map((o) => (metadataOnly ? partial(o) : clone(o)) as T);
    return { items, resourceVersion: String(this.#rv) };
  }

  #record(change: Change): void {
    this.#history.push(change);
    for (const s of this.#streams) if (s.resource === change.resource) deliver(s, change);
  }

  async *#watch<T extends KubeObject>(
    p: string,
    query: Query,
    options?: WatchOptions,
  ): AsyncGenerator<WatchEvent<T>> {
    await this.#call("watch", [p, query, options]);
    const { resource, namespace } = parsePath(p);
    const from = Number(query.resourceVersion ?? "0");
    if (from < this.#compacted) throw apiError(410, "Expired", { message: "too old resource version" });
    const labels = labelMatcher(typeof query.labelSelector === "string" ? query.labelSelector : undefined);
    const fields = fieldMatcher(typeof query.fieldSelector === "string" ? query.fieldSelector : undefined);
    const stream: Stream = {
      resource,
      matches: (o) =>
        o !== undefined &&
        (namespace === undefined || o.metadata?.namespace === namespace) &&
        labels(o) &&
        fields(o),
      metadataOnly: options?.metadataOnly === true,
      queue: [],
      wake: undefined,
      ended: false,
      error: undefined,
    };
    for (const change of this.#history)
      if (change.resource === resource && change.rv > from) deliver(stream, change);
    this.#streams.add(stream);
    const signal = options?.signal;
    const onAbort = () => stream.wake?.();
    signal?.addEventListener("abort", onAbort);
    try {
      while (!signal?.aborted) {
        // A broken watch delivers nothing more, not even what it had not sent yet.
        if (stream.error !== undefined) throw stream.error;
        const steps = this.#steps.get(resource) ?? 0;
        const next = this.#held.has(resource) && steps === 0 ? undefined : stream.queue.shift();
        if (next && this.#held.has(resource)) this.#steps.set(resource, steps - 1);
        if (next) {
          yield next as WatchEvent<T>;
          continue;
        }
        if (stream.ended) return;
        await new Promise<void>((resolve) => (stream.wake = resolve));
      }
    } finally {
      signal?.removeEventListener("abort", onAbort);
      this.#streams.delete(stream);
    }
  }
}

/** What a metadata-only list or watch returns: `PartialObjectMetadata`. */
function partial(o: KubeObject): KubeObject {
  return { apiVersion: "meta.k8s.io/v1", kind: "PartialObjectMetadata", metadata: clone(o.metadata) };
}

/** A change as this stream sees it: an object entering or leaving its selector is ADDED or DELETED. */
function deliver(stream: Stream, change: Change): void {
  const now = change.type !== "DELETED" && stream.matches(change.object);
  const before = change.type === "ADDED" ? false : stream.matches(change.old ?? change.object);
  let type: WatchEvent<KubeObject>["type"] | undefined;
  if (change.type === "DELETED") type = before ? "DELETED" : undefined;
  else if (now) type = before ? "MODIFIED" : "ADDED";
  else if (before) type = "DELETED";
  if (!type) return;
  const object = stream.metadataOnly ? partial(change.object) : clone(change.object);
  stream.queue.push({ type, object });
  stream.wake?.();
}
