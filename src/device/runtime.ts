/**
 * What a device runs its pods with. A {@link DeviceSession} speaks the protocol and hands each
 * accepted desired document to a `Runtime`; the runtime runs the apps and tells the session when
 * their state changed. Two implementations ship: `ProcessRuntime` (apps as supervised child
 * processes, for Linux gateways) and `SimRuntime` (no processes, for the simulator).
 *
 * Also the kubelet rules both share: restart policy, exponential back-off, pod phase, and
 * admission against the device's capacity.
 */
import type { Readable, Writable } from "node:stream";
import type {
  DesiredPod,
  ReportedAppState,
  ReportedPod,
  StatsMessage,
  Tombstone,
} from "../protocol/types.ts";
import { retryDelay } from "../base/backoff.ts";
import { milliValue, parseQuantity, unitValue } from "../base/quantity.ts";
import type { AppLog } from "./log-ring.ts";

/** Something worth a Kubernetes Event on the pod (Started, BackOff, Killing, Failed…). */
export interface RuntimeEvent {
  readonly type: "Normal" | "Warning";
  readonly reason: string;
  readonly message: string;
  readonly podUid?: string;
  readonly app?: string;
}

export interface ExecResult {
  readonly exitCode: number;
  /** stdout and stderr interleaved, bounded by the runtime. */
  readonly output: string;
}

export interface Runtime {
  /**
   * Makes the runtime run exactly `pods` (the whole desired state): starts new pods, restarts a
   * pod whose `hash` changed (the old version stopped with the new version's grace period), leaves
   * unchanged ones alone, and stops and forgets pods that are tombstoned (with the tombstone's
   * grace period) or no longer listed (with their own). Resolves once every change has been
   * started, not once apps are running nor once stops are over: a pod being stopped stays in
   * {@link report} with reason `Terminating` until it is gone (docs/protocol.md § 4); progress
   * comes through {@link onChange}. Throws {@link RuntimeRefusal} when the document as a whole cannot be taken;
   * a single pod that cannot run is reported Pending with a reason instead (docs/protocol.md § 3.3).
   */
  apply(pods: readonly DesiredPod[], tombstones: readonly Tombstone[]): Promise<void>;
  /** Every pod the runtime knows, in a stable order; the caller must not mutate the result. */
  report(): ReportedPod[];
  /** `cb` runs after every state change (app started, exited, restarted); callers coalesce. */
  onChange(cb: () => void): void;
  onEvent?(cb: (event: RuntimeEvent) => void): void;
  logs?(podUid: string, app: string, options?: { tailLines?: number }): Promise<string>;
  exec?(podUid: string, app: string, args: readonly string[]): Promise<ExecResult>;
  restartApp?(podUid: string, app: string): Promise<void>;
  /**
   * The lines of an app's log for a logs session (io-sessions.ts), and a way to follow it.
   * @throws RuntimeRefusal `NotFound` (no such pod or app; no previous instance) or `Unsupported`.
   */
  appLog?(podUid: string, app: string): AppLogView;
  /**
   * Starts `command` in the app's environment for an exec session; the caller owns the returned
   * process and must read its output. @throws RuntimeRefusal `NotFound` or `Unsupported`.
   */
  startExec?(podUid: string, app: string, request: ExecRequest): RuntimeExec;
  /** CPU and memory of the device and of every app that runs, for the `stats` message. */
  stats?(): Promise<RuntimeStats>;
  /** Stops every app (gracefully) and forgets every pod; `apply` may be called again afterwards. */
  stop(): Promise<void>;
}

/** What a logs session reads: the app's {@link AppLog} (log-ring.ts) or something that acts like it. */
export type AppLogView = Pick<AppLog, "read" | "follow">;

export interface ExecRequest {
  readonly command: readonly string[];
  /** Whether the caller writes stdin; without it the process's stdin is at end of file at once. */
  readonly stdin: boolean;
}

/** A command started by {@link Runtime.startExec}. */
export interface RuntimeExec {
  /** Null when the request had no stdin. */
  readonly stdin: Writable | null;
  readonly stdout: Readable;
  readonly stderr: Readable;
  /** Resolves with the exit code once the process has exited and its output has ended. Never rejects. */
  readonly exited: Promise<number>;
  /** Kills the command and everything it started (its process group). Idempotent. */
  kill(): void;
}

/** CPU counters and memory of the device and its running apps: a `stats` message without its envelope. */
export type RuntimeStats = Pick<StatsMessage, "node" | "pods">;

/** The whole document is refused: the session acks it `rejected` with this reason and message. */
export class RuntimeRefusal extends Error {
  readonly reason: string;
  constructor(reason: string, message: string) {
    super(message);
    this.name = "RuntimeRefusal";
    this.reason = reason;
  }
}

/** `text` cut to at most `max` characters (protocol fields have limits), marked when cut. */
export const clip = (text: string, max: number): string =>
  text.length <= max ? text : `${text.slice(0, max - 1)}…`;

/** Whether an app that exited with `exitCode` is started again (kubelet restart policy). */
export const shouldRestart = (policy: DesiredPod["restartPolicy"], exitCode: number): boolean =>
  policy === "Always" || (policy === "OnFailure" && exitCode !== 0);

