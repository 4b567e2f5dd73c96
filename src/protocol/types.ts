/**
 * The devicelet device protocol, version 1, as TypeScript types: what travels over MQTT between
 * devicelet and a device (a gateway agent or a microcontroller). `docs/protocol.md` is the
 * normative text; `schemas/*.json` are the JSON Schemas both sides validate with; this file is the
 * shape both sides' code is written against. Keep all three in step.
 *
 * Topics (see topics.ts), all under `devicelet/v1/`:
 *   {device}/desired      devicelet → device   QoS 1, retained   DesiredDocument (whole state)
 *   {device}/cmd/{id}     devicelet → device   QoS 1             CommandMessage (expires)
 *   {device}/state        device → devicelet   QoS 1, retained   PresenceMessage (birth, will, sleep)
 *   {device}/reported     device → devicelet   QoS 1, retained   ReportedDocument (whole state)
 *   {device}/ack          device → devicelet   QoS 1             AckMessage (desired stages, commands)
 *   {device}/evt          device → devicelet   QoS 1             DeviceEventMessage
 *   _bridge/state         devicelet → all      QoS 1, retained   BridgeMessage (devicelet presence)
 *   {device}/notice       devicelet → device   QoS 1             NoticeMessage (what devicelet refused)
 *   {device}/io/{stream}  devicelet → device   QoS 1             IoInMessage (a logs/exec session's input)
 *   {device}/io/{stream}/out  device → devicelet  QoS 1          IoOutMessage (its output, ordered by seq)
 *   {device}/stats        device → devicelet   QoS 0             StatsMessage (latest CPU and memory)
 */

export const PROTOCOL_VERSION = 1;

/** Largest message either side accepts by default; devices may announce less in their birth. */
export const DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024;

/** A file inline (small) or by reference (large parts travel by URL and are checked by sha256). */
export type DesiredFile =
  | {
      readonly path: string;
      readonly encoding: "utf8" | "base64";
      readonly content: string;
      readonly mode?: number;
    }
  | {
      readonly path: string;
      readonly ref: { readonly url: string; readonly sha256: string; readonly size: number };
      readonly mode?: number;
    };

/** One container of a pod, as the device runs it. `image` is an app reference and version. */
export interface DesiredApp {
  readonly name: string;
  readonly image: string;
  readonly command: readonly string[];
  readonly args: readonly string[];
  readonly env: Readonly<Record<string, string>>;
  readonly files: readonly DesiredFile[];
  readonly ports?: readonly {
    readonly name?: string;
    readonly containerPort: number;
    readonly protocol: string;
  }[];
  readonly resources?: {
    readonly requests?: Readonly<Record<string, string>>;
    readonly limits?: Readonly<Record<string, string>>;
  };
  /**
   * The effective security context (pod-level fields merged in, the container's winning); present
   * only when the pod sets one. A device applies every field or refuses the pod naming the field
   * (docs/protocol.md § 3.1); it never ignores one.
   */
  readonly securityContext?: DesiredSecurityContext;
}

/** `apps[].securityContext`: only the fields the pod set are present. */
export interface DesiredSecurityContext {
  readonly runAsUser?: number;
  readonly runAsGroup?: number;
  readonly runAsNonRoot?: boolean;
  readonly readOnlyRootFilesystem?: boolean;
  readonly allowPrivilegeEscalation?: boolean;
  readonly capabilities?: { readonly add?: readonly string[]; readonly drop?: readonly string[] };
  readonly fsGroup?: number;
  readonly supplementalGroups?: readonly number[];
  readonly seccompProfile?: { readonly type: "RuntimeDefault" | "Unconfined" };
}

/** A pod the device should run. */
export interface DesiredPod {
  readonly uid: string;
  readonly namespace: string;
  readonly name: string;
  /** Workload hash: equal hashes mean nothing to apply for this pod. */
  readonly hash: string;
  readonly restartPolicy: "Always" | "OnFailure" | "Never";
  readonly terminationGracePeriodSeconds: number;
  readonly apps: readonly DesiredApp[];
}

/** A pod the device must stop and forget: kept in the document until the device confirms. */
export interface Tombstone {
  readonly uid: string;
  readonly namespace: string;
  readonly name: string;
  readonly deleted: true;
  readonly gracePeriodSeconds: number;
}

