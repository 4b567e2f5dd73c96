/**
 * Pod status from what the device reports: phase, conditions, container statuses, IPs and times,
 * as the kubelet would write them (pkg/kubelet/status, kubelet_pods.go `generateAPIPodStatus`).
 *
 * The device is the source of truth: a pod is Running only when the provider's
 * {@link WorkloadStatus} says so, and Pending while there is none. Every spec container gets a
 * status, in spec order. A condition's `lastTransitionTime` moves only when its status flips.
 * Results are new plain objects with `Date` times; inputs are not touched. They are safe to send
 * as a JSON merge patch: `reason`, `message` and `initContainerStatuses` are always present (`""`
 * and `[]` when there is nothing), so an earlier value is cleared rather than left behind.
 *
 * ```ts
 * const next = buildPodStatus({ pod, workload, podIP, hostIP, now: new Date() });
 * if (statusChanged(pod.status, next, pod)) await kube.patchPodStatus({ ..., status: next });
 * ```
 */
import type {
  V1ContainerState,
  V1ContainerStatus,
  V1Pod,
  V1PodCondition,
  V1PodStatus,
} from "../kube/types.ts";
import { isIP } from "node:net";
import type { AppState, AppStatus, WorkloadStatus } from "../provider/types.ts";
import { sameNormalisedField, toDate } from "../base/canonical.ts";
import { parseQuantity } from "../base/quantity.ts";
import type { Model, Plain } from "../workload/shape.ts";

export const PodConditionType = {
  PodScheduled: "PodScheduled",
  Initialized: "Initialized",
  ContainersReady: "ContainersReady",
  Ready: "Ready",
  /** The device's presence, as last reported with the workload (or known from the node). */
  DeviceConnected: "devicelet.dev/DeviceConnected",
  /**
   * On a Terminating pod: False (`WaitingForDevice`) while the device has not confirmed that the
   * pod's apps stopped. The pod object stays until it has, as with a kubelet (see `controller.ts`).
   */
  StopConfirmed: "devicelet.dev/StopConfirmed",
} as const;

/** The status fields these builders own; everything else in a pod's status is left alone. */
export const POD_STATUS_FIELDS = [
  "phase",
  "reason",
  "message",
  "conditions",
  "containerStatuses",
  "initContainerStatuses",
  "hostIP",
  "hostIPs",
  "podIP",
  "podIPs",
  "startTime",
  "qosClass",
] as const;

export interface BuildPodStatusInput {
  readonly pod: Model<V1Pod>;
  /** The provider's status for this pod; ignored when it belongs to another pod uid. */
  readonly workload?: WorkloadStatus | undefined;
  /** Why containers without an app status wait, e.g. `CreateContainerConfigError` and its message. */
  readonly pending?: { readonly reason: string; readonly message: string } | undefined;
  /** Used when the workload reports no address of its own, or one that is not an IP. */
  readonly podIP: string;
  readonly hostIP: string;
  /** Device presence known to the engine; wins over `workload.deviceConnected` when given. */
  readonly deviceConnected?: boolean | undefined;
  /**
   * The transport (broker) as the engine sees it. While it is unreachable nobody can know whether
   * the device is there: `devicelet.dev/DeviceConnected` is Unknown with reason
   * `TransportDisconnected`; everything else keeps what the device last reported.
   */
  readonly transport?: { readonly connected: boolean; readonly message: string } | undefined;
  readonly now: Date;
}

type Status = Plain<V1PodStatus>;
type Condition = Plain<V1PodCondition>;
type ContainerStatus = Plain<V1ContainerStatus>;
type ContainerState = Plain<V1ContainerState>;
type CurrentContainer = Model<V1ContainerStatus>;

const TERMINAL = new Set(["Succeeded", "Failed"]);

/** An address the API server takes as a pod IP: IPv4 or IPv6, without an IPv6 zone. */
const isUsableIP = (address: string): boolean => isIP(address) !== 0 && !address.includes("%");

