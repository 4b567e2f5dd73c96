/**
 * The provider contract: what the engine asks of a device transport or runtime. Import it from
 * `devicelet/provider`; docs/providers.md walks through writing one.
 *
 * The core ({@link PodLifecycleProvider}) is five calls. Everything else is an optional capability
 * the engine detects at run time with the `has*` guards below:
 * - without a {@link DeviceInventory} the provider has no devices, so devicelet registers no nodes
 *   and no pod is ever scheduled to it (there is no static-node fallback);
 * - without a {@link StatusNotifier} pod status is polled with `getPodStatus`, every five seconds
 *   per pod: slower to show a change, and a call per pod each time;
 * - without a {@link Lifecycle} the provider is ready as soon as it is created.
 *
 * A provider never sees client-node types: it gets a transport-neutral {@link Workload} built by
 * `src/workload` from the pod, with env and files already resolved, and answers with
 * {@link WorkloadStatus}, which the engine maps to pod status. Objects passed in are owned by the
 * engine and frozen; objects returned become the engine's.
 *
 * What the engine guarantees:
 * - calls for one pod (same namespace/name) never overlap; calls for different pods do;
 * - no pod call before `start` resolved, and none once the engine began to stop: `stop` comes
 *   after every pod call made has settled (or after ten seconds, for a call that hangs). The
 *   inventory and health calls (`listDevices`, `health`) may come before `start`: nodes of an
 *   earlier run are heartbeated while a provider waits for its transport, so answer them from
 *   what the provider holds, without waiting for it;
 * - callbacks a provider invokes (status, deletion, device changes) are queued and handled after
 *   the provider's own call returns: a provider may call them at any time, even from inside a
 *   `createPod`, without the engine re-entering it;
 * - a call that throws is retried with backoff, except for InvalidInput and Unsupported errors
 *   (see errors.ts): those are recorded as a Warning Event (`RequestRefused`) on the pod and tried
 *   again only when something changes (the pod, a ConfigMap or Secret it uses, its device, the
 *   transport) or at the resync period.
 *
 * What it asks: no call blocks on a device. A call resolves once the provider holds the change
 * durably (queued for an offline device counts), never after waiting for the device to act; what
 * the device then does arrives through the status callback.
 *
 * ```ts
 * const provider: PodLifecycleProvider & StatusNotifier = {
 *   name: "toy", supports: ["spec.containers[].ports"],
 *   async createPod(w) { ... }, ...
 *   notifyStatus(cb) { this.#emit = cb },
 * };
 * ```
 */

/** Identifies one pod; `uid` tells a re-created pod of the same name from the old one. */
export interface PodRef {
  readonly namespace: string;
  readonly name: string;
  readonly uid: string;
}

export const podKey = (ref: Pick<PodRef, "namespace" | "name">) => `${ref.namespace}/${ref.name}`;

export interface AppFile {
  /** Path as the container mounts it: `<volumeMount.mountPath>/<key>`. */
  readonly path: string;
  /** UTF-8 text, or base64 when `encoding` says so (binary ConfigMap data, Secrets). */
  readonly content: string;
  readonly encoding: "utf8" | "base64";
  readonly mode?: number;
  /** True when it came from a Secret: never logged, only sent over TLS. */
  readonly secret: boolean;
}

export interface AppPort {
  readonly name?: string;
  readonly containerPort: number;
  readonly protocol: "TCP" | "UDP" | "SCTP";
}

/** One container of the pod as the device will run it: image is an app reference and version. */
export interface AppSpec {
  readonly name: string;
  readonly image: string;
  readonly command: readonly string[];
  readonly args: readonly string[];
  readonly env: Readonly<Record<string, string>>;
  /** Names of env entries that came from Secrets (values must not be logged). */
  readonly secretEnv: readonly string[];
  readonly files: readonly AppFile[];
  readonly ports: readonly AppPort[];
  readonly resources: {
    readonly requests: Readonly<Record<string, string>>;
    readonly limits: Readonly<Record<string, string>>;
  };
  /**
   * The container's effective security context (pod-level fields merged in, the container's
   * winning, as Kubernetes does); absent when the pod sets none of these fields. A provider that
   * declares {@link PodFeature.SecurityContext} must apply every field or refuse the pod naming it.
   */
  readonly securityContext?: AppSecurityContext;
}

