/**
 * {@link KubeClient}: everything devicelet asks of the API server, as one interface small enough
 * to fake in a test, implemented over the project's own transport by {@link createKubeClient}.
 *
 * Guarantees shared by every method:
 * - each HTTP request takes a token from the client's {@link RequestBudget} first and is counted;
 *   nothing here retries (the caller's reconcile decides, see `errors.ts`);
 * - objects are plain wire JSON (`types.ts`); returned objects belong to the caller;
 * - `get*` resolves `undefined` on 404; other failures reject with an error `errors.ts` reads;
 * - `options.signal` aborts a wait for the budget and the request itself.
 */
import type {
  V1CertificateSigningRequest,
  V1SubjectAccessReviewSpec,
  V1SubjectAccessReviewStatus,
  V1TokenReviewStatus,
} from "@kubernetes/client-node";
import { hostname } from "node:os";
import type { Logger } from "pino";
import { RequestBudget } from "./budget.ts";
import { isConflict, isNotFound, uidPreconditionAsConflict } from "./errors.ts";
import { loadKubeconfig, type Kubeconfig } from "./kubeconfig.ts";
import { normalizeMicroTime, toKubeTime } from "./microtime.ts";
import { KubeTransport, METADATA_ACCEPT, METADATA_LIST_ACCEPT, type Query } from "./transport.ts";
import type {
  ConfigMap,
  CoreEvent,
  KubeObject,
  Lease,
  LeaseSpec,
  Node,
  NodeStatus,
  ObjectMeta,
  ObjectReference,
  Pod,
  PodStatus,
  Secret,
  WatchEvent,
  Wire,
} from "./types.ts";

/** certificates.k8s.io/v1 CertificateSigningRequest; `spec.request` and `status.certificate` are base64 PEM. */
export type CertificateSigningRequest = Wire<V1CertificateSigningRequest>;
/** What a TokenReview answered: `authenticated`, `user`, `error`. */
export type TokenReviewStatus = Wire<V1TokenReviewStatus>;
export type SubjectAccessReviewSpec = Wire<V1SubjectAccessReviewSpec>;
/** What a SubjectAccessReview answered: `allowed`, `denied`, `reason`, `evaluationError`. */
export type SubjectAccessReviewStatus = Wire<V1SubjectAccessReviewStatus>;

/** Where kubelets keep their node heartbeat Leases. */
export const NODE_LEASE_NAMESPACE = "kube-node-lease";
/** `source.component` and `reportingComponent` of the Events devicelet writes. */
export const EVENT_COMPONENT = "devicelet";

export interface RequestOptions {
  readonly signal?: AbortSignal;
}

export interface ListOptions<T = KubeObject> extends RequestOptions {
  readonly labelSelector?: string;
  readonly fieldSelector?: string;
  /** Page size; lists are read in pages of this many (default 500) to spare the API server. */
  readonly limit?: number;
  /** Items as `PartialObjectMetadata` (metadata only, no data): for metadata informers. */
  readonly metadataOnly?: boolean;
  /**
   * Applied to each item as its page arrives (undefined drops it), so a large list holds only what
   * the caller keeps, not every page whole until the last one: an informer's trim and filter.
   */
  readonly each?: (item: T) => T | undefined;
}

export interface WatchOptions extends RequestOptions {
  /** Objects as `PartialObjectMetadata` (metadata only, no data): for metadata informers. */
  readonly metadataOnly?: boolean;
}

export interface ListResult<T> {
  readonly items: T[];
  /** The list's resourceVersion: watch from here to miss nothing. */
  readonly resourceVersion: string;
}

/** An object as `PartialObjectMetadata`: what a write answers when only its metadata is asked for. */
export interface ObjectMetadataOnly {
  readonly apiVersion?: string;
  readonly kind?: string;
  readonly metadata?: ObjectMeta;
}

export interface PodStatusPatch {
  readonly namespace: string;
  readonly name: string;
  /** Precondition: the write fails with a Conflict if the pod was re-created under the same name. */
  readonly uid: string;
  /** The complete status: a merge patch replaces `conditions` and `containerStatuses` whole. */
  readonly status: PodStatus;
  /** Optional optimistic lock: with it, a write based on a stale read fails with a Conflict. */
  readonly resourceVersion?: string;
}