/** `device://<namespace>/<pod>/<container>`: the containerID devicelet reports. */
export const containerIdFor = (pod: Model<V1Pod>, container: string): string =>
  `device://${pod.metadata?.namespace ?? ""}/${pod.metadata?.name ?? ""}/${container}`;

/**
 * What the pod cache keeps in place of a container status's `containerID` when it is the one
 * devicelet reports for that pod and container ({@link containerIdFor}): one string for every
 * pod, so the container statuses of replicas that changed in the same second can be one shared
 * value (trim.ts; the ID alone was 56 bytes a pod, and it kept the status and its list, 152 more,
 * the pod's own). Not an ID: whoever hands a cached pod's container statuses on takes the ID from
 * {@link containerIdOf}, or the pod from {@link withOwnContainerIds}: the kubelet API does, and
 * so does the status writer before every write, which a Terminating pod's status, made from the
 * cached one, needs.
 */
export const OWN_CONTAINER_ID = "(own container ID)";

/** A cached container status's `containerID` as the API server has it ({@link OWN_CONTAINER_ID}). */
export const containerIdOf = (
  pod: Model<V1Pod>,
  status: { readonly name: string; readonly containerID?: string | undefined },
): string | undefined =>
  status.containerID === OWN_CONTAINER_ID ? containerIdFor(pod, status.name) : status.containerID;

const hasOwnId = (statuses: readonly { containerID?: string | undefined }[] | undefined): boolean =>
  statuses?.some((c) => c.containerID === OWN_CONTAINER_ID) ?? false;

/**
 * A cached pod as the API server has it, each {@link OWN_CONTAINER_ID} replaced by the ID: for
 * serving the pod whole (the kubelet API's `/pods`). `pod` itself when it holds none.
 */
export function withOwnContainerIds<P extends Model<V1Pod>>(pod: P): P {
  const status = pod.status;
  if (!status || (!hasOwnId(status.containerStatuses) && !hasOwnId(status.initContainerStatuses))) return pod;
  const restore = (list: typeof status.containerStatuses) =>
    list?.map((c) =>
      c.containerID === OWN_CONTAINER_ID ? { ...c, containerID: containerIdFor(pod, c.name) } : c,
    );
  return {
    ...pod,
    status: {
      ...status,
      ...(status.containerStatuses ? { containerStatuses: restore(status.containerStatuses) } : {}),
      ...(status.initContainerStatuses
        ? { initContainerStatuses: restore(status.initContainerStatuses) }
        : {}),
    },
  };
}

function mapState(state: AppState, containerID: string): ContainerState {
  switch (state.kind) {
    case "waiting":
      return { waiting: withMessage({ reason: state.reason }, state.message) };
    case "running":
      return { running: { startedAt: state.startedAt } };
    case "terminated":
      return {
        terminated: withMessage(
          {
            exitCode: state.exitCode,
            reason: state.reason,
            ...(state.startedAt ? { startedAt: state.startedAt } : {}),
            finishedAt: state.finishedAt,
            containerID,
          },
          state.message,
        ),
      };
  }
}

const withMessage = <T extends object>(o: T, message: string | undefined): T & { message?: string } =>
  message ? { ...o, message } : o;

/** A previous container state with its times as Dates (they may be wire strings). */
function reviveState(state: Model<V1ContainerState> | undefined): ContainerState {
  if (state?.running) return { running: { startedAt: toDate(state.running.startedAt) } };
  if (state?.terminated) {
    const t = state.terminated;
    return {
      terminated: {
        ...t,
        startedAt: toDate(t.startedAt),
        finishedAt: toDate(t.finishedAt),
      },
    };
  }
  if (state?.waiting) return { waiting: { ...state.waiting } };
  return {};
}