/**
 * The security-context fields a device is asked to honour. Only fields the pod set are present.
 * Fields no device can honour (seLinuxOptions, sysctls, appArmorProfile, windowsOptions, a
 * non-default procMount, a Localhost seccomp profile…) never get here: devicelet refuses the pod.
 */
export interface AppSecurityContext {
  readonly runAsUser?: number;
  readonly runAsGroup?: number;
  readonly runAsNonRoot?: boolean;
  readonly readOnlyRootFilesystem?: boolean;
  readonly allowPrivilegeEscalation?: boolean;
  readonly capabilities?: { readonly add?: readonly string[]; readonly drop?: readonly string[] };
  /** Pod-level only in Kubernetes. */
  readonly fsGroup?: number;
  /** Pod-level only in Kubernetes. */
  readonly supplementalGroups?: readonly number[];
  readonly seccompProfile?: { readonly type: "RuntimeDefault" | "Unconfined" };
}

/** What a device should run for one pod. Pure data; the same pod always gives the same `hash`. */
export interface Workload {
  readonly pod: PodRef & {
    readonly labels: Readonly<Record<string, string>>;
    readonly annotations: Readonly<Record<string, string>>;
  };
  readonly nodeName: string;
  readonly deviceId: string;
  readonly restartPolicy: "Always" | "OnFailure" | "Never";
  readonly terminationGracePeriodSeconds: number;
  readonly apps: readonly AppSpec[];
  /** Content hash of everything above but `pod.uid`; equal hashes mean nothing to apply. */
  readonly hash: string;
}

export type AppState =
  | { readonly kind: "waiting"; readonly reason: string; readonly message?: string }
  | { readonly kind: "running"; readonly startedAt: Date }
  | {
      readonly kind: "terminated";
      readonly exitCode: number;
      readonly reason: string;
      readonly message?: string;
      readonly startedAt?: Date;
      readonly finishedAt: Date;
    };

export interface AppStatus {
  readonly name: string;
  readonly state: AppState;
  readonly lastState?: AppState;
  readonly ready: boolean;
  readonly restartCount: number;
  readonly image: string;
}

export type WorkloadPhase = "Pending" | "Running" | "Succeeded" | "Failed" | "Unknown";

/** What the device really does for one pod, as the provider last learned it. */
export interface WorkloadStatus {
  readonly pod: PodRef;
  readonly phase: WorkloadPhase;
  /** Short CamelCase reason for a phase other than Running, e.g. `DeviceOffline`, `Queued`. */
  readonly reason?: string;
  readonly message?: string;
  readonly apps: readonly AppStatus[];
  /** Whether the device was connected when this status was observed. */
  readonly deviceConnected: boolean;
  /** The device's address when it reports one; the engine assigns one otherwise. */
  readonly podIP?: string;
  readonly observedAt: Date;
}

/** A pod the provider runs (or holds queued/tombstoned) — used for adoption and clean-up. */
export interface ProviderPod {
  readonly pod: PodRef;
  readonly nodeName: string;
  /** Hash of the workload it was last given, to skip re-applying what it already has. */
  readonly hash: string;
  /**
   * The workload's `terminationGracePeriodSeconds`, when the provider kept it: the grace a pod
   * deleted while devicelet was down is stopped with (30 when absent).
   */
  readonly terminationGracePeriodSeconds?: number;
}

export interface DeletePodOptions {
  /** Seconds the app gets to stop; 0 means stop at once (force delete). */
  readonly gracePeriodSeconds: number;
}