/**
 * Everything a device should run, as one retained document. The device applies a document once:
 * it ignores one whose (epoch, generation) it has already applied or that is older. A new epoch
 * (devicelet lost its state and started a new series) is always applied.
 */
export interface DesiredDocument {
  readonly protocol: 1;
  readonly kind: "desired";
  readonly deviceId: string;
  /** Names the series of generations; changes only when devicelet lost its stored state. */
  readonly epoch: string;
  /** Grows with every change; never reused (devicelet stores a high-water mark before publishing). */
  readonly generation: number;
  readonly issuedAt: string;
  readonly pods: readonly DesiredPod[];
  readonly tombstones: readonly Tombstone[];
  /** sha256 of the canonical JSON of `pods` and `tombstones`. */
  readonly contentHash: string;
}

export interface AppCapacity {
  readonly cpu?: string;
  readonly memory?: string;
  readonly pods?: string;
  readonly [resource: string]: string | undefined;
}

/** What a device can take: the largest message and the encodings it understands. */
export interface DeviceCapabilities {
  readonly maxMessageBytes: number;
  readonly encodings: readonly "json"[];
  /** Whether the device runs apps as processes (gateways) or is a single-image microcontroller. */
  readonly runtime: "process" | "firmware";
  readonly logs: boolean;
  readonly exec: boolean;
  /** The device understands a command's `ttlSeconds` (it may have no wall clock). */
  readonly commandTtl?: boolean;
  /** Exec sessions may ask for a terminal (`exec.tty`); absent means false. */
  readonly tty?: boolean;
  /** The device publishes `{id}/stats` every `statsIntervalSeconds` (15 when absent). */
  readonly stats?: boolean;
  readonly statsIntervalSeconds?: number;
  /** Most logs and exec sessions the device runs at once; 8 when absent. */
  readonly maxSessions?: number;
}

/** Birth (`online`), last will (`lost`), clean disconnect (`offline`) or sleep (`sleeping`). */
export interface PresenceMessage {
  readonly protocol: 1;
  readonly kind: "presence";
  readonly deviceId: string;
  readonly state: "online" | "offline" | "lost" | "sleeping";
  /** Changes at every boot; orders reports and tells an old boot's will from a live device. */
  readonly bootId: string;
  /**
   * Strictly increases over everything the device publishes in one boot. The will (`lost`) carries
   * the seq of the birth on the same connection (docs/protocol.md § 5).
   */
  readonly seq: number;
  readonly sentAt: string;
  /** Required in a birth (`online`), not allowed otherwise (the schema enforces it). */
  readonly device?: {
    readonly deviceClass: string;
    readonly os: string;
    readonly arch: string;
    readonly zone?: string;
    readonly gateway?: string;
    readonly labels?: Readonly<Record<string, string>>;
    readonly capacity: AppCapacity;
    readonly addresses?: readonly {
      readonly type: "InternalIP" | "ExternalIP" | "Hostname";
      readonly address: string;
    }[];
    readonly osImage?: string;
    readonly kernelVersion?: string;
    readonly capabilities: DeviceCapabilities;
  };
  /** Sleeping only: when the device expects to wake (it is Sleeping, not lost, until then). */
  readonly wakeAt?: string;
}

export type ReportedAppState =
  | { readonly state: "waiting"; readonly reason: string; readonly message?: string }
  | { readonly state: "running"; readonly startedAt: string }
  | {
      readonly state: "terminated";
      readonly exitCode: number;
      readonly reason: string;
      readonly message?: string;
      readonly startedAt?: string;
      readonly finishedAt: string;
    };

export interface ReportedApp {
  readonly name: string;
  readonly image: string;
  readonly status: ReportedAppState;
  readonly lastStatus?: ReportedAppState;
  readonly ready: boolean;
  readonly restartCount: number;
}

export interface ReportedPod {
  readonly uid: string;
  readonly hash: string;
  readonly phase: "Pending" | "Running" | "Succeeded" | "Failed";
  readonly reason?: string;
  readonly message?: string;
  readonly apps: readonly ReportedApp[];
}

