/**
 * Configuration of the mock provider (`provider.config` when `provider.type: mock`): which
 * simulated devices exist, how their apps behave, which failures to inject, and where to persist.
 */
import { compare, labelMapSchema, patterns, registerConfigCheck } from "../../src/config/index.ts";
import { invalidInput } from "../../src/provider/errors.ts";
import { PodFeature } from "../../src/provider/types.ts";

/** Everything the mock honours when no `supports` is configured. */
export const MOCK_DEFAULT_SUPPORTS: readonly PodFeature[] = [
  PodFeature.Ports,
  PodFeature.VolumeMounts,
  PodFeature.ConfigMapVolumes,
  PodFeature.SecretVolumes,
  PodFeature.DownwardAPIVolumes,
  PodFeature.ProjectedVolumes,
  PodFeature.EmptyDirVolumes,
  PodFeature.ResourceLimits,
];

const deviceFields = {
  deviceClass: { type: "string", default: "gateway", minLength: 1, pattern: patterns.labelValue },
  arch: { type: "string", default: "arm64", minLength: 1, pattern: patterns.labelValue },
  os: { type: "string", default: "linux", minLength: 1, pattern: patterns.labelValue },
  zone: { type: "string", minLength: 1, pattern: patterns.labelValue },
  gateway: { type: "string", minLength: 1 },
  address: { type: "string", format: "ip" },
  connected: { type: "boolean", default: true },
  capacity: {
    type: "object",
    default: {},
    propertyNames: { pattern: patterns.qualifiedName },
    additionalProperties: { type: "string", pattern: patterns.quantity },
    properties: {
      cpu: { type: "string", default: "4", pattern: patterns.quantity },
      memory: { type: "string", default: "4Gi", pattern: patterns.quantity },
      pods: { type: "string", default: "20", pattern: "^[0-9]+$" },
    },
  },
  labels: labelMapSchema,
} as const;

/** `count` devices named `<idPrefix><n>`, n = 0..count-1, sharing the other fields. */
const groupSchema = {
  type: "object",
  additionalProperties: false,
  required: ["count"],
  properties: {
    count: { type: "integer", minimum: 0, maximum: 100_000 },
    idPrefix: { type: "string", default: "mock-", maxLength: 100, pattern: patterns.namePrefix },
    ...deviceFields,
  },
} as const;

const deviceSchema = {
  type: "object",
  additionalProperties: false,
  required: ["id"],
  properties: {
    id: { type: "string", maxLength: 200, pattern: "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$" },
    ...deviceFields,
  },
} as const;

const ms = (def: number) => ({ type: "integer", minimum: 0, default: def }) as const;

/** JSON Schema of the mock provider's config; pass it to `registerProviderSchema("mock", ...)`. */
export const mockConfigSchema = {
  $id: "https://devicelet.dev/schemas/provider-mock.json",
  title: "mock provider configuration",
  type: "object",
  additionalProperties: false,
  properties: {
    devices: {
      description: "A device group, or a list of groups (with `count`) and single devices (with `id`).",
      default: { count: 1 },
      if: { type: "array" },
      then: {
        type: "array",
        items: { if: { type: "object", required: ["count"] }, then: groupSchema, else: deviceSchema },
      },
      else: groupSchema,
    },
    appStartDelayMs: ms(200),
    appStopDelayMs: ms(100),
    failImages: { type: "array", default: [], items: { type: "string", minLength: 1 } },
    failAfterMs: ms(100),
    crashBackoffMs: { type: "integer", minimum: 1, default: 200 },
    crashBackoffMaxMs: { type: "integer", minimum: 1, default: 5000 },
    createErrorRate: { type: "number", minimum: 0, maximum: 1, default: 0 },
    fatalErrorAfterMs: { type: "integer", minimum: 0 },
    offline: {
      type: "array",
      default: [],
      items: {
        type: "object",
        additionalProperties: false,
        required: ["device", "afterMs"],
        properties: {
          device: { type: "string", minLength: 1 },
          afterMs: ms(0),
          forMs: { type: "integer", minimum: 1 },
        },
      },
    },
    removals: {
      description: "Devices removed for good from the mock's registry: the engine deletes their nodes.",
      type: "array",
      default: [],
      items: {
        type: "object",
        additionalProperties: false,
        required: ["device", "afterMs"],
        properties: { device: { type: "string", minLength: 1 }, afterMs: ms(0) },
      },
    },
    stateFile: { type: "string", minLength: 1 },
    appLogIntervalMs: {
      description: "Every running app writes a log line this often (0: only its lifecycle lines).",
      type: "integer",
      minimum: 0,
      default: 0,
    },
    exec: {
      type: "object",
      additionalProperties: false,
      default: {},
      properties: {
        tty: { type: "boolean", default: false },
        refuseDeviceClasses: {
          type: "array",
          default: ["mcu"],
          uniqueItems: true,
          items: { type: "string", minLength: 1 },
        },
      },
    },
    stats: {
      type: "object",
      additionalProperties: false,
      default: {},
      properties: {
        cpuMillicores: { type: "number", minimum: 0, maximum: 1_000_000, default: 5 },
        memoryBytes: { type: "integer", minimum: 0, default: 16_777_216 },
        nodeCpuMillicores: { type: "number", minimum: 0, maximum: 1_000_000, default: 20 },
        nodeMemoryBytes: { type: "integer", minimum: 0, default: 134_217_728 },
      },
    },
    supports: {
      type: "array",
      uniqueItems: true,
      items: { enum: Object.values(PodFeature) },
    },
  },
} as const;

/** The mock's rule beyond its schema: the first crash backoff is at most the longest. */
registerConfigCheck(mockConfigSchema, (config) =>
  compare(config, "/crashBackoffMs", "/crashBackoffMaxMs", "at most"),
);