export interface BackoffOptions {
  /** First delay after an exit; the kubelet uses 10 s. */
  readonly initialMs: number;
  /** Cap; the kubelet uses 300 s. */
  readonly maxMs: number;
}
export const kubeletBackoff: BackoffOptions = { initialMs: 10_000, maxMs: 300_000 };

/**
 * Delay before restart number `failures` (1-based) in a row: initial · 2^(n−1), capped, without
 * jitter like the kubelet's CrashLoopBackOff (the delay is shown in the app's waiting message).
 */
export const restartDelay = (failures: number, o: BackoffOptions): number =>
  retryDelay({ failures, baseMs: o.initialMs, maxMs: o.maxMs, jitter: "none" });

/** `terminated` state of an app that exited, with the reason the kubelet would give. */
export function terminatedState(o: {
  exitCode: number;
  startedAt?: string;
  finishedAt: string;
  message?: string;
  reason?: string;
}): ReportedAppState {
  return {
    state: "terminated",
    exitCode: o.exitCode,
    reason: o.reason ?? (o.exitCode === 0 ? "Completed" : "Error"),
    ...(o.message === undefined ? {} : { message: o.message }),
    ...(o.startedAt === undefined ? {} : { startedAt: o.startedAt }),
    finishedAt: o.finishedAt,
  };
}

/**
 * Pod phase from its apps (docs/protocol.md § 3.3, as Kubernetes): Pending until every app has
 * started; Succeeded or Failed once every app has terminated for good (`final`); Running otherwise,
 * which includes apps waiting in back-off to restart.
 */
export function podPhase(
  apps: readonly { status: ReportedAppState; started: boolean; final: boolean }[],
): ReportedPod["phase"] {
  if (apps.length > 0 && apps.every((a) => a.final)) {
    return apps.every((a) => a.status.state === "terminated" && a.status.exitCode === 0)
      ? "Succeeded"
      : "Failed";
  }
  return apps.length > 0 && apps.every((a) => a.started) ? "Running" : "Pending";
}

/** Why a pod is refused at admission, as the kubelet says it (`OutOfpods`, `OutOfcpu`, …). */
export interface AdmissionRefusal {
  readonly reason: string;
  readonly message: string;
}

/**
 * Kubelet-style admission against the device's capacity: pods already admitted (`admitted`) keep
 * their place; new pods are taken in order while the pod count and the summed cpu and memory
 * requests fit. Returns the refused pods by uid. Unparseable quantities are not checked.
 */
export function admit(
  pods: readonly DesiredPod[],
  capacity: Readonly<Record<string, string | undefined>>,
  admitted: ReadonlySet<string>,
): Map<string, AdmissionRefusal> {
  const refused = new Map<string, AdmissionRefusal>();
  const limit = (name: string) => {
    const text = capacity[name];
    const q = text === undefined ? undefined : parseQuantity(text);
    if (!q) return undefined;
    return name === "cpu" ? milliValue(q) : unitValue(q);
  };
  const limits = { pods: limit("pods"), cpu: limit("cpu"), memory: limit("memory") };
  const used = { pods: 0n, cpu: 0n, memory: 0n };
  const ordered = [...pods.filter((p) => admitted.has(p.uid)), ...pods.filter((p) => !admitted.has(p.uid))];
  for (const pod of ordered) {
    const need = { pods: 1n, cpu: requests(pod, "cpu"), memory: requests(pod, "memory") };
    const over = (["pods", "cpu", "memory"] as const).find((r) => {
      const l = limits[r];
      return l !== undefined && used[r] + need[r] > l;
    });
    if (over !== undefined && !admitted.has(pod.uid)) {
      refused.set(pod.uid, {
        reason: `OutOf${over}`,
        message: `Pod was rejected: node didn't have enough resource: ${over}, requested: ${need[over]}, used: ${used[over]}, capacity: ${limits[over] ?? 0n}`,
      });
      continue;
    }
    used.pods += need.pods;
    used.cpu += need.cpu;
    used.memory += need.memory;
  }
  return refused;
}

function requests(pod: DesiredPod, resource: "cpu" | "memory"): bigint {
  let sum = 0n;
  for (const app of pod.apps) {
    const text = app.resources?.requests?.[resource];
    const q = text === undefined ? undefined : parseQuantity(text);
    if (q) sum += resource === "cpu" ? milliValue(q) : unitValue(q);
  }
  return sum;
}

/**
 * A pod the device cannot run, as reported: Pending with the reason, every app waiting with it
 * (docs/protocol.md § 3.3: the rest of the document is applied, as a kubelet does for
 * ErrImagePull). Unlike the kubelet's admission, which fails such a pod, it stays Pending and
 * starts once it fits (capacity freed by a later document).
 */
export function refusedPod(pod: DesiredPod, refusal: AdmissionRefusal): ReportedPod {
  return {
    uid: pod.uid,
    hash: pod.hash,
    phase: "Pending",
    reason: refusal.reason,
    message: refusal.message,
    apps: pod.apps.map((a) => ({
      name: a.name,
      image: a.image,
      status: { state: "waiting", reason: refusal.reason, message: refusal.message },
      ready: false,
      restartCount: 0,
    })),
  };
}