/** Pod fields a provider may declare support for; anything a pod uses that is not declared is refused. */
export const PodFeature = {
  InitContainers: "spec.initContainers",
  EphemeralContainers: "spec.ephemeralContainers",
  Ports: "spec.containers[].ports",
  Probes: "spec.containers[].livenessProbe/readinessProbe/startupProbe",
  Lifecycle: "spec.containers[].lifecycle",
  VolumeMounts: "spec.containers[].volumeMounts",
  ConfigMapVolumes: "spec.volumes[].configMap",
  SecretVolumes: "spec.volumes[].secret",
  DownwardAPIVolumes: "spec.volumes[].downwardAPI",
  ProjectedVolumes: "spec.volumes[].projected",
  EmptyDirVolumes: "spec.volumes[].emptyDir",
  HostPathVolumes: "spec.volumes[].hostPath",
  PersistentVolumeClaims: "spec.volumes[].persistentVolumeClaim",
  HostNetwork: "spec.hostNetwork",
  Privileged: "spec.containers[].securityContext.privileged",
  /** runAsUser/Group/NonRoot, readOnlyRootFilesystem, capabilities, fsGroup… (AppSecurityContext). */
  SecurityContext: "spec.securityContext/spec.containers[].securityContext",
  ResourceLimits: "spec.containers[].resources",
} as const;
export type PodFeature = (typeof PodFeature)[keyof typeof PodFeature];

/**
 * The core every provider implements. Calls for one pod are never concurrent. An "unknown pod" is
 * one the provider never created or has finished deleting; each method says what to do with one.
 */
export interface PodLifecycleProvider {
  /** Short name used in the taint, labels and logs (`mock`, `mqtt`). */
  readonly name: string;
  /** Pod fields beyond plain containers with image/command/args/env that this provider honours. */
  readonly supports: readonly PodFeature[];
  /**
   * How many pods the engine may have a call under way for at once (createPod, updatePod,
   * deletePod, each awaited before the pod's status is written). Default 64: the calls resolve in
   * milliseconds, but each pod's turn also holds its status write, and an API server under load
   * answers those in hundreds of milliseconds. A provider whose calls wait on a rate-limited transport and coalesce
   * what waits per device (IoT Hub's twin-update budget) asks for more, so that waiting calls do
   * not keep every other pod from being handed over.
   */
  readonly concurrentPods?: number;
  /**
   * Start running (or queue, for a device that is away) the workload. Idempotent: the same hash
   * twice is a no-op. Resolves once the provider holds it durably; the app running is reported
   * later through status. An unknown device (no such `deviceId`): throw NotFound.
   */
  createPod(workload: Workload): Promise<void>;
  /**
   * Replace the workload of a pod already created (same rules as createPod). An unknown pod:
   * create it (the engine may call update for a pod the provider lost, e.g. after its state was
   * wiped).
   */
  updatePod(workload: Workload): Promise<void>;
  /**
   * Stop the pod's apps with the given grace. Resolves once the provider holds the delete durably
   * (a tombstone for a device that is away counts), not when the app has stopped: that is reported
   * with the deletion callback. An unknown pod: resolve (deleting twice is not an error).
   */
  deletePod(pod: PodRef, options: DeletePodOptions): Promise<void>;
  /**
   * Current status, or undefined for an unknown pod (never throws NotFound). Must not block on a
   * device. Asked at every reconcile of the pod, with a {@link StatusNotifier} too (a push tells the
   * engine when to look, the engine keeps no copy): it must agree with the latest push.
   */
  getPodStatus(pod: PodRef): Promise<WorkloadStatus | undefined>;
  /**
   * Every pod the provider runs or holds (queued or tombstoned), on any device, including those
   * created before a restart of the provider: the engine adopts what is there and deletes what
   * Kubernetes no longer has.
   */
  listPods(): Promise<readonly ProviderPod[]>;
}

/**
 * Push-style status: the provider calls back whenever a pod's status may have changed, with the
 * whole status. Never report an app running before the device said so. Calls after the pod was
 * deleted are ignored; calls may come from any context (the engine queues them).
 */