/**
 * The state of a container no app status covers once the pod is over: a container last seen
 * running becomes terminated `ContainerStatusUnknown` (exit 137, as the kubelet reports it), a
 * terminated one stays as it was, one that never ran waits with `fallback`.
 */
function terminalState(
  previous: CurrentContainer | undefined,
  fallback: { reason: string; message: string },
) {
  const prev = reviveState(previous?.state);
  if (prev.running)
    return {
      terminated: {
        exitCode: 137,
        reason: "ContainerStatusUnknown",
        message: "The container could not be located when the pod was terminated",
        startedAt: prev.running.startedAt,
      },
    };
  if (prev.terminated) return prev;
  return { waiting: withMessage({ reason: fallback.reason }, fallback.message) };
}

function containerStatus(
  pod: Model<V1Pod>,
  name: string,
  specImage: string,
  app: AppStatus | undefined,
  missing: (previous: CurrentContainer | undefined) => ContainerState,
  previous: CurrentContainer | undefined,
): ContainerStatus {
  if (app === undefined) {
    return {
      name,
      image: specImage,
      imageID: "",
      state: missing(previous),
      lastState: reviveState(previous?.lastState),
      ready: false,
      started: false,
      restartCount: previous?.restartCount ?? 0,
    };
  }
  const containerID = containerIdFor(pod, name);
  const image = app.image || specImage;
  const running = app.state.kind === "running";
  return {
    name,
    image,
    imageID: `device://${image}`,
    containerID,
    state: mapState(app.state, containerID),
    lastState: app.lastState ? mapState(app.lastState, containerID) : {},
    ready: running && app.ready,
    started: running,
    restartCount: Number.isSafeInteger(app.restartCount) && app.restartCount > 0 ? app.restartCount : 0,
  };
}

function condition(
  type: string,
  status: string,
  current: Model<V1PodStatus> | undefined,
  now: Date,
  extra: { reason?: string; message?: string } = {},
): Condition {
  const prev = current?.conditions?.find((c) => c.type === type);
  const since = prev?.status === status ? toDate(prev.lastTransitionTime) : undefined;
  return { type, status, ...extra, lastTransitionTime: since ?? now };
}

/** Conditions already on the pod that these builders do not own (readiness gates, DisruptionTarget). */
function foreignConditions(current: Model<V1PodStatus> | undefined, own: readonly Condition[]): Condition[] {
  const ownTypes = new Set(own.map((c) => c.type));
  return (current?.conditions ?? [])
    .filter((c) => !ownTypes.has(c.type))
    .map((c) => ({
      ...c,
      lastProbeTime: toDate(c.lastProbeTime),
      lastTransitionTime: toDate(c.lastTransitionTime),
    }));
}

function readinessGateProblem(pod: Model<V1Pod>): string | undefined {
  for (const gate of pod.spec?.readinessGates ?? []) {
    const c = pod.status?.conditions?.find((x) => x.type === gate.conditionType);
    if (c === undefined)
      return `corresponding condition of pod readiness gate "${gate.conditionType}" does not exist.`;
    if (c.status !== "True")
      return `the status of pod readiness gate "${gate.conditionType}" is not "True", but ${c.status}`;
  }
  return undefined;
}

/** The QoS class the API server would have computed (kept from the pod's status when present). */
export function qosClassOf(pod: Model<V1Pod>): string {
  if (pod.status?.qosClass) return pod.status.qosClass;
  const containers = [...(pod.spec?.containers ?? []), ...(pod.spec?.initContainers ?? [])];
  let any = false;
  let guaranteed = containers.length > 0;
  for (const c of containers) {
    const requests = c.resources?.requests ?? {};
    const limits = c.resources?.limits ?? {};
    for (const resource of ["cpu", "memory"]) {
      const request = requests[resource];
      const limit = limits[resource];
      if (request !== undefined || limit !== undefined) any = true;
      const l = limit === undefined ? undefined : parseQuantity(limit);
      const r = request === undefined ? l : parseQuantity(request);
      if (l === undefined || r === undefined || l.num * r.den !== r.num * l.den) guaranteed = false;
    }
  }
  if (!any) return "BestEffort";
  return guaranteed ? "Guaranteed" : "Burstable";
}

