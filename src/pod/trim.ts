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
 *
 * Repeated strings are kept once ({@link podStringTable}): the pods of one Deployment repeat their
 * namespace, owner, image, env, volumes, condition types and (at one-second resolution) most
 * timestamps, and JSON.parse gives each pod its own copies. The trim swaps them in place, inside
 * the kept values too, for the copies the table saw first: equal strings, so nothing a reader sees
 * changes (the workload hash included), only the heap. Left out, as they never repeat: `name`,
 * `uid`, `resourceVersion`, the `statefulset.kubernetes.io/pod-name` label, `status.podIP(s)`,
 * `containerID`s and the name admission gives the service account token volume.
 */
import { StringTable } from "../base/intern.ts";
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

/** `kube-api-access-<5 random characters>`: the token volume admission adds, one name per pod. */
const TOKEN_VOLUME_PREFIX = "kube-api-access-";

/**
 * A table for pod strings. 8,192 entries a generation: the strings 10,000 pods of a few dozen
 * Deployments on 1,000 nodes repeat (node names, owners, images, env, seconds of timestamps) fit
 * many times over; a value that stopped repeating (an old image, a deleted node) leaves after two
 * generations. At most 16,384 strings of up to 256 characters.
 */
export const podStringTable = (): StringTable =>
  new StringTable({
    generationSize: 8_192,
    maxLength: 256,
    admit: (value) => !value.startsWith(TOKEN_VOLUME_PREFIX),
  });

/**
 * {@link trimPod} with its own string table, for tests and for a cache that wants its own. The
 * table is only ever added to by the returned function.
 */
export function podTrimmer(strings: StringTable): (pod: Pod) => Pod {
  return (pod) => internPod(trimmedPod(pod), strings);
}

/**
 * The pod with only what devicelet reads: the metadata, spec and status fields listed above, plus
 * `apiVersion` and `kind`. Everything else goes, notably `managedFields`, kubectl's last-applied
 * annotation, scheduling fields (affinity, tolerations, nodeSelector, priority, …) and status
 * fields written by others (`nominatedNodeName`, `resize`, …). Status: the fields devicelet writes
 * ({@link POD_STATUS_FIELDS}); a status patch is a merge patch, so a field left out of the cache
 * is left alone on the server. One string table for the process, shared by every pod cache.
 */
export const trimPod: (pod: Pod) => Pod = podTrimmer(podStringTable());

function trimmedPod(pod: Pod): Pod {
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

/** Labels whose value is unique to the pod: a StatefulSet pod's name. */
const UNIQUE_LABELS: ReadonlySet<string> = new Set(["statefulset.kubernetes.io/pod-name"]);

type Container = PodSpec["containers"][number];
type ContainerState = NonNullable<NonNullable<Pod["status"]>["containerStatuses"]>[number]["state"];

/**
 * Swaps the repeated strings of a trimmed pod for the table's copies, in place; returns `pod`.
 * Field by field rather than a walk of the whole pod, which visits every number, boolean, short
 * string (V8 already shares those) and unique value too: measured about a fifth cheaper, for the
 * same saving. Each string looked up costs about 0.1 µs. Not visited, and so left as parsed:
 * `name`, `uid`, `resourceVersion`, `podIP(s)`, `containerID`s (unique); container ports,
 * resources, probes, lifecycle and security contexts (short values, a few per pod).
 */
function internPod(pod: Pod, strings: StringTable): Pod {
  const { metadata, spec, status } = pod;
  if (metadata) {
    strings.internFields(metadata, ["namespace", "creationTimestamp", "deletionTimestamp"]);
    strings.internValues(metadata.labels, UNIQUE_LABELS);
    strings.internValues(metadata.annotations);
    // The owning ReplicaSet's name and UID are the same for all its pods.
    for (const owner of metadata.ownerReferences ?? []) {
      strings.internFields(owner, ["apiVersion", "kind", "name", "uid"]);
    }
    strings.internIn(metadata.finalizers);
  }
  if (spec) {
    strings.internFields(spec, ["nodeName", "serviceAccountName"]);
    for (const container of spec.initContainers ?? []) internContainer(container, strings);
    for (const container of spec.containers) internContainer(container, strings);
    for (const container of spec.ephemeralContainers ?? []) internContainer(container, strings);
    strings.internIn(spec.volumes);
  }
  if (status) {
    strings.internFields(status, ["hostIP", "startTime", "reason", "message"]);
    strings.internIn(status.hostIPs);
    for (const condition of status.conditions ?? []) {
      strings.internFields(condition, ["type", "reason", "message", "lastTransitionTime", "lastProbeTime"]);
    }
    for (const list of [status.initContainerStatuses, status.containerStatuses]) {
      for (const container of list ?? []) {
        strings.internFields(container, ["name", "image", "imageID"]);
        internState(container.state, strings);
        internState(container.lastState, strings);
      }
    }
  }
  return pod;
}

function internContainer(container: Container, strings: StringTable): void {
  strings.internFields(container, [
    "name",
    "image",
    "imagePullPolicy",
    "terminationMessagePath",
    "workingDir",
  ]);
  strings.internIn(container.command);
  strings.internIn(container.args);
  for (const variable of container.env ?? []) {
    strings.internFields(variable, ["name", "value"]);
    strings.internIn(variable.valueFrom);
  }
  strings.internIn(container.envFrom);
  for (const mount of container.volumeMounts ?? []) {
    strings.internFields(mount, ["name", "mountPath", "subPath"]);
  }
}

function internState(state: ContainerState, strings: StringTable): void {
  if (state === undefined) return;
  strings.internFields(state.running, ["startedAt"]);
  strings.internFields(state.waiting, ["reason", "message"]);
  strings.internFields(state.terminated, ["reason", "message", "startedAt", "finishedAt"]);
}