export interface StatusNotifier {
  notifyStatus(callback: (status: WorkloadStatus) => void): void;
}

/**
 * A pod the provider has finished deleting (the device confirmed, or the grace ended): the engine
 * then removes the pod object. Without it the engine polls `getPodStatus` until it is undefined.
 */
export interface DeletionNotifier {
  notifyDeleted(callback: (pod: PodRef) => void): void;
}

export interface NodeAddress {
  readonly type: "InternalIP" | "ExternalIP" | "Hostname" | "InternalDNS";
  readonly address: string;
}

/** One device as the provider knows it; the engine turns each into a node. */
export interface DeviceInfo {
  readonly id: string;
  /** Device class label, e.g. `gateway`, `mcu`. */
  readonly deviceClass: string;
  readonly os: string;
  readonly arch: string;
  readonly zone?: string;
  /** Id of the gateway this device is reached through, if any. */
  readonly gateway?: string;
  readonly labels: Readonly<Record<string, string>>;
  /** cpu, memory, pods and any extended resources, as Kubernetes quantities. */
  readonly capacity: Readonly<Record<string, string>>;
  readonly addresses: readonly NodeAddress[];
  readonly connected: boolean;
  /** Present while the device said it sleeps (it is not connected then), with its wake time if given. */
  readonly sleep?: { readonly wakeAt?: Date };
  readonly lastSeen?: Date;
  readonly nodeInfo?: {
    readonly osImage?: string;
    readonly kernelVersion?: string;
    readonly machineID?: string;
    readonly bootID?: string;
  };
}

/** What an inventory tells the engine about its devices as they change. */
export interface DeviceWatcher {
  /** A device appeared or changed (presence included): its full new info. */
  changed(device: DeviceInfo): void;
  /**
   * The device is gone for good on the provider's side (removed from its registry, retired): the
   * engine deletes its Node and Lease, and its pods with it. A device that is merely away is
   * `changed` with `connected: false`, never gone.
   */
  gone(deviceId: string): void;
}

/** Per-device node information: which devices exist, their capacity, labels and presence. */
export interface DeviceInventory {
  listDevices(): Promise<readonly DeviceInfo[]>;
  /** Registers the engine's watcher, once, before `start`. */
  watchDevices(watcher: DeviceWatcher): void;
}

/*
 * Logs, exec, attach, port forwarding and stats: optional capabilities. devicelet's kubelet API
 * (one HTTPS server for every device node, reached through the API server by `kubectl logs`,
 * `exec`, `attach`, `port-forward` and by metrics-server for `kubectl top`) calls them; a provider
 * without one gets a clear refusal for it, never a hang. No call waits on an offline device: answer
 * from what is cached, or throw `transient` saying the device is offline.
 */

export interface LogOptions {
  /** Only the last this many lines. */
  readonly tailLines?: number;
  /** Only lines written at or after this time (the kubelet's `sinceSeconds` or `sinceTime`). */
  readonly since?: Date;
  /** Start each line with the time it was written, RFC 3339 with nanoseconds, and a space. */
  readonly timestamps?: boolean;
  /** At most this many bytes; the kubelet API also cuts the stream there. */
  readonly limitBytes?: number;
  /** Keep sending lines as they are written until the container ends or `signal` aborts. */
  readonly follow?: boolean;
  /** The container's previous instance (before its last restart); `unsupported` if not kept. */
  readonly previous?: boolean;
  /** Aborts when the client goes: stop reading and release what the stream holds. */
  readonly signal: AbortSignal;
}

/** One container's log, as the kubelet API streams it to the client. */
export interface LogStream {
  /** UTF-8 text of whole lines, each ending in a newline. Ends when the log (or the follow) ends. */
  readonly chunks: AsyncIterable<string>;
  /**
   * Set when what is served is not live, e.g. "device gw-1 is offline; log as cached at
   * 2026-12-02T07:31:02Z". The kubelet API sends it as the first line.
   */
  readonly notice?: string;
}

