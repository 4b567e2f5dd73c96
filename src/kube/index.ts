/**
 * `src/kube`: the only code in devicelet that talks to the Kubernetes API server (the seam around
 * `@kubernetes/client-node`, of which only the `ApiException` module and its undici load, unless
 * a kubeconfig needs an exec plugin, an auth provider or a proxy). Everything else depends on the {@link KubeClient} interface and the
 * wire-JSON object types, so tests can fake the API server in a few dozen lines.
 *
 *   const kube = createKubeClient({ kubeconfigPath, qps: 50, burst: 100, logger });
 *   const pods = new Informer<Pod>({ client: kube, logger, path: "/api/v1/pods", fieldSelector: "spec.nodeName!=" });
 *   void pods.start(signal);
 *   await pods.ready;
 *   await kube.patchPodStatus({ namespace, name, uid, status });
 *   try { await kube.replaceLease(lease) } catch (err) { if (isConflict(err)) reread() }
 *   const events = new EventRecorder({ client: kube, logger });
 *   kube.budget.counts();  // API calls by verb and resource
 *
 * Pieces: `budget.ts` (shared token bucket + call counters), `errors.ts` (Status reading and
 * guards), `microtime.ts` (time wire formats), `types.ts` (object types), `kubeconfig.ts` (finding
 * and checking the kubeconfig), `access.ts` (TLS and credentials), `transport.ts` (HTTP and watch
 * streams), `client.ts` (the interface), `store.ts` + `informer.ts` (list+watch
 * caches), `events.ts` (rate-limited, aggregated Events).
 */
export { RequestBudget, type RequestBudgetOptions } from "./budget.ts";
export { monotonicClock, systemClock, type Clock } from "../base/clock.ts";
export {
  kubeStatus,
  isAlreadyExists,
  isClientClosed,
  isConflict,
  isForbidden,
  isGone,
  isNotFound,
  isPermanentKubeError,
  isRetryableKubeError,
  isTooManyRequests,
  retryAfterMs,
  type KubeStatus,
} from "./errors.ts";
export { isMicroTime, normalizeMicroTime, parseKubeTime, toKubeTime, toMicroTime } from "./microtime.ts";
export {
  EVENT_COMPONENT,
  NODE_LEASE_NAMESPACE,
  createKubeClient,
  type CertificateSigningRequest,
  type SubjectAccessReviewSpec,
  type SubjectAccessReviewStatus,
  type TokenReviewStatus,
  type EventInput,
  type EventUpdate,
  type KubeClient,
  type KubeClientOptions,
  type ListOptions,
  type ListResult,
  type PodDeletion,
  type PodStatusPatch,
  type RequestOptions,
  type WatchOptions,
} from "./client.ts";
export { KubeApiError, describeRequest, type Query } from "./transport.ts";
export {
  KubeconfigError,
  kubeconfigClusterCA,
  loadKubeconfig,
  type Kubeconfig,
  type KubeconfigCluster,
  type KubeconfigUser,
  type LoadKubeconfigOptions,
} from "./kubeconfig.ts";
export { ObjectStore, includesWrite, type IndexFunction, type StoreChange } from "./store.ts";
export {
  Informer,
  dropManagedFields,
  pickFields,
  type InformerOptions,
  type ListWatchClient,
} from "./informer.ts";
export { EventRecorder, type EventRecorderOptions, type EventToRecord } from "./events.ts";
export {
  objectKey,
  toWire,
  type ConfigMap,
  type ContainerStatus,
  type CoreEvent,
  type KubeObject,
  type Lease,
  type LeaseSpec,
  type Node,
  type NodeCondition,
  type NodeStatus,
  type ObjectMeta,
  type ObjectReference,
  type OwnerReference,
  type Pod,
  type PodCondition,
  type PodStatus,
  type Secret,
  type Status,
  type Taint,
  type WatchEvent,
  type Wire,
} from "./types.ts";
