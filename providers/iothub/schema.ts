/**
 * Configuration of the Azure IoT Hub provider (`provider.config` when `provider.type: iothub`): the
 * hub and how devicelet reaches its service API, which of the hub's devices become nodes, how it
 * learns of reported changes within the hub's quotas, and the same desired-state, command and
 * health knobs as the MQTT provider (whose parts it runs, docs/iothub.md). Validated by ajv with
 * defaults filled in, then frozen.
 *
 * ```yaml
 * provider:
 *   type: iothub
 *   config:
 *     hub: { connectionStringFile: /etc/devicelet/hub/connection-string, units: 1 }
 *     devices: { query: "tags.fleet = 'line-1'" }
 * ```
 */
import {
  readableFile,
  registerConfigCheck,
  valueAt,
  type ConfigCheck,
  type RuleProblem,
} from "../../src/config/index.ts";
import type { PodFeature } from "../../src/provider/types.ts";
import { desiredBlobsChecks, desiredBlobsSchema, mqttConfigSchema, type MqttConfig } from "../mqtt/schema.ts";

const int = (def: number, minimum: number, maximum?: number) =>
  ({ type: "integer", default: def, minimum, ...(maximum === undefined ? {} : { maximum }) }) as const;

const section = <P extends Record<string, unknown>>(description: string, properties: P) =>
  ({ type: "object", description, default: {}, additionalProperties: false, properties }) as const;

const optionalInt = (minimum: number, maximum: number, description: string) =>
  ({ type: "integer", minimum, maximum, description }) as const;

/** IoT Hub's limit on the desired section of a twin, as compact JSON (Microsoft's quotas page). */
export const TWIN_DESIRED_LIMIT_BYTES = 32 * 1024;

const mqtt = mqttConfigSchema.properties;
const { secrets, maxMessageBytes, silentAfterSeconds, wakeToleranceSeconds } = mqtt.devices.properties;
const { debounceMs, generationBlock, publishTimeoutMs, readbackTimeoutMs, orphanGraceSeconds } =
  mqtt.desired.properties;

/** JSON Schema of the IoT Hub provider's config (draft-07, compiled with the core config). */
export const iothubConfigSchema = {
  $id: "https://devicelet.dev/schemas/provider-iothub.json",
  title: "iothub provider configuration",
  type: "object",
  additionalProperties: false,
  required: ["hub", "devices"],
  properties: {
    hub: {
      type: "object",
      description: "The IoT hub, reached through its service REST API with a shared access policy.",
      additionalProperties: false,
      properties: {
        connectionStringFile: {
          type: "string",
          minLength: 1,
          description:
            "File holding the hub's service connection string (HostName=…;SharedAccessKeyName=…;SharedAccessKey=…), e.g. a mounted Secret. The policy needs service connect and registry read.",
        },
        connectionString: {
          type: "string",
          minLength: 1,
          description: "The connection string itself; prefer connectionStringFile outside demos.",
        },
        endpoint: {
          type: "string",
          pattern: "^https://",
          description:
            "Send service calls here instead of https://{HostName} (a private endpoint, a local emulator); SAS tokens still name HostName.",
        },
        caFile: { type: "string", minLength: 1, description: "An extra CA (PEM) to trust for `endpoint`." },
        tier: {
          enum: ["S1", "S2", "S3"],
          default: "S1",
          description: "The hub's tier: with `units`, sets the operation budgets below.",
        },
        units: int(1, 1, 200),
        budget: section(
          "devicelet's own share of the hub's operation throttles; unset = a share of the tier's (docs/iothub.md § Quotas).",
          {
            queriesPerMinute: optionalInt(1, 100_000, "Query pages per minute."),
            twinReadsPerSecond: optionalInt(1, 100_000, "Twin reads per second."),
            twinUpdatesPerSecond: optionalInt(1, 100_000, "Desired-property updates per second."),
            methodsPerSecond: optionalInt(1, 100_000, "Direct-method calls per second."),
          },
        ),
        sweepIntervalSeconds: {
          ...int(15, 1, 3600),
          description:
            "Least time between two sweeps of every selected twin (a paged query); the query budget may make it longer.",
        },
        watchSeconds: {
          ...int(30, 1, 3600),
          description:
            "After devicelet writes to a device, its twin is read directly (within the twin-read budget) until this long after the last change seen.",
        },
        methodResponseTimeoutSeconds: int(10, 5, 300),
        presenceMarginSeconds: {
          ...int(30, 0, 3600),
          description:
            "An online device whose heartbeat has not moved for two of its intervals plus this is lost.",
        },
      },
    },
    events: {
      type: "object",
      description:
        "The hub's built-in Event Hubs-compatible endpoint: command results, device events and stats, and (with a route) twin-change events. Without it, status comes from polling alone.",
      additionalProperties: false,
      properties: {
        connectionStringFile: { type: "string", minLength: 1 },
        connectionString: { type: "string", minLength: 1 },
        consumerGroup: { type: "string", minLength: 1, default: "$Default" },
        transport: {
          enum: ["amqp", "websockets"],
          description:
            "AMQP over TLS (port 5671), or AMQP over WebSockets (443) where only HTTPS may leave; default amqp, websockets with caFile (the SDK takes a CA only there).",
        },
        customEndpointAddress: {
          type: "string",
          pattern: "^(amqps|sb|https)://",
          description:
            "Connect here instead of the connection string's host (amqps:// or, for websockets, https://).",
        },
        caFile: {
          type: "string",
          minLength: 1,
          description: "An extra CA (PEM) to trust; needs websockets.",
        },
      },
    },
    devices: section("Which of the hub's devices become nodes: all conditions given must hold.", {
      query: {
        type: "string",
        minLength: 1,
        maxLength: 2048,
        description:
          "A condition on the twin, as in an IoT Hub query's WHERE clause, e.g. `tags.fleet = 'line-1'`.",
      },
      ids: {
        type: "array",
        minItems: 1,
        maxItems: 1000,
        uniqueItems: true,
        items: { type: "string", minLength: 1, maxLength: 128, pattern: "^[a-z0-9._-]+$" },
        description: "Exactly these device ids.",
      },
      allow: {
        ...mqtt.devices.properties.allow,
        default: ["*"],
        description: "Device ids or globs (`*` any run, `?` one character); others are refused.",
      },
      secrets,
      maxMessageBytes,
      silentAfterSeconds,
      wakeToleranceSeconds,
    }),
    desired: section("The desired document each device's twin holds.", {
      debounceMs,
      maxDocumentBytes: {
        ...int(30 * 1024, 1024, TWIN_DESIRED_LIMIT_BYTES),
        description:
          "How much of the 32 KB desired section devicelet's document may take (the rest is for other desired properties), counted as the twin stores it.",
      },
      generationBlock,
      publishTimeoutMs,
      readbackTimeoutMs,
      orphanGraceSeconds,
      blobs: desiredBlobsSchema,
    }),
    commands: mqtt.commands,
    health: mqtt.health,
    podEvents: mqtt.podEvents,
    metricsLogIntervalSeconds: mqtt.metricsLogIntervalSeconds,
    allowSecretsWithoutTls: mqtt.allowSecretsWithoutTls,
    supports: mqtt.supports,
  },
} as const;