export interface LogsCapability {
  /**
   * Throws `notFound` (pod or container unknown), `unsupported` (the device keeps no logs, or no
   * previous instance), `transient` (device offline and nothing cached).
   */
  getContainerLogs(pod: PodRef, container: string, options: LogOptions): Promise<LogStream>;
}

export interface TerminalSize {
  readonly width: number;
  readonly height: number;
}

/** The client's side of an exec or attach: which streams it opened, and where output goes. */
export interface ExecIO {
  /** The client's stdin when it asked for one; ends at the client's end of input. */
  readonly stdin?: AsyncIterable<Uint8Array>;
  /** Present when the client asked for stdout (with `tty`: the terminal's output). */
  readonly stdout?: (chunk: Uint8Array) => void;
  /** Present when the client asked for stderr (never with `tty`). */
  readonly stderr?: (chunk: Uint8Array) => void;
  /** The client asked for a terminal; throw `unsupported` if the device has none. */
  readonly tty: boolean;
  /** Terminal size changes, with `tty`. */
  readonly resize?: AsyncIterable<TerminalSize>;
  /** Aborts when the client goes: end the command and release what it holds. */
  readonly signal: AbortSignal;
}

export interface ExecCapability {
  /**
   * Runs `command` in the container and resolves with its exit code once it ended and all of its
   * output was written. Throws `notFound`, `unsupported` (no exec on this device, or no tty),
   * `transient` (device offline); the message reaches the user as kubectl's error.
   */
  execInContainer(
    pod: PodRef,
    container: string,
    command: readonly string[],
    io: ExecIO,
  ): Promise<{ readonly exitCode: number }>;
}

export interface AttachCapability {
  /** Connects `io` to the running container's own streams until `io.signal` aborts or it ends. */
  attachToContainer(pod: PodRef, container: string, io: ExecIO): Promise<{ readonly exitCode?: number }>;
}

/** One forwarded connection: bytes from the client in `data`, bytes to it through `write`. */
export interface ForwardedConnection {
  readonly data: AsyncIterable<Uint8Array>;
  write(chunk: Uint8Array): void;
  readonly signal: AbortSignal;
}

export interface PortForwardCapability {
  /** Carries one connection to `port` of the pod; resolves when either side closed it. */
  portForward(pod: PodRef, port: number, connection: ForwardedConnection): Promise<void>;
}

export interface CpuStats {
  /** Cumulative CPU time used, in core-nanoseconds (a counter: it only grows, until a restart). */
  readonly usageCoreNanoSeconds: number;
  /** The current rate in nanocores; devicelet derives it from two samples when absent. */
  readonly usageNanoCores?: number;
}

export interface MemoryStats {
  readonly workingSetBytes: number;
  readonly usageBytes?: number;
  readonly rssBytes?: number;
  readonly availableBytes?: number;
}

/** A measurement, taken at `time` (when the device measured it, not when it was asked). */
export interface ResourceSample {
  readonly time: Date;
  readonly cpu?: CpuStats;
  readonly memory?: MemoryStats;
}

export interface ContainerStats extends ResourceSample {
  readonly name: string;
  readonly startTime?: Date;
}

export interface PodStats {
  readonly pod: PodRef;
  readonly startTime?: Date;
  readonly containers: readonly ContainerStats[];
  /** Pod totals; the sum of the containers when absent. */
  readonly total?: ResourceSample;
}

/** The latest known stats of one device and its pods. */
export interface DeviceStats {
  /** The device as a whole (its node); absent when the device reports none. */
  readonly node?: ResourceSample & { readonly startTime?: Date };
  /** Pods with a measurement; the kubelet API lists the node's other pods with what it knows. */
  readonly pods: readonly PodStats[];
}

export interface StatsCapability {
  /** From what the device last reported, never a round trip; throws `notFound` for an unknown device. */
  getStats(deviceId: string): Promise<DeviceStats>;
}