export interface PodDeletion {
  readonly namespace: string;
  readonly name: string;
  /** Precondition: never deletes a newer pod of the same name. */
  readonly uid: string;
  /** 0 removes the object at once (the kubelet's final delete after the containers stopped). */
  readonly gracePeriodSeconds: number;
}

/** What {@link KubeClient.createEvent} needs; the client fills in names, source and times. */
export interface EventInput {
  readonly involvedObject: ObjectReference;
  readonly type: "Normal" | "Warning";
  readonly reason: string;
  readonly message: string;
  readonly count?: number;
  /** `metav1.Time` strings; default now. */
  readonly firstTimestamp?: string;
  readonly lastTimestamp?: string;
  /** Defaults to `<involvedObject.name>.<hex nanoseconds>`, as client-go names them. */
  readonly name?: string;
}

export interface EventUpdate {
  readonly namespace: string;
  readonly name: string;
  readonly count: number;
  readonly lastTimestamp: string;
  readonly message?: string;
}

export interface KubeClient {
  /** The budget of the default lane; `budget.counts()` counts the API calls of both lanes. */
  readonly budget: RequestBudget;
  /** The heartbeat lane's own budget: Leases, node registration, status and patches draw from it. */
  readonly heartbeatBudget: RequestBudget;

  /** All pods across namespaces matching the selectors, read in pages. */
  listPods(options?: ListOptions<Pod>): Promise<ListResult<Pod>>;
  /**
   * Writes pod status through the `status` subresource as a JSON merge patch carrying
   * `metadata.uid` (and `metadata.resourceVersion` when given) as preconditions. Resolves with
   * the pod's metadata as stored (its new resourceVersion): the answer is asked for as
   * `PartialObjectMetadata`, half the bytes of the whole pod, as the writer reads nothing else and
   * a burst of pod starts parses one answer a pod. A UID or resourceVersion mismatch rejects with
   * `isConflict`.
   *
   * resourceVersion is optional: on Kubernetes 1.36 a status merge patch without one (or with
   * "0") is applied unconditionally; with one it is an optimistic lock (stale → Conflict).
   */
  patchPodStatus(patch: PodStatusPatch, options?: RequestOptions): Promise<ObjectMetadataOnly>;
  /**
   * Deletes a pod with a UID precondition. Resolves `true` when the API server accepted the
   * delete, `false` when that pod (by UID) no longer exists: 404, or a different pod now holds
   * the name.
   */
  deletePod(deletion: PodDeletion, options?: RequestOptions): Promise<boolean>;

  getNode(name: string, options?: RequestOptions): Promise<Node | undefined>;
  /** Rejects with `isAlreadyExists` when it exists. */
  createNode(node: Node, options?: RequestOptions): Promise<Node>;
  /** JSON merge patch of the node object (labels, annotations, taints, spec). */
  patchNode(name: string, mergePatch: object, options?: RequestOptions): Promise<Node>;
  /**
   * JSON merge patch of `nodes/status`: lists (`conditions`, `addresses`) are replaced whole.
   * `labels` go in the same patch (null removes one): the status subresource of a Node takes its
   * labels, so a label that follows the status costs no write of its own.
   */
  patchNodeStatus(
    name: string,
    status: NodeStatus,
    options?: RequestOptions & { readonly labels?: Readonly<Record<string, string | null>> },
  ): Promise<Node>;
  listNodes(labelSelector?: string, options?: RequestOptions): Promise<ListResult<Node>>;
  /**
   * Deletes a Node with a UID precondition (its Lease, owned by it, is garbage-collected with it).
   * Resolves `false` when that Node (by UID) no longer exists.
   */
  deleteNode(name: string, uid: string, options?: RequestOptions): Promise<boolean>;