export type IotHubTier = "S1" | "S2" | "S3";

export interface IotHubConfig {
  readonly hub: {
    readonly connectionStringFile?: string;
    readonly connectionString?: string;
    readonly endpoint?: string;
    readonly caFile?: string;
    readonly tier: IotHubTier;
    readonly units: number;
    readonly budget: {
      readonly queriesPerMinute?: number;
      readonly twinReadsPerSecond?: number;
      readonly twinUpdatesPerSecond?: number;
      readonly methodsPerSecond?: number;
    };
    readonly sweepIntervalSeconds: number;
    readonly watchSeconds: number;
    readonly methodResponseTimeoutSeconds: number;
    readonly presenceMarginSeconds: number;
  };
  readonly events?: {
    readonly connectionStringFile?: string;
    readonly connectionString?: string;
    readonly consumerGroup: string;
    readonly transport?: "amqp" | "websockets";
    readonly customEndpointAddress?: string;
    readonly caFile?: string;
  };
  readonly devices: Omit<MqttConfig["devices"], "allow"> & {
    readonly query?: string;
    readonly ids?: readonly string[];
    readonly allow: readonly string[];
  };
  readonly desired: MqttConfig["desired"];
  readonly commands: MqttConfig["commands"];
  readonly health: MqttConfig["health"];
  readonly podEvents: MqttConfig["podEvents"];
  readonly metricsLogIntervalSeconds: number;
  readonly allowSecretsWithoutTls: boolean;
  readonly supports?: readonly PodFeature[];
}

/** Every field optional, down into optional sections too (`desired.blobs`); lists as they are. */
type DeepPartial<T> = {
  readonly [K in keyof T]?: T[K] extends readonly unknown[]
    ? T[K]
    : NonNullable<T[K]> extends object
      ? DeepPartial<NonNullable<T[K]>>
      : T[K];
};

/** What callers may pass to the factory: anything the schema accepts; defaults fill the rest. */
export type IotHubConfigInput = DeepPartial<IotHubConfig>;

const exactlyOne = (config: unknown, base: string, required: boolean): RuleProblem[] => {
  const file = `${base}/connectionStringFile`;
  const inline = `${base}/connectionString`;
  const given = [file, inline].filter((p) => valueAt(config, p) !== undefined);
  if (given.length === 2)
    return [{ path: inline, message: `give one of ${file} and ${inline}, not both`, involves: given }];
  if (given.length === 0 && (required || valueAt(config, base) !== undefined))
    return [{ path: file, message: `or ${inline} is required`, involves: [file, inline] }];
  return [];
};

/**
 * Rules beyond the schema: exactly one way to give each connection string; `caFile` only with an
 * `endpoint` it could apply to; files exist and are readable now; `desired.blobs` as the MQTT
 * provider's.
 */
export const iothubConfigChecks: ConfigCheck = (config) => [
  ...exactlyOne(config, "/hub", true),
  ...exactlyOne(config, "/events", false),
  ...(valueAt(config, "/hub/caFile") !== undefined && valueAt(config, "/hub/endpoint") === undefined
    ? [
        {
          path: "/hub/caFile",
          message:
            "applies only to /hub/endpoint (the public hub's certificate chains to public roots): set endpoint or remove it",
          involves: ["/hub/caFile", "/hub/endpoint"],
        },
      ]
    : []),
  ...(valueAt(config, "/events/caFile") !== undefined && valueAt(config, "/events/transport") === "amqp"
    ? [
        {
          path: "/events/caFile",
          message:
            "needs /events/transport websockets: the Event Hubs client takes a CA only on its WebSocket transport",
          involves: ["/events/caFile", "/events/transport"],
        },
      ]
    : []),
  ...["/hub/connectionStringFile", "/hub/caFile", "/events/connectionStringFile", "/events/caFile"].flatMap(
    (p) => readableFile(config, p),
  ),
  ...desiredBlobsChecks(config),
];
registerConfigCheck(iothubConfigSchema, iothubConfigChecks);
