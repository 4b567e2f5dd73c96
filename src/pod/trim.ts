/**
 * {@link trimPod}: a pod as the pod cache keeps it, with only the fields devicelet reads. The
 * informer trims every pod on arrival, so `managedFields` (often the largest part), scheduling
 * fields and status written by others never sit in memory.
 *
 *   new Informer<Pod>({ ..., trim: trimPod });
 *
 * A whitelist: a field is kept only when something reads it, and each is listed below with its
 * readers. Code that starts reading another pod field must add it here, or it reads `undefined`
 * from the cache. What is kept is kept whole (a container, a volume, a condition), so the feature
 * checks, the translation and its hash see exactly what they saw before trimming, and the status
 * builders keep whatever they carry over. Returns a new object sharing the kept values with the
 * input.
 */
import { type ObjectMeta, type Pod, pickFields } from "../kube/index.ts";
import { POD_STATUS_FIELDS } from "./status.ts";

type PodSpec = NonNullable<Pod["spec"]>;

/** kubectl's copy of the whole object (as the informer's default trim, it is never kept). */
const LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration";

const METADATA = [
  // Keys, Events, provider refs, status preconditions; the Workload; downward API (`metadata.*`).
  "name",
  "namespace",
  "uid",
  // The store's replay check; status-writer.ts compares it with the version of its last write.
  "resourceVersion",
  // Pod start latency (src/metrics) and the stats summary's pod start (src/kubelet/summary.ts).
  "creationTimestamp",
  // Deletion as a kubelet does it (deletion.ts): grace periods and pending finalizers.
  "deletionTimestamp",
  "deletionGracePeriodSeconds",
  "finalizers",
  // The Workload (so its hash) and the downward API carry them all.
  "labels",
  "annotations",
  // Not read by devicelet itself: kept for the kubelet API's `/pods`, where agents that name
  // logs and metrics after the owning workload look for it.
  "ownerReferences",
] as const satisfies readonly (keyof ObjectMeta)[];

const SPEC = [
  // Routing to the node's device; the kubelet API's pod lookups; downward API.
  "nodeName",
  // Feature checks (src/workload/features.ts, security.ts), the translation and its hash, pod
  // status (one status per container), the kubelet API (containers by name), stats summary.
  "containers",
  "initContainers",
  "ephemeralContainers",
  "volumes",
  "securityContext",
  // Feature checks: HostNetwork; refused outright: hostPID, hostIPC, resourceClaims.
  "hostNetwork",
  "hostPID",
  "hostIPC",
  "resourceClaims",
  // The Workload (so its hash).
  "restartPolicy",
  "terminationGracePeriodSeconds",
  // Downward API (`spec.serviceAccountName`).
  "serviceAccountName",
  // The Ready condition (status.ts).
  "readinessGates",
] as const satisfies readonly (keyof PodSpec)[];

/**
 * The pod with only what devicelet reads: the metadata, spec and status fields listed above, plus
 * `apiVersion` and `kind`. Everything else goes, notably `managedFields`, kubectl's last-applied
 * annotation, scheduling fields (affinity, tolerations, nodeSelector, priority, …) and status
 * fields written by others (`nominatedNodeName`, `resize`, …). Status: the fields devicelet writes
 * ({@link POD_STATUS_FIELDS}); a status patch is a merge patch, so a field left out of the cache
 * is left alone on the server.
 */
export function trimPod(pod: Pod): Pod {
  const trimmed: Pod = {};
  if (pod.apiVersion !== undefined) trimmed.apiVersion = pod.apiVersion;
  if (pod.kind !== undefined) trimmed.kind = pod.kind;
  if (pod.metadata) {
    const metadata = pickFields(pod.metadata, METADATA);
    const annotations = pod.metadata.annotations;
    if (annotations && Object.hasOwn(annotations, LAST_APPLIED)) {
      const { [LAST_APPLIED]: _lastApplied, ...rest } = annotations;
      metadata.annotations = rest;
    }
    trimmed.metadata = metadata;
  }
  if (pod.spec) trimmed.spec = pickFields(pod.spec, SPEC) as PodSpec;
  if (pod.status) trimmed.status = pickFields(pod.status, POD_STATUS_FIELDS);
  return trimmed;
}