  /** `namespace` defaults to {@link NODE_LEASE_NAMESPACE}. */
  getLease(name: string, namespace?: string, options?: RequestOptions): Promise<Lease | undefined>;
  /**
   * Creates a Lease in `metadata.namespace` (default kube-node-lease). `renewTime` and
   * `acquireTime` are sent as six-digit MicroTime whatever precision they came in.
   */
  createLease(lease: Lease, options?: RequestOptions): Promise<Lease>;
  /**
   * Replaces a Lease (PUT). `metadata.resourceVersion` is required: a stale one rejects with
   * `isConflict`, so two writers never both think they renewed.
   */
  replaceLease(lease: Lease, options?: RequestOptions): Promise<Lease>;
  /**
   * Sets fields of a Lease's spec by JSON merge patch, without a resourceVersion: for a Lease only
   * its one writer touches (a node's heartbeat), where a precondition only costs a re-read each
   * time a write timed out but landed. `renewTime` and `acquireTime` are sent as MicroTime.
   * Rejects with `isNotFound` when the Lease does not exist.
   */
  patchLeaseSpec(name: string, namespace: string, spec: LeaseSpec, options?: RequestOptions): Promise<Lease>;
  /** The Leases in `namespace` matching `labelSelector`, read in pages on the heartbeat lane. */
  listLeases(namespace: string, labelSelector?: string, options?: RequestOptions): Promise<ListResult<Lease>>;
  /**
   * Deletes a Lease, with a resourceVersion precondition when given (so a Lease renewed since it
   * was read is kept). Resolves `false` when it was not deleted: 404, or the precondition failed.
   */
  deleteLease(
    name: string,
    namespace: string,
    resourceVersion?: string,
    options?: RequestOptions,
  ): Promise<boolean>;

  getConfigMap(namespace: string, name: string, options?: RequestOptions): Promise<ConfigMap | undefined>;
  getSecret(namespace: string, name: string, options?: RequestOptions): Promise<Secret | undefined>;
  /** The Namespace object (only its metadata matters to devicelet: does it exist). */
  getNamespace(name: string, options?: RequestOptions): Promise<KubeObject | undefined>;
  /** Merges `data` into a ConfigMap, creating it (with `labels`) when missing. */
  upsertConfigMap(
    namespace: string,
    name: string,
    data: Readonly<Record<string, string>>,
    labels?: Readonly<Record<string, string>>,
    options?: RequestOptions,
  ): Promise<ConfigMap>;
  /**
   * Writes a ConfigMap conditionally (compare-and-swap). With `metadata.resourceVersion` it
   * replaces the object (PUT): a stale resourceVersion rejects with `isConflict`. Without one it
   * creates the object (POST): one that exists already rejects with `isAlreadyExists`.
   */
  replaceConfigMap(configMap: ConfigMap, options?: RequestOptions): Promise<ConfigMap>;
  /** Deletes a ConfigMap; resolves `false` when there was none. */
  deleteConfigMap(namespace: string, name: string, options?: RequestOptions): Promise<boolean>;

  /**
   * Creates a core/v1 Event in the involved object's namespace (`default` for cluster-scoped
   * objects) with `source.component` and `reportingComponent` `devicelet`. Prefer
   * `EventRecorder`, which rate-limits and aggregates.
   */
  createEvent(event: EventInput, options?: RequestOptions): Promise<CoreEvent>;
  /** Bumps an existing Event's count (merge patch). 404 when it expired. */
  patchEvent(update: EventUpdate, options?: RequestOptions): Promise<CoreEvent>;

  /** Creates a Secret (POST); one that exists already rejects with `isAlreadyExists`. */
  createSecret(secret: Secret, options?: RequestOptions): Promise<Secret>;
  /** Replaces a Secret (PUT); `metadata.resourceVersion` is required, a stale one rejects with `isConflict`. */
  replaceSecret(secret: Secret, options?: RequestOptions): Promise<Secret>;

  /**
   * Asks the API server who a bearer token belongs to (authentication.k8s.io/v1 TokenReview, no
   * audiences: the API server's own), as a kubelet does for callers of its API. Never log `token`.
   */
  createTokenReview(token: string, options?: RequestOptions): Promise<TokenReviewStatus>;
  /** Asks the API server whether a user may do something (authorization.k8s.io/v1 SubjectAccessReview). */
  createSubjectAccessReview(
    spec: SubjectAccessReviewSpec,
    options?: RequestOptions,
  ): Promise<SubjectAccessReviewStatus>;

  /** Creates a certificates.k8s.io/v1 CertificateSigningRequest (`metadata.generateName` works). */
  createCertificateSigningRequest(
    csr: CertificateSigningRequest,
    options?: RequestOptions,
  ): Promise<CertificateSigningRequest>;
  getCertificateSigningRequest(
    name: string,
    options?: RequestOptions,
  ): Promise<CertificateSigningRequest | undefined>;
  /**
   * Approves a CSR through its `approval` subresource: reads it, adds an `Approved` condition and
   * writes it back (a concurrent change rejects with `isConflict`). Needs `update` on
   * `certificatesigningrequests/approval` and `approve` on the signer (`signers` resource).
   */
  approveCertificateSigningRequest(
    name: string,
    condition: { readonly reason: string; readonly message: string },
    options?: RequestOptions,
  ): Promise<CertificateSigningRequest>;

