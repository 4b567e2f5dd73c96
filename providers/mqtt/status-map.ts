/**
 * The MQTT provider's status mapper: what devicelet knows about one pod on one device (delivery
 * stage of the desired document, device presence, the device's last report) → the
 * {@link WorkloadStatus} the engine turns into pod status. Pure: no clock, no I/O; never throws.
 *
 * The rules (docs/protocol.md § Pod status from device messages):
 * 1. Running only when the device reports the pod Running **for the desired hash**. A report of
 *    an older hash keeps its app states (the device's truth) under phase Pending, reason `Updating`.
 * 2. Succeeded / Failed only when the device reports that phase for the desired hash and every app
 *    has terminated (the device applies restartPolicy; devicelet never invents a terminal phase).
 * 3. Without a report for the desired hash: `DeviceRejected` (document refused; message from the
 *    device), else by delivery: `Applying` (received or applied, not yet reported), else by
 *    presence: `DeviceOffline` (offline, lost, unknown), `DeviceSleeping` (with the wake time),
 *    `Queued` (online, not yet received). Apps the device does not report wait with that reason.
 * 4. `deviceConnected` is presence `online`; `podIP` is the device's address when given
 *    ({@link withUsablePodIP} then drops one that may not be used as a pod IP).
 *
 * ```ts
 * const status = workloadStatusFor({ pod, desiredHash, appNames, images, presence, delivery,
 *   reported: report?.pods.find((p) => p.uid === pod.uid), address: report?.address, now });
 * ```
 */
import { isIP } from "node:net";
import type { ReportedApp, ReportedAppState, ReportedPod } from "../../src/protocol/types.ts";
import type { AppState, AppStatus, PodRef, WorkloadStatus } from "../../src/provider/types.ts";
import { toDate } from "../../src/base/canonical.ts";

export interface StatusInput {
  readonly pod: PodRef;
  /** The workload hash this pod has in the desired document. */
  readonly desiredHash: string;
  /** Container names in spec order; every one gets an app status. */
  readonly appNames: readonly string[];
  /** Spec image per container, for apps the device has not reported. */
  readonly images: Readonly<Record<string, string>>;
  readonly presence: "online" | "offline" | "lost" | "sleeping" | "unknown";
  /** From a `sleeping` presence message. */
  readonly wakeAt?: string;
  /** Stage of the desired document that carries `desiredHash` for this pod. */
  readonly delivery: "queued" | "received" | "applied" | "rejected";
  readonly rejection?: { reason: string; message: string };
  /** The device's last report for this pod (any hash); ignored when it is for another uid. */
  readonly reported?: ReportedPod;
  readonly address?: string;
  readonly now: Date;
}

/** Pod-level reasons this mapper gives for phase Pending. */
const StatusReason = {
  Updating: "Updating",
  DeviceRejected: "DeviceRejected",
  DeviceOffline: "DeviceOffline",
  DeviceSleeping: "DeviceSleeping",
  Queued: "Queued",
  Applying: "Applying",
  ContainerCreating: "ContainerCreating",
  Terminating: "Terminating",
} as const;

const MAX_TEXT = 1024;
const isObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === "object" && value !== null;
const text = (value: unknown, fallback = ""): string =>
  typeof value === "string" ? value.slice(0, MAX_TEXT) : fallback;

interface Pending {
  readonly reason: string;
  readonly message: string;
}

/** The workload status of `input.pod`. Returns a new object; the input is not touched. */
export function workloadStatusFor(input: StatusInput): WorkloadStatus {
  const now = toDate(input.now) ?? new Date(0);
  // Reports come off the wire: validated, but read defensively all the same.
  const report =
    isObject(input.reported) && input.reported.uid === input.pod.uid ? input.reported : undefined;
  const current = report !== undefined && report.hash === input.desiredHash ? report : undefined;
  const reportedApps = new Map<string, ReportedApp>();
  for (const app of Array.isArray(report?.apps) ? (report.apps as readonly unknown[]) : []) {
    if (isObject(app) && typeof app.name === "string" && !reportedApps.has(app.name)) {
      reportedApps.set(app.name, app as unknown as ReportedApp);
    }
  }
  const names = Array.isArray(input.appNames) ? input.appNames.filter((n) => typeof n === "string") : [];
  const pending = current === undefined ? whyPending(input, report) : undefined;
  const missing: Pending = pending ?? {
    reason: StatusReason.ContainerCreating,
    message: "the device has not reported this app yet",
  };
  const apps = names.map((name) => appStatus(name, reportedApps.get(name), input.images, missing, now));

  const base = {
    pod: { namespace: input.pod.namespace, name: input.pod.name, uid: input.pod.uid },
    apps,
    deviceConnected: input.presence === "online",
    ...(typeof input.address === "string" && input.address !== "" ? { podIP: input.address } : {}),
    observedAt: now,
  };
  if (pending !== undefined || current === undefined) {
    const why = pending ?? missing;
    return { ...base, phase: "Pending", reason: why.reason, message: why.message };
  }
  const reason = current.reason === undefined ? {} : { reason: text(current.reason) };
  const message = current.message === undefined ? {} : { message: text(current.message) };
  switch (current.phase) {
    case "Running":
      return { ...base, phase: "Running", ...reason, ...message };
    case "Succeeded":
    case "Failed": {
      const allTerminated = apps.length > 0 && apps.every((a) => a.state.kind === "terminated");
      if (allTerminated) return { ...base, phase: current.phase, ...reason, ...message };
      return {
        ...base,
        phase: "Pending",
        reason: text(current.reason) || StatusReason.Terminating,
        message: `the device reports ${current.phase} while not every app has terminated`,
      };
    }
    default:
      return {
        ...base,
        phase: "Pending",
        reason: text(current.reason) || StatusReason.ContainerCreating,
        message: text(current.message),
      };
  }
}

