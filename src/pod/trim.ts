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
 * `uid`, `resourceVersion`, the `statefulset.kubernetes.io/pod-name` label, `status.podIP(s)` (the
 * first of `podIPs` is made the same string as `podIP`),
 * `containerID`s and the name admission gives the service account token volume.
 *
 * One value is kept as something else: a container status's `containerID` that is the one devicelet
 * reports for that pod and container is kept as {@link OWN_CONTAINER_ID}, the same string for every
 * pod, so that container statuses can be shared. Readers that hand container statuses on take the
 * ID from `containerIdOf` or the pod from `withOwnContainerIds` (status.ts), as the kubelet API's
 * `/pods` does; the comparison before a status write counts the marker as that ID, and the write
 * itself sends the ID.
 */
import { StringTable, ValueTable } from "../base/intern.ts";
import { type ObjectMeta, type Pod, pickFields } from "../kube/index.ts";
import { containerIdFor, OWN_CONTAINER_ID, POD_STATUS_FIELDS } from "./status.ts";

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
const isTokenVolume = (name: string): boolean => name.startsWith("kube-api-access-");

/** The spec's container lists, which the trim treats alike. */
const CONTAINER_LISTS = ["initContainers", "containers", "ephemeralContainers"] as const;

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
    admit: (value) => !isTokenVolume(value),
  });

/**
 * A table for whole pod values ({@link ValueTable}): what replicas repeat as a whole (resources,
 * command, env, owner, probes, a volume) and what pods that changed in the same second share
 * (conditions, container states, empty `{}`s). 4,096 entries a generation: a few dozen Deployments
 * need a few hundred; the conditions of a burst, five per second at most.
 */
export const podValueTable = (): ValueTable => new ValueTable({ generationSize: 4_096 });

/**
 * {@link trimPod} with its own tables, for tests and for a cache that wants its own. The tables
 * are only ever added to by the returned function; without `values`, nothing is shared as a whole.
 */
export function podTrimmer(strings: StringTable, values?: ValueTable): (pod: Pod) => Pod {
  return (pod) => {
    const trimmed = internPod(markOwnContainerIds(trimmedPod(pod)), strings);
    return values ? sharePodValues(trimmed, values) : trimmed;
  };
}

/**
 * The pod with only what devicelet reads: the metadata, spec and status fields listed above, plus
 * `apiVersion` and `kind`. Everything else goes, notably `managedFields`, kubectl's last-applied
 * annotation, scheduling fields (affinity, tolerations, nodeSelector, priority, …) and status
 * fields written by others (`nominatedNodeName`, `resize`, …). Status: the fields devicelet writes
 * ({@link POD_STATUS_FIELDS}); a status patch is a merge patch, so a field left out of the cache
 * is left alone on the server. One string table and one value table for the process, shared by
 * every pod cache: parts of a cached pod may be shared with other pods and are then frozen
 * ({@link sharePodValues}).
 */
export const trimPod: (pod: Pod) => Pod = podTrimmer(podStringTable(), podValueTable());

function trimmedPod(pod: Pod): Pod {
  const { apiVersion, kind } = pod;
  let metadata: ObjectMeta | undefined;
  if (pod.metadata) {
    metadata = pickFields(pod.metadata, METADATA);
    const annotations = pod.metadata.annotations;
    if (annotations && Object.hasOwn(annotations, LAST_APPLIED)) {
      const { [LAST_APPLIED]: _lastApplied, ...rest } = annotations;
      metadata.annotations = rest;
    }
  }
  const spec = pod.spec && (pickFields(pod.spec, SPEC) as PodSpec);
  const status = pod.status && pickFields(pod.status, POD_STATUS_FIELDS);
  // One literal when all five are there (every pod the API server sends): V8 then keeps the five
  // inside the object, where adding them one by one puts the fifth in a separate array.
  if (apiVersion !== undefined && kind !== undefined && metadata && spec && status)
    return { apiVersion, kind, metadata, spec, status };
  const trimmed: Pod = {};
  if (apiVersion !== undefined) trimmed.apiVersion = apiVersion;
  if (kind !== undefined) trimmed.kind = kind;
  if (metadata) trimmed.metadata = metadata;
  if (spec) trimmed.spec = spec;
  if (status) trimmed.status = status;
  return trimmed;
}

/**
 * Puts {@link OWN_CONTAINER_ID} in place of each container status's `containerID` that is the one
 * devicelet reports for the pod ({@link containerIdFor}); another ID (another writer's) is kept as
 * it is. The statuses so marked, and their list, are copies: the caller's objects are left as they
 * were (a status devicelet just wrote may be the very object an in-process watch hands back).
 * Returns `pod`, whose status is the trim's own.
 */
function markOwnContainerIds(pod: Pod): Pod {
  const status = pod.status;
  if (!status) return pod;
  const mark = (list: ContainerStatus[] | undefined) =>
    list?.some((c) => c.containerID === containerIdFor(pod, c.name))
      ? list.map((c) =>
          c.containerID === containerIdFor(pod, c.name) ? { ...c, containerID: OWN_CONTAINER_ID } : c,
        )
      : list;
  const [init, containers] = [mark(status.initContainerStatuses), mark(status.containerStatuses)];
  if (init) status.initContainerStatuses = init;
  if (containers) status.containerStatuses = containers;
  return pod;
}