  /** Lists any collection path (e.g. `/api/v1/pods`) in pages; for informers. */
  list<T extends KubeObject>(path: string, query?: Query, options?: ListOptions<T>): Promise<ListResult<T>>;
  /** Watches any collection path from `query.resourceVersion`; see `KubeTransport.watch`. */
  watch<T extends KubeObject>(
    path: string,
    query: Query,
    options?: WatchOptions,
  ): AsyncIterable<WatchEvent<T>>;

  /** Releases connections. */
  close(): Promise<void>;
}

export interface KubeClientOptions {
  /** A kubeconfig file; default: `$KUBECONFIG`, else `~/.kube/config`, else the in-cluster service account. */
  readonly kubeconfigPath?: string;
  /** Sustained API requests per second for the whole process. */
  readonly qps: number;
  /** Requests allowed in a burst. */
  readonly burst: number;
  readonly logger: Logger;
  /** Sent as `User-Agent`; default `devicelet`. */
  readonly userAgent?: string;
  /** `reportingInstance` of Events (which replica wrote them); default the host name. */
  readonly instance?: string;
  /** Shares a budget with another client; `qps`/`burst` are then ignored. */
  readonly budget?: RequestBudget;
  /**
   * The heartbeat lane (Lease reads and writes, node status): its own token bucket, so node
   * heartbeats never queue behind pod status, reads and Events. Default: qps 200, burst 400.
   */
  readonly heartbeat?: { readonly qps: number; readonly burst: number };
  /** Timeout of every request but watches; default 30 s. */
  readonly requestTimeoutMs?: number;
  /** Timeout of heartbeat-lane requests; default 10 s (about a lease renew interval). */
  readonly heartbeatTimeoutMs?: number;
  /** An already loaded kubeconfig (tests); wins over `kubeconfigPath`. */
  readonly kubeconfig?: Kubeconfig;
}

const enc = encodeURIComponent;
const ns = (namespace: string) => `/api/v1/namespaces/${enc(namespace)}`;
const leases = (namespace: string) => `/apis/coordination.k8s.io/v1/namespaces/${enc(namespace)}/leases`;
const MERGE = "application/merge-patch+json";
const CSRS = "/apis/certificates.k8s.io/v1/certificatesigningrequests";

/**
 * Creates the client; synchronous, no request is made until the first call. A kubeconfig that
 * cannot be used throws a `KubeconfigError` here.
 */