/** What the device really runs, as one retained document, ordered by (bootId, seq). */
export interface ReportedDocument {
  readonly protocol: 1;
  readonly kind: "reported";
  readonly deviceId: string;
  readonly bootId: string;
  readonly seq: number;
  readonly observedAt: string;
  /**
   * The desired (epoch, generation) the device has seen and the one it has fully applied. Both
   * generations are of `epoch` (the newest document's): `appliedGeneration` is 0 after an epoch
   * change until a document of the new epoch is applied, and never above `observedGeneration`.
   */
  readonly epoch: string | null;
  readonly observedGeneration: number;
  readonly appliedGeneration: number;
  /** Present while the newest document seen (`observedGeneration`) is one the device rejected. */
  readonly rejection?: { readonly generation: number; readonly reason: string; readonly message: string };
  readonly pods: readonly ReportedPod[];
  /** Device address for pod IPs, when it has one. */
  readonly address?: string;
}

/** Staged acknowledgement of a desired document, or the outcome of a command. */
export type AckMessage =
  | {
      readonly protocol: 1;
      readonly kind: "ack";
      readonly deviceId: string;
      readonly bootId: string;
      readonly seq: number;
      readonly epoch: string;
      readonly generation: number;
      readonly stage: "received" | "applied" | "rejected";
      /** Required (with `message`) when `stage` is `rejected`. */
      readonly reason?: string;
      readonly message?: string;
    }
  | {
      readonly protocol: 1;
      readonly kind: "command-ack";
      readonly deviceId: string;
      readonly bootId: string;
      readonly seq: number;
      readonly commandId: string;
      readonly stage: "received" | "done" | "failed" | "expired";
      readonly exitCode?: number;
      readonly output?: string;
      readonly message?: string;
    };

/** A one-shot request. Devices drop a command whose `expiresAt` has passed (and say so). */
export interface CommandMessage {
  readonly protocol: 1;
  readonly kind: "command";
  readonly deviceId: string;
  readonly commandId: string;
  readonly command: "restart-app" | "exec" | "reboot" | "logs";
  readonly podUid?: string;
  readonly app?: string;
  readonly args?: readonly string[];
  readonly issuedAt: string;
  readonly expiresAt: string;
  /**
   * Whole seconds left until `expiresAt` when this copy was published; only for devices whose birth
   * announces `capabilities.commandTtl` (a device without a clock counts from receipt).
   */
  readonly ttlSeconds?: number;
}

/** Something that happened on the device, to become a Kubernetes Event. */
export interface DeviceEventMessage {
  readonly protocol: 1;
  readonly kind: "event";
  readonly deviceId: string;
  readonly bootId: string;
  readonly seq: number;
  readonly type: "Normal" | "Warning";
  readonly reason: string;
  readonly message: string;
  readonly podUid?: string;
  readonly app?: string;
  readonly at: string;
}

/** devicelet's own presence, retained, so devices know whether the bridge is up. */
export interface BridgeMessage {
  readonly protocol: 1;
  readonly kind: "bridge";
  readonly state: "online" | "offline";
  readonly instance: string;
  readonly sentAt: string;
}

/**
 * devicelet → device: something devicelet decided about the device — refused (its node name is a
 * Node devicelet does not own) or part of its birth ignored. Informational; never retained.
 */
export interface NoticeMessage {
  readonly protocol: 1;
  readonly kind: "notice";
  readonly deviceId: string;
  readonly type: "Normal" | "Warning";
  /** UpperCamelCase, e.g. `NodeNameTaken`, `InvalidCapacity`, `InvalidAddress`, `DeviceLabelRefused`. */
  readonly reason: string;
  readonly message: string;
  readonly at: string;
}

/** Defaults and bounds of sessions (docs/protocol.md § 3.9). */
export const SESSION_DEFAULTS = {
  /** Most bytes (decoded) of one io-data unless io-open says otherwise; io-open may say 256..65536. */
  maxChunkBytes: 32 * 1024,
  /** Most bytes (decoded) of one io-stdin. */
  maxStdinBytes: 32 * 1024,
  /** A device answers io-open within this long (first io-data, possibly empty, or io-end). */
  openTimeoutSeconds: 10,
  /** Sessions a device runs at once when its birth says nothing (`capabilities.maxSessions`). */
  maxSessions: 8,
  /** Seconds between stats messages when the birth says nothing (`capabilities.statsIntervalSeconds`). */
  statsIntervalSeconds: 15,
} as const;