const ips = (ip: string) => (ip ? [{ ip }] : []);

/**
 * The pod's status now. Phase is the workload's (Pending without one; never back from Succeeded
 * or Failed). Conditions: Initialized, Ready, ContainersReady, PodScheduled and
 * `devicelet.dev/DeviceConnected` (True/False with DeviceOnline/DeviceOffline, Unknown when
 * nothing is known), then any others already on the pod. Containers without an app status wait
 * with `pending` (or `ContainerCreating`). `startTime` and `qosClass` are kept from the pod.
 */
export function buildPodStatus(input: BuildPodStatusInput): Status {
  const { pod, now } = input;
  const current = pod.status;
  const uid = pod.metadata?.uid;
  const workload =
    input.workload && (!uid || !input.workload.pod.uid || input.workload.pod.uid === uid)
      ? input.workload
      : undefined;
  let phase: string = workload?.phase ?? "Pending";
  if (current?.phase && TERMINAL.has(current.phase) && !TERMINAL.has(phase)) phase = current.phase;
  const terminal = TERMINAL.has(phase);
  const apps = new Map((workload?.apps ?? []).map((a) => [a.name, a]));
  const previous = new Map(
    [...(current?.containerStatuses ?? []), ...(current?.initContainerStatuses ?? [])].map((c) => [
      c.name,
      c,
    ]),
  );
  const waitReason = input.pending ?? { reason: "ContainerCreating", message: workload?.message ?? "" };
  const missing = (prev: CurrentContainer | undefined): ContainerState =>
    terminal
      ? terminalState(prev, {
          reason: workload?.reason ?? "ContainerStatusUnknown",
          message: workload?.message ?? "",
        })
      : { waiting: withMessage({ reason: waitReason.reason }, waitReason.message) };

  const containers = (pod.spec?.containers ?? []).map((c) =>
    containerStatus(pod, c.name, c.image ?? "", apps.get(c.name), missing, previous.get(c.name)),
  );
  const initSpecs = pod.spec?.initContainers ?? [];
  // The workload has no init apps of its own; a pod the device runs has finished its init containers.
  const initMissing = (prev: CurrentContainer | undefined): ContainerState => {
    if (phase === "Running" || phase === "Succeeded") {
      const before = reviveState(prev?.state);
      return before.terminated ? before : { terminated: { exitCode: 0, reason: "Completed" } };
    }
    if (terminal) return missing(prev);
    return {
      waiting: withMessage({ reason: input.pending?.reason ?? "PodInitializing" }, input.pending?.message),
    };
  };
  const initContainers = initSpecs.map((c) =>
    containerStatus(pod, c.name, c.image ?? "", apps.get(c.name), initMissing, previous.get(c.name)),
  );

  const initDone =
    phase === "Running" ||
    phase === "Succeeded" ||
    initContainers.every((c) => c.state?.terminated?.exitCode === 0);
  const unready = containers.filter((c) => !c.ready).map((c) => c.name);
  const containersReady = phase === "Running" && unready.length === 0;
  const gateProblem = readinessGateProblem(pod);
  const notReady =
    phase === "Succeeded"
      ? { reason: "PodCompleted" }
      : unready.length > 0 || phase !== "Running"
        ? { reason: "ContainersNotReady", message: `containers with unready status: [${unready.join(" ")}]` }
        : undefined;
  const uninitialized = initContainers.filter((c) => c.state?.terminated?.exitCode !== 0).map((c) => c.name);
  const connected = input.deviceConnected ?? workload?.deviceConnected;

  const own: Condition[] = [
    initDone
      ? condition(
          "Initialized",
          "True",
          current,
          now,
          phase === "Succeeded" && initSpecs.length > 0 ? { reason: "PodCompleted" } : {},
        )
      : condition("Initialized", "False", current, now, {
          reason: "ContainersNotInitialized",
          message: `containers with incomplete status: [${uninitialized.join(" ")}]`,
        }),
    // An offline device's last report may be stale: the pod is not Ready (so nothing routes to
    // it) while its containers keep their last known state, as for a kubelet's unreachable node.
    containersReady && gateProblem === undefined && connected !== false
      ? condition("Ready", "True", current, now)
      : condition(
          "Ready",
          "False",
          current,
          now,
          connected === false && containersReady
            ? {
                reason: "DeviceOffline",
                message: "the device is offline; its last report said the pod was running",
              }
            : (notReady ?? { reason: "ReadinessGatesNotReady", message: gateProblem ?? "" }),
        ),
    containersReady
      ? condition("ContainersReady", "True", current, now)
      : condition("ContainersReady", "False", current, now, notReady ?? {}),
    condition("PodScheduled", "True", current, now),
    input.transport?.connected === false
      ? condition(PodConditionType.DeviceConnected, "Unknown", current, now, {
          reason: "TransportDisconnected",
          message: `device presence unknown: ${input.transport.message}`,
        })
      : connected === undefined
        ? condition(PodConditionType.DeviceConnected, "Unknown", current, now, {
            reason: "DeviceStatusUnknown",
            message: "no report from the device yet",
          })
        : connected
          ? condition(PodConditionType.DeviceConnected, "True", current, now, {
              reason: "DeviceOnline",
              message: "device is connected",
            })
          : condition(PodConditionType.DeviceConnected, "False", current, now, {
              reason: "DeviceOffline",
              message: "device is offline",
            }),
  ];

  // The API server refuses a status whose podIP is not an IP (422, so no status at all): a device's
  // address that is not one is ignored here whatever the provider checked (the provider records
  // the Event), and the engine's address is used instead; with neither usable, no podIP is written.
  const podIP = [workload?.podIP, input.podIP].find((a) => a !== undefined && isUsableIP(a));
  const status: Status = {
    phase,
    conditions: [...own, ...foreignConditions(current, own)],
    ...(isUsableIP(input.hostIP) ? { hostIP: input.hostIP, hostIPs: ips(input.hostIP) } : {}),
    ...(podIP === undefined ? {} : { podIP, podIPs: ips(podIP) }),
    startTime: toDate(current?.startTime) ?? now,
    qosClass: qosClassOf(pod),
    containerStatuses: containers,
    initContainerStatuses: initContainers,
    // Always present, "" when none: a merge patch then clears an earlier reason (Go reads "" as unset).
    reason: (phase !== "Running" && workload?.reason) || "",
    message: (phase !== "Running" && workload?.message) || "",
  };
  return status;
}