/** Fields every simulated device has, after defaults. */
export interface MockDeviceFields {
  readonly deviceClass: string;
  readonly arch: string;
  readonly os: string;
  readonly zone?: string;
  /** Id of the gateway this device is reached through: it is offline whenever the gateway is. */
  readonly gateway?: string;
  /** Reported as the node's InternalIP and as the IP of pods on this device. */
  readonly address?: string;
  /** Whether the device starts online. */
  readonly connected: boolean;
  readonly capacity: Readonly<Record<string, string>>;
  readonly labels: Readonly<Record<string, string>>;
}
export interface MockDeviceGroup extends MockDeviceFields {
  readonly count: number;
  readonly idPrefix: string;
}
export interface MockDeviceSpec extends MockDeviceFields {
  readonly id: string;
}

/** The mock provider's configuration after validation and defaults. */
export interface MockConfig {
  readonly devices: MockDeviceGroup | readonly (MockDeviceGroup | MockDeviceSpec)[];
  /** Time from apply until an app runs. */
  readonly appStartDelayMs: number;
  /** Simulated stop time on delete; never longer than the grace period, 0 when the grace is 0. */
  readonly appStopDelayMs: number;
  /** Image patterns (`*` any run, `?` one char) whose apps exit with code 1 after `failAfterMs`. */
  readonly failImages: readonly string[];
  readonly failAfterMs: number;
  /** First CrashLoopBackOff wait; doubles per restart up to `crashBackoffMaxMs`. */
  readonly crashBackoffMs: number;
  readonly crashBackoffMaxMs: number;
  /** Probability that createPod throws a Transient error (before changing anything). */
  readonly createErrorRate: number;
  /** Reports a fatal error (ProviderContext.fail) this long after start(): devicelet stops, exit 1. */
  readonly fatalErrorAfterMs?: number;
  /** Presence schedule, relative to start(): offline at `afterMs`, back after `forMs` (or never). */
  readonly offline: readonly { readonly device: string; readonly afterMs: number; readonly forMs?: number }[];
  /** Removal schedule, relative to start(): the device is gone for good at `afterMs` (removeDevice). */
  readonly removals: readonly { readonly device: string; readonly afterMs: number }[];
  /** JSON file persisting pods, tombstones and counters across restarts. */
  readonly stateFile?: string;
  /** Pod features to declare; defaults to {@link MOCK_DEFAULT_SUPPORTS}. */
  readonly supports?: readonly PodFeature[];
  /** Every running app writes a `[mock] <image> heartbeat <n>` log line this often; 0: never. */
  readonly appLogIntervalMs: number;
  readonly exec: MockExecConfig;
  readonly stats: MockStatsConfig;
}

/** How `kubectl exec` and `attach` behave on the simulated devices (exec.ts). */
export interface MockExecConfig {
  /** Whether the devices have a terminal; false: exec and attach with `-t` are refused. */
  readonly tty: boolean;
  /** Device classes with no exec or attach at all (a microcontroller), refused as unsupported. */
  readonly refuseDeviceClasses: readonly string[];
}

/**
 * The synthetic usage getStats reports (stats.ts). A container uses its CPU request (else
 * `cpuMillicores`) all the time and its memory request (else half its limit, else `memoryBytes`).
 */
export interface MockStatsConfig {
  readonly cpuMillicores: number;
  readonly memoryBytes: number;
  /** What the device itself uses besides its pods. */
  readonly nodeCpuMillicores: number;
  readonly nodeMemoryBytes: number;
}

/** What callers may pass to the factory: any subset, defaults fill the rest. */
export type MockConfigInput = {
  readonly [K in keyof MockConfig]?: K extends "devices"
    ? | Partial<MockDeviceGroup>
      | readonly (Partial<MockDeviceGroup> | (Partial<MockDeviceSpec> & { id: string }))[]
    : K extends "exec" | "stats"
      ? Partial<MockConfig[K]>
      : MockConfig[K];
};

/**
 * Expands groups into single devices, in config order.
 * @throws ProviderError InvalidInput on a duplicate id, an unknown gateway, or an offline entry
 *   naming no device.
 */
export const expandDevices = (config: MockConfig): MockDeviceSpec[] => {
  const entries = Array.isArray(config.devices) ? config.devices : [config.devices];
  const out: MockDeviceSpec[] = [];
  for (const entry of entries as readonly (MockDeviceGroup | MockDeviceSpec)[]) {
    if ("id" in entry) {
      out.push(entry);
      continue;
    }
    const { count, idPrefix, ...fields } = entry;
    for (let n = 0; n < count; n++) out.push({ ...fields, id: `${idPrefix}${n}` });
  }
  const ids = new Set<string>();
  for (const d of out) {
    if (ids.has(d.id)) throw invalidInput(`mock: device id ${d.id} is defined twice`);
    ids.add(d.id);
  }
  for (const d of out) {
    if (d.gateway !== undefined && !ids.has(d.gateway)) {
      throw invalidInput(`mock: device ${d.id} names unknown gateway ${d.gateway}`);
    }
  }
  for (const o of config.offline) {
    if (!ids.has(o.device)) throw invalidInput(`mock: offline schedule names unknown device ${o.device}`);
  }
  for (const r of config.removals) {
    if (!ids.has(r.device)) throw invalidInput(`mock: removal schedule names unknown device ${r.device}`);
  }
  return out;
};

/** Glob-ish match: `*` any run of characters (including `/` and `:`), `?` exactly one. */
export const matchesImage = (pattern: string, image: string): boolean => {
  const re = pattern
    .replace(/[.+^${}()|[\]\\]/g, "\\$&")
    .replaceAll("*", ".*")
    .replaceAll("?", ".");
  return new RegExp(`^${re}$`).test(image);
};