/** Starts a logs or exec session. Exactly one of `logs` (type logs) and `exec` (type exec). */
export interface IoOpenMessage {
  readonly protocol: 1;
  readonly kind: "io-open";
  readonly deviceId: string;
  readonly streamId: string;
  readonly type: "logs" | "exec";
  readonly podUid: string;
  readonly app: string;
  readonly logs?: {
    readonly tailLines?: number;
    /** RFC 3339: only lines written at or after it. */
    readonly sinceTime?: string;
    /** Prefix each line with its RFC 3339 time (nanoseconds) and a space. */
    readonly timestamps?: boolean;
    readonly limitBytes?: number;
    readonly follow?: boolean;
    readonly previous?: boolean;
  };
  readonly exec?: {
    readonly command: readonly string[];
    readonly stdin: boolean;
    readonly stdout: boolean;
    readonly stderr: boolean;
    readonly tty: boolean;
  };
  /** Most bytes (decoded) the device puts in one io-data. */
  readonly maxChunkBytes: number;
  /** The device ends the session (IdleTimeout) after hearing nothing on the in topic this long. */
  readonly idleSeconds: number;
}

/** The client's input, in order of `seq` (0, 1, 2…); `eof` ends it. `data` is base64, may be empty. */
export interface IoStdinMessage {
  readonly protocol: 1;
  readonly kind: "io-stdin";
  readonly deviceId: string;
  readonly streamId: string;
  readonly seq: number;
  readonly data: string;
  readonly eof?: boolean;
}

export interface IoResizeMessage {
  readonly protocol: 1;
  readonly kind: "io-resize";
  readonly deviceId: string;
  readonly streamId: string;
  readonly width: number;
  readonly height: number;
}

export interface IoKeepaliveMessage {
  readonly protocol: 1;
  readonly kind: "io-keepalive";
  readonly deviceId: string;
  readonly streamId: string;
}

/** The client went away or a limit was hit: stop the follow, kill the exec, then send io-end. */
export interface IoCancelMessage {
  readonly protocol: 1;
  readonly kind: "io-cancel";
  readonly deviceId: string;
  readonly streamId: string;
  readonly reason?: string;
  readonly message?: string;
}

export type IoInMessage =
  IoOpenMessage | IoStdinMessage | IoResizeMessage | IoKeepaliveMessage | IoCancelMessage;

/** Output of a session; io-data and io-end share one seq series per stream, from 0. */
export interface IoDataMessage {
  readonly protocol: 1;
  readonly kind: "io-data";
  readonly deviceId: string;
  readonly streamId: string;
  readonly seq: number;
  readonly stream: "stdout" | "stderr" | "log";
  /** base64; empty is allowed (the first io-data may only say the session started). */
  readonly data: string;
}

/**
 * Why a session ended on the device, when it did not end normally: one of these, or another
 * UpperCamelCase word (read like `Failed`).
 */
export const IoEndReason = {
  NotFound: "NotFound",
  Unsupported: "Unsupported",
  LimitReached: "LimitReached",
  Cancelled: "Cancelled",
  IdleTimeout: "IdleTimeout",
  Failed: "Failed",
} as const;

/** The last message of a session: an exec's `exitCode`, or an `error`. */
export interface IoEndMessage {
  readonly protocol: 1;
  readonly kind: "io-end";
  readonly deviceId: string;
  readonly streamId: string;
  readonly seq: number;
  readonly exitCode?: number;
  readonly error?: { readonly reason: string; readonly message: string };
}

export type IoOutMessage = IoDataMessage | IoEndMessage;

export interface StatsCpu {
  /** Cumulative CPU time in core-nanoseconds; only grows within a boot. */
  readonly usageCoreNanoSeconds: number;
}

/** The device's and its apps' CPU and memory, measured at `at`. */
export interface StatsMessage {
  readonly protocol: 1;
  readonly kind: "stats";
  readonly deviceId: string;
  readonly bootId: string;
  readonly seq: number;
  readonly at: string;
  readonly node?: {
    readonly startTime?: string;
    readonly cpu?: StatsCpu;
    readonly memory?: {
      readonly workingSetBytes: number;
      readonly usageBytes?: number;
      readonly rssBytes?: number;
      readonly availableBytes?: number;
    };
  };
  readonly pods: readonly {
    readonly podUid: string;
    readonly apps: readonly {
      readonly app: string;
      readonly startTime?: string;
      readonly cpu?: StatsCpu;
      readonly memory?: { readonly workingSetBytes: number; readonly rssBytes?: number };
    }[];
  }[];
}

export type DeviceToBridge =
  PresenceMessage | ReportedDocument | AckMessage | DeviceEventMessage | IoOutMessage | StatsMessage;
export type BridgeToDevice = DesiredDocument | CommandMessage;