/**
 * A terminal status for a pod refused before it reached a device (`Unsupported`, or any other
 * `reason`): phase Failed with the reason and message, Ready/ContainersReady False (`PodFailed`),
 * containers last seen running terminated as `ContainerStatusUnknown`, terminated ones kept, the
 * others waiting with `reason`. IPs, startTime and foreign conditions are kept from the pod.
 */
export function buildFailedStatus(
  pod: Model<V1Pod>,
  o: { reason: string; message: string; now: Date },
): Status {
  const current = pod.status;
  const previous = new Map(
    [...(current?.containerStatuses ?? []), ...(current?.initContainerStatuses ?? [])].map((c) => [
      c.name,
      c,
    ]),
  );
  const missing = (prev: CurrentContainer | undefined) =>
    terminalState(prev, { reason: o.reason, message: o.message });
  const toStatus = (c: { name: string; image?: string }) =>
    containerStatus(pod, c.name, c.image ?? "", undefined, missing, previous.get(c.name));
  const failed = { reason: "PodFailed", message: o.message };
  const own: Condition[] = [
    condition(
      "Initialized",
      (pod.spec?.initContainers ?? []).length === 0 ? "True" : "False",
      current,
      o.now,
    ),
    condition("Ready", "False", current, o.now, failed),
    condition("ContainersReady", "False", current, o.now, failed),
    condition("PodScheduled", "True", current, o.now),
  ];
  const status: Status = {
    phase: "Failed",
    reason: o.reason,
    message: o.message,
    conditions: [...own, ...foreignConditions(current, own)],
    startTime: toDate(current?.startTime) ?? o.now,
    qosClass: qosClassOf(pod),
    containerStatuses: (pod.spec?.containers ?? []).map(toStatus),
    initContainerStatuses: (pod.spec?.initContainers ?? []).map(toStatus),
  };
  if (current?.hostIP) Object.assign(status, { hostIP: current.hostIP, hostIPs: ips(current.hostIP) });
  if (current?.podIP) Object.assign(status, { podIP: current.podIP, podIPs: ips(current.podIP) });
  return status;
}