/** Why a pod without a report for its desired hash is Pending. */
function whyPending(input: StatusInput, report: ReportedPod | undefined): Pending {
  const offline = presenceText(input);
  if (input.delivery === "rejected") {
    const why = input.rejection;
    const detail = why
      ? `${text(why.reason)}: ${text(why.message)}`
      : "the device rejected the desired document";
    return { reason: StatusReason.DeviceRejected, message: detail };
  }
  if (report !== undefined) {
    const stage =
      input.delivery === "queued"
        ? offline === undefined
          ? "the update is queued for the device"
          : `the update is queued: ${offline.message}`
        : input.delivery === "received"
          ? "the device has received the update"
          : "the device has applied the update and not reported it yet";
    return { reason: StatusReason.Updating, message: `the device runs an older version; ${stage}` };
  }
  if (input.delivery === "received") {
    return { reason: StatusReason.Applying, message: "the device has received the workload" };
  }
  if (input.delivery === "applied") {
    return {
      reason: StatusReason.Applying,
      message: "the device has applied the workload and not reported it yet",
    };
  }
  return offline ?? { reason: StatusReason.Queued, message: "the workload is queued for the device" };
}

/** Reason and message for a device that is not online, or undefined when it is. */
function presenceText(input: StatusInput): Pending | undefined {
  switch (input.presence) {
    case "online":
      return undefined;
    case "sleeping": {
      const wake = toDate(input.wakeAt);
      return {
        reason: StatusReason.DeviceSleeping,
        message: wake
          ? `the device is sleeping until ${wake.toISOString()}; the workload is queued`
          : "the device is sleeping; the workload is queued",
      };
    }
    case "offline":
    case "lost":
      return {
        reason: StatusReason.DeviceOffline,
        message: `the device is ${input.presence}; the workload is queued until it reconnects`,
      };
    default:
      return {
        reason: StatusReason.DeviceOffline,
        message: "the device has not been seen yet; the workload is queued until it connects",
      };
  }
}

function appStatus(
  name: string,
  app: ReportedApp | undefined,
  images: Readonly<Record<string, string>>,
  missing: Pending,
  now: Date,
): AppStatus {
  const specImage = typeof images === "object" && Object.hasOwn(images, name) ? text(images[name]) : "";
  if (app === undefined) {
    return {
      name,
      state: { kind: "waiting", reason: missing.reason, message: missing.message },
      ready: false,
      restartCount: 0,
      image: specImage,
    };
  }
  const state = appState(app.status, now);
  const lastState = app.lastStatus === undefined ? undefined : appState(app.lastStatus, now);
  const restarts = app.restartCount;
  const ready: unknown = app.ready;
  return {
    name,
    state,
    ...(lastState === undefined ? {} : { lastState }),
    ready: ready === true && state.kind === "running",
    restartCount: Number.isSafeInteger(restarts) && restarts > 0 ? restarts : 0,
    image: text(app.image) || specImage,
  };
}

/** A reported app state with its times as Dates; an unreadable time becomes `now`. */
function appState(state: ReportedAppState, now: Date): AppState {
  if (!isObject(state))
    return { kind: "waiting", reason: "Unknown", message: "the device reported no app state" };
  switch (state.state) {
    case "running":
      return { kind: "running", startedAt: toDate(state.startedAt) ?? now };
    case "terminated": {
      const startedAt = toDate(state.startedAt);
      return {
        kind: "terminated",
        exitCode: Number.isSafeInteger(state.exitCode) ? state.exitCode : -1,
        reason: text(state.reason, "Unknown") || "Unknown",
        ...(state.message === undefined ? {} : { message: text(state.message) }),
        ...(startedAt === undefined ? {} : { startedAt }),
        finishedAt: toDate(state.finishedAt) ?? now,
      };
    }
    case "waiting":
      return {
        kind: "waiting",
        reason: text(state.reason, "Waiting") || "Waiting",
        ...(state.message === undefined ? {} : { message: text(state.message) }),
      };
    default:
      return { kind: "waiting", reason: "Unknown", message: "the device reported an unknown app state" };
  }
}

/**
 * `status` without a podIP that `check` refuses (not an IP, outside the configured ranges), and
 * why. The engine then gives the pod an address of its own range; the caller records the reason.
 * Without `check`, only `net.isIP` applies. Pure.
 */
export function withUsablePodIP(
  status: WorkloadStatus,
  check: ((address: string) => string | undefined) | undefined,
): { status: WorkloadStatus; refused?: string } {
  const address = status.podIP;
  if (address === undefined) return { status };
  const refused =
    check === undefined
      ? isIP(address) === 0 || address.includes("%")
        ? `${JSON.stringify(address.slice(0, 64))} is not an IP address`
        : undefined
      : check(address);
  if (refused === undefined) return { status };
  const { podIP: _ignored, ...rest } = status;
  return { status: rest, refused };
}