/**
 * A message from devicelet to one device (`{id}/notice` on MQTT): why devicelet refused the device
 * or part of what it announced (a node name taken, a label, an address or a capacity ignored).
 */
export interface DeviceNotice {
  readonly type: "Normal" | "Warning";
  /** UpperCamelCase, e.g. `NodeNameTaken`, `InvalidCapacity`. */
  readonly reason: string;
  readonly message: string;
}

/**
 * Tells a device something devicelet decided about it. Best effort and non-blocking: a notice for
 * a device that is away may be lost (the same decision is also an Event on its node).
 */
export interface DeviceNotifier {
  notifyDevice(deviceId: string, notice: DeviceNotice): void;
}

/**
 * Lifecycle for providers holding connections or state, run the way a controller manager runs its
 * runnables: `start` once, before any pod call (only `watchDevices`, `notify*`, `listDevices` and
 * `health` may come earlier); `stop` once, when devicelet shuts down, after the last pod call
 * settled. Make `stop` idempotent all the same: tests and the conformance kit call it again. A fatal error after start (credentials revoked, state that cannot be read)
 * is reported with {@link ProviderContext.fail}, which stops devicelet with a non-zero exit.
 */
export interface Lifecycle {
  /**
   * Connects and reads back what the provider holds, resolving when it is ready to answer every
   * call (listPods must then be complete). Rejects when it cannot start: devicelet exits non-zero.
   * `signal` aborts when devicelet stops during start: give up and reject or resolve promptly.
   */
  start(signal: AbortSignal): Promise<void>;
  /**
   * Flushes what must be kept and releases connections; resolves when done. No pod call comes
   * after it. Called once by the engine, also after a failed start; must not throw.
   */
  stop(): Promise<void>;
}

const hasFunctions = (p: object, ...names: string[]) =>
  names.every((n) => typeof (p as Record<string, unknown>)[n] === "function");

export const hasStatusNotifier = (p: object): p is StatusNotifier => hasFunctions(p, "notifyStatus");
export const hasDeletionNotifier = (p: object): p is DeletionNotifier => hasFunctions(p, "notifyDeleted");
export const hasDeviceInventory = (p: object): p is DeviceInventory =>
  hasFunctions(p, "listDevices", "watchDevices");
export const hasLogs = (p: object): p is LogsCapability => hasFunctions(p, "getContainerLogs");
export const hasExec = (p: object): p is ExecCapability => hasFunctions(p, "execInContainer");
export const hasAttach = (p: object): p is AttachCapability => hasFunctions(p, "attachToContainer");
export const hasPortForward = (p: object): p is PortForwardCapability => hasFunctions(p, "portForward");
export const hasStats = (p: object): p is StatsCapability => hasFunctions(p, "getStats");
export const hasLifecycle = (p: object): p is Lifecycle => hasFunctions(p, "start", "stop");

/** Small durable state a provider keeps in the API server (generation high-water marks, epochs). */
export interface DurableStore {
  /** The stored value, or undefined when never set. */
  get(key: string): Promise<string | undefined>;
  /** Stores durably before resolving. Each call is an API write: batch and reserve, do not call per message. */
  set(key: string, value: string): Promise<void>;
  /**
   * Compare-and-swap, for state that another devicelet process may write at the same time: reads
   * the value fresh (never from a cache), calls `change` with it and stores what it returns only if
   * nobody wrote in between; otherwise reads again and calls `change` again (a bounded number of
   * times, then rejects). `change` returning undefined stores nothing. Resolves with the value
   * stored afterwards. `change` must be pure: it may run several times.
   */
  update(
    key: string,
    change: (current: string | undefined) => string | undefined,
  ): Promise<string | undefined>;
  /** Every stored key that starts with `prefix`, with its value (one read of the whole store). */
  entries(prefix: string): Promise<ReadonlyMap<string, string>>;
  /**
   * Removes the key and its value for good (a decommissioned device's state): nothing of it is
   * left in the cluster. Deleting a key never stored is no error. An API write, like `set`.
   */
  delete(key: string): Promise<void>;
}