/**
 * The status of a Terminating pod whose device has not confirmed that its apps stopped: the current
 * status (its phase and containers are the last the device reported) with the
 * `devicelet.dev/StopConfirmed` condition False, reason `WaitingForDevice` and `message`.
 */
export function waitingForDeviceStatus(pod: Model<V1Pod>, o: { message: string; now: Date }): Status {
  const current = pod.status;
  const own = [
    condition(PodConditionType.StopConfirmed, "False", current, o.now, {
      reason: "WaitingForDevice",
      message: o.message,
    }),
  ];
  // Times stay wire strings: the result is only ever sent as JSON.
  return { ...(current as Status), conditions: [...foreignConditions(current, own), ...own] };
}

/**
 * Whether writing `next` would change anything that matters in `current`, the status of `pod`:
 * every field of {@link POD_STATUS_FIELDS}, with times compared at whole seconds whether they are
 * `Date`s or RFC 3339 strings, and empty values (`""`, `{}`, `[]`, null) equal to absent ones. A
 * cached status's {@link OWN_CONTAINER_ID} is compared as the ID it stands for. Fields outside
 * that list (set by others, e.g. `nominatedNodeName`) are ignored. True when `current` is
 * undefined.
 */
export function statusChanged(
  current: Model<V1PodStatus> | undefined,
  next: Model<V1PodStatus>,
  pod: Model<V1Pod>,
): boolean {
  if (current === undefined) return true;
  return POD_STATUS_FIELDS.some((f) =>
    f === "containerStatuses" || f === "initContainerStatuses"
      ? !sameContainers(pod, f, current[f], next[f])
      : !sameNormalisedField(f, current[f], next[f]),
  );
}

/** {@link sameNormalisedField} of two container status lists, with `current`'s own IDs made whole. */
function sameContainers(
  pod: Model<V1Pod>,
  field: string,
  current: readonly CurrentContainer[] | undefined,
  next: readonly CurrentContainer[] | undefined,
): boolean {
  // A container status always has a name, so no item of either list is dropped as empty: they
  // pair up one to one.
  if (current === undefined || !hasOwnId(current) || current.length !== next?.length)
    return sameNormalisedField(field, current, next);
  return current.every((c, i) => {
    const other = next[i];
    const n: Record<string, unknown> = other ?? {};
    const own: Record<string, unknown> = c;
    for (const key in own)
      if (!Object.hasOwn(n, key) && !sameNormalisedField(key, own[key], undefined)) return false;
    for (const key in n) {
      const [mine, theirs] =
        key === "containerID" && other
          ? [containerIdOf(pod, c), containerIdOf(pod, other)]
          : [own[key], n[key]];
      if (!sameNormalisedField(key, mine, theirs)) return false;
    }
    return true;
  });
}