/** Labels whose value is unique to the pod: a StatefulSet pod's name. */
const UNIQUE_LABELS: ReadonlySet<string> = new Set(["statefulset.kubernetes.io/pod-name"]);

type Container = PodSpec["containers"][number];
type ContainerStatus = NonNullable<NonNullable<Pod["status"]>["containerStatuses"]>[number];
type ContainerState = ContainerStatus["state"];

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
    for (const key of CONTAINER_LISTS)
      for (const container of spec[key] ?? []) internContainer(container, strings);
    strings.internIn(spec.volumes);
  }
  if (status) {
    strings.internFields(status, ["qosClass", "hostIP", "startTime", "reason", "message"]);
    strings.internIn(status.hostIPs);
    // The pod's own address, parsed twice: keep one copy.
    const { podIP } = status;
    const first = status.podIPs?.[0];
    if (first && podIP !== undefined && first.ip === podIP) first.ip = podIP;
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

type Shareable = Record<string, unknown>;

/**
 * Swaps, in place, the parts of a trimmed, interned pod that other pods repeat whole for the
 * table's shared, frozen copies; returns `pod`. A 5,000-pod heap snapshot held about 40 objects
 * per cached pod; these are the ones equal across replicas or across pods that changed in the
 * same second. Left as they are, being unique to the pod: the pod, its metadata, spec and status
 * objects themselves, its container statuses when one names the pod (another writer's container
 * ID, or a terminated state's, which stays its own too), its containers when one mounts the service
 * account token (the volume's name is the pod's own), that volume, `podIP(s)` and labels with a
 * unique value.
 */
function sharePodValues(pod: Pod, values: ValueTable): Pod {
  const share = (object: object | undefined, keys: readonly string[]) => {
    if (object === undefined || Object.isFrozen(object)) return;
    const record = object as Shareable;
    for (const key of keys) if (record[key] !== undefined) record[key] = values.share(record[key]);
  };
  const { metadata, spec, status } = pod;
  if (metadata) {
    share(metadata, ["ownerReferences", "annotations", "finalizers"]);
    const labels = metadata.labels;
    if (labels && !Object.keys(labels).some((k) => UNIQUE_LABELS.has(k))) share(metadata, ["labels"]);
  }
  if (spec) {
    share(spec, ["securityContext", "readinessGates"]);
    for (const key of CONTAINER_LISTS) {
      const list = spec[key];
      if (list === undefined || Object.isFrozen(list)) continue;
      for (const container of list) share(container, CONTAINER_VALUES);
      // Whole, list and all, when nothing in them names the pod: no service account token is
      // mounted (`automountServiceAccountToken: false`, which device workloads that never call the
      // API server can set).
      if (!list.some(mountsToken)) share(spec, [key]);
    }
    const volumes = spec.volumes;
    if (volumes && !Object.isFrozen(volumes)) {
      for (let i = 0; i < volumes.length; i++) {
        const volume = volumes[i];
        if (volume && !isTokenVolume(volume.name)) volumes[i] = values.share(volume);
      }
    }
  }
  if (status) {
    const conditions = status.conditions;
    // Each condition shared, and the list of them, by which conditions it holds: as JSON, five
    // conditions are too long to be a value of the table (88 bytes a pod, a 5,000-pod heap snapshot).
    if (conditions) status.conditions = values.shareList(conditions) as typeof conditions;
    share(status, ["hostIPs"]);
    for (const key of ["initContainerStatuses", "containerStatuses"] as const) {
      const list = status[key];
      if (list === undefined || Object.isFrozen(list)) continue;
      for (const container of list) {
        // A terminated state holding its container's ID is the pod's own: stored in the table, it
        // would only churn it, and keep something of the pod after the pod is gone.
        if (container.state?.terminated?.containerID === undefined) share(container, ["state"]);
        if (container.lastState?.terminated?.containerID === undefined) share(container, ["lastState"]);
      }
      // Whole, list and all, when no status names the pod: its ID is devicelet's own, so the
      // marker, and no terminated state holds it. Else the statuses would only churn the table.
      if (list.every(namesNoPod)) status[key] = values.shareList(list) as typeof list;
    }
  }
  return pod;
}

/** Whether a container status says nothing unique to its pod (see {@link markOwnContainerIds}). */
const namesNoPod = (c: ContainerStatus): boolean =>
  (c.containerID ?? OWN_CONTAINER_ID) === OWN_CONTAINER_ID &&
  c.state?.terminated?.containerID === undefined &&
  c.lastState?.terminated?.containerID === undefined;

const mountsToken = (container: { volumeMounts?: { name: string }[] }): boolean =>
  container.volumeMounts?.some((mount) => isTokenVolume(mount.name)) ?? false;

/** A container's parts that every replica repeats (not `volumeMounts`: the token's names the pod). */
const CONTAINER_VALUES = [
  "command",
  "args",
  "env",
  "envFrom",
  "ports",
  "resources",
  "securityContext",
  "livenessProbe",
  "readinessProbe",
  "startupProbe",
  "lifecycle",
] as const;