/**
 * A Kubernetes Event a provider wants recorded; the engine rate-limits and aggregates them: a
 * repeat of the same (object, type, reason, series) within ten minutes bumps the count of one
 * Event, the latest message winning (src/kube/events.ts).
 */
export interface ProviderEvent {
  /**
   * The pod it is about, or the device (recorded on the device's node). A pod event that names
   * its `deviceId` goes on the device's node instead when the pod object is already gone.
   */
  readonly involved:
    | { readonly kind: "Pod"; readonly pod: PodRef; readonly deviceId?: string }
    | { readonly kind: "Device"; readonly deviceId: string };
  readonly type: "Normal" | "Warning";
  /** UpperCamelCase, e.g. `CommandExpired`, `DeviceRejectedConfig`. */
  readonly reason: string;
  readonly message: string;
  /**
   * Keeps events of one reason apart that must not fold into one, e.g. the container name of a
   * per-container `Started` (as the kubelet has one Started per container). Default: one series.
   */
  readonly series?: string;
}

/** What the engine hands a provider when it creates it. */
export interface ProviderContext {
  readonly logger: import("pino").Logger;
  readonly store: DurableStore;
  readonly recordEvent: (event: ProviderEvent) => void;
  /**
   * Why an address a device reports for its pods may not be used as a podIP (not an IP, or
   * outside the configured ranges), or undefined when it may. Absent: only `net.isIP` applies
   * (the engine checks that again before any pod status is written).
   */
  readonly checkPodAddress?: (address: string) => string | undefined;
  /**
   * Reports an error the provider cannot recover from after `start` resolved: devicelet logs it,
   * stops (leases are no longer renewed, `stop` is called) and exits non-zero so that whatever
   * runs it restarts it. A no-op once devicelet is stopping. Transient trouble (a broker away)
   * is not fatal: report it with {@link HealthReporter} instead.
   */
  readonly fail: (error: Error) => void;
  /**
   * Where the provider reports what devicelet's Prometheus metrics show of the devices
   * (docs/providers.md, "Metrics"). Absent when nothing collects them (a test context): call it
   * as `context.metrics?.desiredApplied(s)`.
   */
  readonly metrics?: ProviderMetrics;
  /**
   * Present when this engine serves only some of the provider's devices (one shard of several
   * devicelet replicas): whether a device is this engine's. A provider that can split its
   * inbound traffic by device serves only the devices it returns true for and ignores the rest
   * (someone else's, not rejected); one that cannot may serve every device as without it. Absent:
   * every device is this engine's. Cheap, pure and fixed for the provider's life: when a shard
   * moves, its engine and provider stop and another engine starts with a new predicate.
   */
  readonly owns?: (deviceId: string) => boolean;
  /**
   * With `owns`: the shard this engine serves (0 .. shards - 1). A provider whose transport needs
   * an identity of its own per connection (an MQTT client id) makes it distinct per shard, so a
   * persistent session moves with its shard and two shards in one process never take it over.
   */
  readonly shard?: number;
}

/**
 * The provider's share of devicelet's Prometheus metrics. Every method is cheap, synchronous and
 * never throws; none takes a device id or pod name (series per device would not scale).
 */
export interface ProviderMetrics {
  /**
   * A desired document was issued `seconds` after the first change it carries was handed to the
   * provider (its debounce, generation reservation, waiting for the transport). Optional to call.
   */
  desiredIssued(seconds: number): void;
  /** A device acknowledged receiving a desired document `seconds` after it was issued. */
  desiredDelivered(seconds: number): void;
  /** A device reported a desired document applied `seconds` after it was issued. */
  desiredApplied(seconds: number): void;
  /**
   * A message from a device was refused. `reason` comes from a small fixed set (kebab-case, e.g.
   * `schema`, `oversized`); anything else, or more than a few dozen distinct reasons, counts as
   * `other`.
   */
  messageRejected(reason: string): void;
  /** A command queued for a device expired before the device ran it. */
  commandExpired(): void;
  /**
   * The provider asked its transport again for the last state of `devices` devices, believing
   * their reports lost on the way (a broker that dropped messages for devicelet). Optional to call;
   * a steady rate says the transport loses messages.
   */
  reportsReread(devices: number): void;
  /**
   * Gauges read at every scrape (level-based, so nothing is lost between scrapes). Each callback
   * must be cheap and must not throw. A later call replaces the earlier callbacks.
   */
  observe(gauges: ProviderGauges): void;
}