export function createKubeClient(options: KubeClientOptions): KubeClient {
  const kubeconfig = options.kubeconfig ?? loadKubeconfig({ path: options.kubeconfigPath });
  const budget = options.budget ?? new RequestBudget({ qps: options.qps, burst: options.burst });
  const log = options.logger.child({ component: "kube" });
  const heartbeatBudget = new RequestBudget(options.heartbeat ?? { qps: 200, burst: 400 });
  const http = new KubeTransport({
    kubeconfig,
    budget,
    heartbeatBudget,
    ...(options.requestTimeoutMs === undefined ? {} : { requestTimeoutMs: options.requestTimeoutMs }),
    logger: log,
    userAgent: options.userAgent ?? "devicelet",
  });

  const instance = (options.instance ?? hostname()).slice(0, 128);
  let eventSeq = 0;

  const get = async <T>(path: string, o?: RequestOptions): Promise<T | undefined> => {
    try {
      return await http.request<T>({ method: "GET", path, signal: o?.signal });
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  };
  const patch = <T>(path: string, body: object, o?: RequestOptions & { accept?: string }) =>
    http.request<T>({
      method: "PATCH",
      path,
      body,
      contentType: MERGE,
      signal: o?.signal,
      accept: o?.accept,
    });
  const heartbeat = { lane: "heartbeat", timeoutMs: options.heartbeatTimeoutMs ?? 10_000 } as const;
  const nodeWrite = { ...heartbeat, nodeWrite: true } as const;

  const list = async <T extends KubeObject>(
    path: string,
    query?: Query,
    o?: ListOptions<T>,
    lane?: typeof heartbeat,
  ): Promise<ListResult<T>> => {
    const items: T[] = [];
    let resourceVersion = "";
    let cont: string | undefined;
    do {
      const page = await http.request<{
        items?: T[] | null;
        metadata?: { resourceVersion?: string; continue?: string };
      }>({
        method: "GET",
        path,
        query: {
          ...query,
          labelSelector: o?.labelSelector ?? query?.labelSelector,
          fieldSelector: o?.fieldSelector ?? query?.fieldSelector,
          limit: o?.limit ?? 500,
          continue: cont,
        },
        signal: o?.signal,
        ...(o?.metadataOnly ? { accept: METADATA_LIST_ACCEPT } : {}),
        ...lane,
      });
      const each = o?.each;
      for (const item of page.items ?? []) {
        const kept = each ? each(item) : item;
        if (kept !== undefined) items.push(kept);
      }
      // Every page of one list reports the snapshot's resourceVersion.
      resourceVersion = page.metadata?.resourceVersion ?? resourceVersion;
      cont = page.metadata?.continue || undefined;
    } while (cont);
    return { items, resourceVersion };
  };

  /** The spec with `renewTime` and `acquireTime` as six-digit MicroTime. */
  const leaseSpecBody = (lease: LeaseSpec): LeaseSpec => {
    const spec = { ...lease };
    const renewTime = normalizeMicroTime(spec.renewTime);
    const acquireTime = normalizeMicroTime(spec.acquireTime);
    if (renewTime !== undefined) spec.renewTime = renewTime;
    if (acquireTime !== undefined) spec.acquireTime = acquireTime;
    return spec;
  };
  const leaseBody = (lease: Lease): Lease =>
    lease.spec
      ? { apiVersion: "coordination.k8s.io/v1", kind: "Lease", ...lease, spec: leaseSpecBody(lease.spec) }
      : lease;

  return {
    budget,
    heartbeatBudget,

    listPods: (o) => list<Pod>("/api/v1/pods", undefined, o),
    patchPodStatus: async (p, o) => {
      const metadata: { uid: string; resourceVersion?: string } = { uid: p.uid };
      if (p.resourceVersion !== undefined) metadata.resourceVersion = p.resourceVersion;
      try {
        return await patch<ObjectMetadataOnly>(
          `${ns(p.namespace)}/pods/${enc(p.name)}/status`,
          { metadata, status: p.status },
          { ...o, accept: METADATA_ACCEPT },
        );
      } catch (err) {
        throw uidPreconditionAsConflict(err, `pod ${p.namespace}/${p.name}`, p.uid);
      }
    },
    deletePod: async (d, o) => {
      try {
        await http.request({
          method: "DELETE",
          path: `${ns(d.namespace)}/pods/${enc(d.name)}`,
          body: {
            apiVersion: "v1",
            kind: "DeleteOptions",
            gracePeriodSeconds: d.gracePeriodSeconds,
            preconditions: { uid: d.uid },
          },
          signal: o?.signal,
        });
        return true;
      } catch (err) {
        // 404: already gone. 409: the UID precondition failed, so our pod is gone too.
        if (isNotFound(err) || isConflict(err)) return false;
        throw err;
      }
    },

    getNode: (name, o) => get<Node>(`/api/v1/nodes/${enc(name)}`, o),
    deleteNode: async (name, uid, o) => {
      try {
        await http.request({
          method: "DELETE",
          path: `/api/v1/nodes/${enc(name)}`,
          body: { apiVersion: "v1", kind: "DeleteOptions", preconditions: { uid } },
          signal: o?.signal,
        });
        return true;
      } catch (err) {
        if (isNotFound(err) || isConflict(err)) return false;
        throw err;
      }
    },
    createNode: (node, o) =>
      http.request<Node>({
        method: "POST",
        path: "/api/v1/nodes",
        body: { apiVersion: "v1", kind: "Node", ...node },
        signal: o?.signal,
        ...nodeWrite,
      }),
    patchNode: (name, mergePatch, o) =>
      http.request<Node>({
        method: "PATCH",
        path: `/api/v1/nodes/${enc(name)}`,
        body: mergePatch,
        contentType: MERGE,
        signal: o?.signal,
        ...nodeWrite,
      }),
    patchNodeStatus: (name, status, o) =>
      http.request<Node>({
        method: "PATCH",
        path: `/api/v1/nodes/${enc(name)}/status`,
        body: o?.labels ? { metadata: { labels: o.labels }, status } : { status },
        contentType: MERGE,
        signal: o?.signal,
        ...nodeWrite,
      }),
    listNodes: (labelSelector, o) => list<Node>("/api/v1/nodes", undefined, { ...o, labelSelector }),

    getLease: async (name, namespace = NODE_LEASE_NAMESPACE, o) => {
      try {
        return await http.request<Lease>({
          method: "GET",
          path: `${leases(namespace)}/${enc(name)}`,
          signal: o?.signal,
          ...heartbeat,
        });
      } catch (err) {
        if (isNotFound(err)) return undefined;
        throw err;
      }
    },
    createLease: (lease, o) =>
      http.request<Lease>({
        method: "POST",
        path: leases(lease.metadata?.namespace ?? NODE_LEASE_NAMESPACE),
        body: leaseBody(lease),
        signal: o?.signal,
        ...heartbeat,
      }),
    replaceLease: (lease, o) => {
      const name = lease.metadata?.name;
      if (!name || !lease.metadata?.resourceVersion) {
        return Promise.reject(new TypeError("replaceLease needs metadata.name and metadata.resourceVersion"));
      }
      return http.request<Lease>({
        method: "PUT",
        path: `${leases(lease.metadata.namespace ?? NODE_LEASE_NAMESPACE)}/${enc(name)}`,
        body: leaseBody(lease),
        signal: o?.signal,
        ...heartbeat,
      });
    },

    patchLeaseSpec: (name, namespace, spec, o) =>
      http.request<Lease>({
        method: "PATCH",
        path: `${leases(namespace)}/${enc(name)}`,
        body: { spec: leaseSpecBody(spec) },
        contentType: MERGE,
        signal: o?.signal,
        ...heartbeat,
      }),
    listLeases: (namespace, labelSelector, o) =>
      list<Lease>(leases(namespace), undefined, { ...o, labelSelector }, heartbeat),
    deleteLease: async (name, namespace, resourceVersion, o) => {
      try {
        await http.request({
          method: "DELETE",
          path: `${leases(namespace)}/${enc(name)}`,
          body: {
            apiVersion: "v1",
            kind: "DeleteOptions",
            ...(resourceVersion === undefined ? {} : { preconditions: { resourceVersion } }),
          },
          signal: o?.signal,
          ...heartbeat,
        });
        return true;
      } catch (err) {
        // 404: already gone. 409: the precondition failed (renewed or re-created since read).
        if (isNotFound(err) || isConflict(err)) return false;
        throw err;
      }
    },

    getConfigMap: (namespace, name, o) => get<ConfigMap>(`${ns(namespace)}/configmaps/${enc(name)}`, o),
    getSecret: (namespace, name, o) => get<Secret>(`${ns(namespace)}/secrets/${enc(name)}`, o),
    getNamespace: (name, o) => get<KubeObject>(ns(name), o),
    replaceConfigMap: (cm, o) => {
      const { name, namespace, resourceVersion } = cm.metadata ?? {};
      if (!name || !namespace)
        return Promise.reject(new TypeError("replaceConfigMap needs metadata.name and metadata.namespace"));
      const body = { ...cm, apiVersion: "v1", kind: "ConfigMap" };
      return resourceVersion
        ? http.request<ConfigMap>({
            method: "PUT",
            path: `${ns(namespace)}/configmaps/${enc(name)}`,
            body,
            signal: o?.signal,
          })
        : http.request<ConfigMap>({
            method: "POST",
            path: `${ns(namespace)}/configmaps`,
            body,
            signal: o?.signal,
          });
    },
    deleteConfigMap: async (namespace, name, o) => {
      try {
        await http.request({
          method: "DELETE",
          path: `${ns(namespace)}/configmaps/${enc(name)}`,
          signal: o?.signal,
        });
        return true;
      } catch (err) {
        if (isNotFound(err)) return false;
        throw err;
      }
    },
    upsertConfigMap: async (namespace, name, data, labels, o) => {
      try {
        return await patch<ConfigMap>(`${ns(namespace)}/configmaps/${enc(name)}`, { data }, o);
      } catch (err) {
        if (!isNotFound(err)) throw err;
      }
      return http.request<ConfigMap>({
        method: "POST",
        path: `${ns(namespace)}/configmaps`,
        body: { apiVersion: "v1", kind: "ConfigMap", metadata: { name, namespace, labels }, data },
        signal: o?.signal,
      });
    },

    createEvent: (e, o) => {
      const now = Date.now();
      const namespace = e.involvedObject.namespace || "default";
      // client-go's `<name>.<hex UnixNano>`; the sequence keeps two events in one millisecond apart.
      const nanos = BigInt(now) * 1_000_000n + BigInt(eventSeq++ % 1_000_000);
      const name = e.name ?? `${e.involvedObject.name ?? "object"}.${nanos.toString(16)}`;
      const body: CoreEvent = {
        apiVersion: "v1",
        kind: "Event",
        metadata: { name, namespace },
        involvedObject: e.involvedObject,
        type: e.type,
        reason: e.reason,
        message: e.message,
        count: e.count ?? 1,
        firstTimestamp: e.firstTimestamp ?? toKubeTime(now),
        lastTimestamp: e.lastTimestamp ?? toKubeTime(now),
        source: { component: EVENT_COMPONENT },
        reportingComponent: EVENT_COMPONENT,
        reportingInstance: instance,
      };
      return http.request<CoreEvent>({
        method: "POST",
        path: `${ns(namespace)}/events`,
        body,
        signal: o?.signal,
      });
    },
    patchEvent: (u, o) => {
      const body: { count: number; lastTimestamp: string; message?: string } = {
        count: u.count,
        lastTimestamp: u.lastTimestamp,
      };
      if (u.message !== undefined) body.message = u.message;
      return patch<CoreEvent>(`${ns(u.namespace)}/events/${enc(u.name)}`, body, o);
    },

    createSecret: (secret, o) =>
      http.request<Secret>({
        method: "POST",
        path: `${ns(secret.metadata?.namespace ?? "default")}/secrets`,
        body: { ...secret, apiVersion: "v1", kind: "Secret" },
        signal: o?.signal,
      }),
    replaceSecret: (secret, o) => {
      const { name, namespace, resourceVersion } = secret.metadata ?? {};
      if (!name || !namespace || !resourceVersion)
        return Promise.reject(
          new TypeError("replaceSecret needs metadata.name, metadata.namespace and metadata.resourceVersion"),
        );
      return http.request<Secret>({
        method: "PUT",
        path: `${ns(namespace)}/secrets/${enc(name)}`,
        body: { ...secret, apiVersion: "v1", kind: "Secret" },
        signal: o?.signal,
      });
    },

    createTokenReview: async (token, o) => {
      const review = await http.request<{ status?: TokenReviewStatus }>({
        method: "POST",
        path: "/apis/authentication.k8s.io/v1/tokenreviews",
        body: { apiVersion: "authentication.k8s.io/v1", kind: "TokenReview", spec: { token } },
        signal: o?.signal,
      });
      return review.status ?? {};
    },
    createSubjectAccessReview: async (spec, o) => {
      const review = await http.request<{ status?: SubjectAccessReviewStatus }>({
        method: "POST",
        path: "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        body: { apiVersion: "authorization.k8s.io/v1", kind: "SubjectAccessReview", spec },
        signal: o?.signal,
      });
      return review.status ?? { allowed: false };
    },

    createCertificateSigningRequest: (csr, o) =>
      http.request<CertificateSigningRequest>({
        method: "POST",
        path: CSRS,
        body: { ...csr, apiVersion: "certificates.k8s.io/v1", kind: "CertificateSigningRequest" },
        signal: o?.signal,
      }),
    getCertificateSigningRequest: (name, o) => get<CertificateSigningRequest>(`${CSRS}/${enc(name)}`, o),
    approveCertificateSigningRequest: async (name, condition, o) => {
      const csr = await http.request<CertificateSigningRequest>({
        method: "GET",
        path: `${CSRS}/${enc(name)}`,
        signal: o?.signal,
      });
      const now = toKubeTime();
      const conditions = [
        ...(csr.status?.conditions ?? []).filter((c) => c.type !== "Approved"),
        { type: "Approved", status: "True", ...condition, lastUpdateTime: now, lastTransitionTime: now },
      ];
      return http.request<CertificateSigningRequest>({
        method: "PUT",
        path: `${CSRS}/${enc(name)}/approval`,
        body: { ...csr, status: { ...csr.status, conditions } },
        signal: o?.signal,
      });
    },

    list,
    watch: <T extends KubeObject>(path: string, query: Query, o?: WatchOptions) =>
      http.watch<T>({
        path,
        query,
        signal: o?.signal,
        ...(o?.metadataOnly ? { accept: METADATA_ACCEPT } : {}),
      }),

    close: () => http.close(),
  };
}