/** What {@link ProviderMetrics.observe} reads; a gauge left out is not exported. */
export interface ProviderGauges {
  /** Changes (pods, deletions) handed to the provider that their device has not applied yet, summed over devices. */
  readonly pendingChanges?: () => number;
  /** Devices with at least one such change, or that rejected their desired state. */
  readonly devicesOutOfSync?: () => number;
  /** Commands waiting for their device (queued or awaiting a result). */
  readonly commandsQueued?: () => number;
  /** Whether the provider is connected to its transport (broker, hub) now. */
  readonly transportConnected?: () => boolean;
}

/**
 * The transport's health (is the broker or hub reachable?). It never touches node readiness or
 * leases: while not ready, nodes show `TransportConnected=False` and a NoSchedule taint, and pods a
 * `TransportDisconnected` reason; nothing is evicted or stopped. `ready` should already include a
 * grace period, so a quick broker restart shows nothing at all.
 */
export interface HealthReporter {
  health(): { readonly ready: boolean; readonly message: string };
}

export const hasHealth = (p: object): p is HealthReporter => hasFunctions(p, "health");
export const hasDeviceNotifier = (p: object): p is DeviceNotifier => hasFunctions(p, "notifyDevice");

/**
 * Decommissioning (docs/protocol.md § 5): the provider forgets a device everywhere it keeps it
 * (retained messages, durable state, queued commands and pods) and no longer reports it until it
 * is born again, live. The node controller calls it when the Node of a device that is not online
 * was deleted by someone else. Without it, such a Node is registered again.
 */
export interface DeviceRetirement {
  /**
   * Resolves "retired" once nothing of the device is left, or "online" (having done nothing) when
   * the device is online now. Rejects when the clearing did not go through; every step is
   * idempotent, so calling again later is safe.
   */
  retireDevice(deviceId: string): Promise<"retired" | "online">;
}

export const hasDeviceRetirement = (p: object): p is DeviceRetirement => hasFunctions(p, "retireDevice");

/**
 * Whether a device has applied what devicelet wants it to run, in generations of its desired
 * state (docs/providers.md § Device sync). Generations are the provider's own counter, compared
 * only with each other.
 */
export interface DeviceSync {
  /** The newest generation of desired state the device is to apply (0: nothing asked yet). */
  readonly desiredGeneration: number;
  /** The newest generation the device confirmed applied, in the same series. */
  readonly appliedGeneration: number;
  /** Since when `appliedGeneration` has been below `desiredGeneration`; absent while in sync. */
  readonly behindSince?: Date;
  /** The device refused the newest generation it saw, with its reason; absent otherwise. */
  readonly rejected?: { readonly generation: number; readonly reason: string; readonly message: string };
}

/**
 * Tells the engine how far each device is behind its desired state: the `DeviceInSync` node
 * condition and the `devicelet.dev/in-sync` label. Without it nodes have neither.
 */
export interface DeviceSyncReporter {
  /**
   * From what the provider holds, never a round trip; undefined when the device has never
   * reported (the condition is then Unknown).
   */
  deviceSync(deviceId: string): DeviceSync | undefined;
  /** The callback is told a device id whenever `deviceSync` of it may have changed. */
  notifyDeviceSync(callback: (deviceId: string) => void): void;
}

export const hasDeviceSync = (p: object): p is DeviceSyncReporter =>
  hasFunctions(p, "deviceSync", "notifyDeviceSync");
