/**
 * Configuration of the MQTT provider (`provider.config` when `provider.type: mqtt`): the broker and
 * how to reach it, which devices may become nodes, and the knobs of desired-state publishing, the
 * command queue and health. Validated once by ajv with defaults filled in, then frozen.
 *
 * ```yaml
 * provider:
 *   type: mqtt
 *   config:
 *     broker: { url: mqtts://broker.example:8883, protocolVersion: 5, tls: { ca: /etc/devicelet/ca.pem } }
 *     devices: { allow: ["plant-a-*", "gw-17"] }
 * ```
 */
import { readFileSync } from "node:fs";
import {
  compare,
  readableFile,
  registerConfigCheck,
  together,
  valueAt,
  type ConfigCheck,
} from "../../src/config/index.ts";
import { urlLocation } from "../../src/log/redact.ts";
import { DEFAULT_MAX_MESSAGE_BYTES } from "../../src/protocol/types.ts";
import { PodFeature } from "../../src/provider/types.ts";

/** What the MQTT provider honours when no `supports` is configured. */
export const MQTT_DEFAULT_SUPPORTS: readonly PodFeature[] = [
  PodFeature.Ports,
  PodFeature.VolumeMounts,
  PodFeature.ConfigMapVolumes,
  PodFeature.SecretVolumes,
  PodFeature.DownwardAPIVolumes,
  PodFeature.ProjectedVolumes,
  PodFeature.ResourceLimits,
  PodFeature.SecurityContext,
];

const int = (def: number, minimum: number, maximum?: number) =>
  ({ type: "integer", default: def, minimum, ...(maximum === undefined ? {} : { maximum }) }) as const;

const section = <P extends Record<string, unknown>>(description: string, properties: P) =>
  ({ type: "object", description, default: {}, additionalProperties: false, properties }) as const;

/**
 * `desired.blobs`: where large file contents go by reference (blobs.ts). No default: without it
 * every file travels inline. Shared with the IoT Hub provider's schema.
 */
export const desiredBlobsSchema = {
  type: "object",
  description:
    "An Azure Blob Storage container for large file contents: files not from Secrets, at least minFileBytes long, go by reference (URL and sha256) instead of inline. Give exactly one of containerUrlFile and containerUrl.",
  additionalProperties: false,
  properties: {
    containerUrlFile: {
      type: "string",
      minLength: 1,
      description:
        "File holding the container's SAS URL (https://{account}.blob.core.windows.net/{container}?sv=…&sig=…), e.g. a mounted Secret. The SAS needs read, create and write; devices get blob URLs carrying it, so anyone holding one can read that blob.",
    },
    containerUrl: {
      type: "string",
      minLength: 1,
      description:
        "The container SAS URL itself; prefer containerUrlFile outside demos (it is a credential).",
    },
    caFile: {
      type: "string",
      minLength: 1,
      description: "An extra CA (PEM) to trust for the container (a private endpoint, an emulator).",
    },
    minFileBytes: {
      ...int(4096, 1),
      description: "Files at least this large (decoded) go by reference.",
    },
  },
} as const;

/** JSON Schema of the MQTT provider's config (draft-07, compiled with the core config). */
export const mqttConfigSchema = {
  $id: "https://devicelet.dev/schemas/provider-mqtt.json",
  title: "mqtt provider configuration",
  type: "object",
  additionalProperties: false,
  required: ["broker", "devices"],
  properties: {
    broker: {
      type: "object",
      description: "The MQTT broker (any MQTT 3.1.1 or 5 broker).",
      additionalProperties: false,
      required: ["url"],
      properties: {
        url: {
          type: "string",
          pattern: "^(mqtts?|wss?)://",
          description: "mqtt://, mqtts://, ws:// or wss://",
        },
        protocolVersion: { enum: [4, 5], default: 4, description: "4 = MQTT 3.1.1, 5 = MQTT 5." },
        clientId: {
          type: "string",
          default: "devicelet",
          minLength: 1,
          maxLength: 128,
          description: "Persistent session id (clean session off): keep it stable across restarts.",
        },
        username: { type: "string" },
        passwordFile: { type: "string", minLength: 1, description: "File holding the password." },
        tls: section("TLS and mutual TLS; files in PEM.", {
          ca: { type: "string", minLength: 1 },
          cert: { type: "string", minLength: 1 },
          key: { type: "string", minLength: 1 },
          servername: { type: "string", minLength: 1 },
          rejectUnauthorized: { type: "boolean", default: true },
        }),
        keepaliveSeconds: int(30, 5, 65_535),
        connectTimeoutMs: int(10_000, 100),
        reconnect: section("Jittered exponential backoff between connection attempts.", {
          minDelayMs: int(500, 10),
          maxDelayMs: int(30_000, 10),
        }),
        sessionExpirySeconds: int(7 * 24 * 3600, 0, 0xffffffff),
        willDelaySeconds: int(10, 0, 0xffffffff),
      },
    },
    devices: section("Which devices may become nodes.", {
      allow: {
        type: "array",
        minItems: 1,
        items: { type: "string", minLength: 1, maxLength: 128, pattern: "^[a-z0-9._*?-]+$" },
        description: "Device ids or globs (`*` any run, `?` one character); others are refused.",
      },
      maxMessageBytes: int(DEFAULT_MAX_MESSAGE_BYTES, 1024),
      silentAfterSeconds: {
        ...int(1800, 0),
        description:
          "A device counted online that devicelet has heard nothing live from for this long (since its last message, or devicelet's latest connection to the broker) is made lost: its will may never come. Devices re-publish `reported` at least every 10 minutes. 0 = never.",
      },
      wakeToleranceSeconds: {
        ...int(600, 0),
        description: "A sleeping device not back this long after its `wakeAt` is made lost.",
      },
      rereadAfterSeconds: {
        type: "number",
        default: 15,
        minimum: 0,
        description:
          "An online device behind its desired document for this long, and quiet for two thirds of it, gets its retained `reported` asked for again: a broker whose queue for devicelet overflowed (thousands of devices back at once) may have dropped its last ack and report. A device taken to be away gets its retained `state` asked for again once other devices came back and none has for two thirds of this long: its birth may have been dropped in that wave; each such wait is double the last. Again at most every four times this long. 0 = never.",
      },
      secrets: section(
        "Devices trusted with Secret-derived env and files. List only devices the broker makes connect over TLS with an identity tied to the device id (client certificate CN or credentials), and whose ACL confines them to their own subtree. A device's own claim is never enough.",
        {
          allow: {
            type: "array",
            default: [],
            items: { type: "string", minLength: 1, maxLength: 128, pattern: "^[a-z0-9._*?-]+$" },
            description:
              "Device ids or globs, as in `devices.allow`. Pods using Secrets for any other device are held back (SecretRequiresTLS).",
          },
        },
      ),
    }),
    desired: section("Publishing of the retained desired documents.", {
      debounceMs: int(15, 0, 10_000),
      maxDocumentBytes: {
        ...int(DEFAULT_MAX_MESSAGE_BYTES, 1024),
        description:
          "Largest desired document devicelet publishes, whatever a device announces: keep it under the broker's max_packet_size.",
      },
      generationBlock: int(1000, 1, 1_000_000),
      publishTimeoutMs: int(30_000, 100),
      readbackTimeoutMs: int(10_000, 1),
      orphanGraceSeconds: int(60, 1, 3600),
      blobs: desiredBlobsSchema,
    }),
    commands: section("One-shot commands to devices.", {
      queueLimit: int(50, 1, 10_000),
      ttlSeconds: int(300, 1, 48 * 3600),
    }),
    sessions: section("Logs and exec sessions with devices (docs/protocol.md § 3.9).", {
      maxPerDevice: {
        ...int(8, 1, 64),
        description: "Sessions open at once per device (lowered by a birth's capabilities.maxSessions).",
      },
      idleSeconds: {
        ...int(30, 3, 3600),
        description:
          "A device ends a session it heard nothing on for this long; devicelet sends a keepalive every third of it.",
      },
      openTimeoutSeconds: {
        ...int(10, 1, 300),
        description: "A device that does not answer io-open within this fails the request.",
      },
      gapTimeoutSeconds: {
        ...int(5, 1, 300),
        description: "A session whose output misses a seq for this long is ended.",
      },
      maxLogBytes: { ...int(10 * 1024 * 1024, 1024), description: "Most bytes of one log without follow." },
      maxBufferedBytes: {
        ...int(1024 * 1024, 64 * 1024),
        description:
          "Output held for a client that does not read it (or behind a seq gap) before the session is ended.",
      },
      maxChunkBytes: {
        ...int(32 * 1024, 256, 65536),
        description: "Most bytes a device puts in one io-data.",
      },
      logCache: section("The last log text received per container, served while its device is offline.", {
        bytesPerContainer: int(64 * 1024, 0, 16 * 1024 * 1024),
        containers: int(1000, 0, 100_000),
      }),
    }),
    health: section("Transport health reported to the node controller.", {
      disconnectedGraceSeconds: int(30, 0),
    }),
    podEvents: section(
      "Events recorded on pods for their way onto the device (docs/protocol.md § Pod Events).",
      {
        stages: {
          enum: ["notable", "all"],
          default: "notable",
          description:
            "notable: Queued, Rejected, TombstoneConfirmed and a container's restarts always; Delivered, Applied and a container's first Started only for a pod not Running slowStageSeconds after its change was published (a healthy start records none). all: every stage of every pod, each once.",
        },
        slowStageSeconds: {
          ...int(5, 1, 3600),
          description:
            "With stages notable: a pod not Running this long after its change was published has the stages it reached told, and the later ones as they come.",
        },
      },
    ),
    metricsLogIntervalSeconds: {
      ...int(60, 0),
      description: "Log the provider's counters at info this often when they changed; 0 = only at stop.",
    },
    allowSecretsWithoutTls: {
      type: "boolean",
      default: false,
      description:
        "Demos only: send Secret-derived env and files even over a plain or unverified broker connection and to devices not in `devices.secrets.allow`. Logged as a warning at start.",
    },
    supports: {
      type: "array",
      uniqueItems: true,
      items: { enum: Object.values(PodFeature) },
    },
  },
} as const;

export interface MqttConfig {
  readonly broker: {
    readonly url: string;
    readonly protocolVersion: 4 | 5;
    readonly clientId: string;
    readonly username?: string;
    readonly passwordFile?: string;
    readonly tls: {
      readonly ca?: string;
      readonly cert?: string;
      readonly key?: string;
      readonly servername?: string;
      readonly rejectUnauthorized: boolean;
    };
    readonly keepaliveSeconds: number;
    readonly connectTimeoutMs: number;
    readonly reconnect: { readonly minDelayMs: number; readonly maxDelayMs: number };
    /** MQTT 5 only: how long the broker keeps devicelet's session while it is away. */
    readonly sessionExpirySeconds: number;
    /** MQTT 5 only: delay before the broker publishes devicelet's `offline` bridge will. */
    readonly willDelaySeconds: number;
  };
  readonly devices: {
    readonly allow: readonly string[];
    /** Largest message accepted from a device; larger ones are rejected unread. */
    readonly maxMessageBytes: number;
    /** An online device not heard from live for this long is made lost (silence.ts); 0 = never. */
    readonly silentAfterSeconds: number;
    /** A sleeping device not back this long after its `wakeAt` is made lost. */
    readonly wakeToleranceSeconds: number;
    /** A device behind and quiet this long gets its retained report asked for again (reread.ts); 0 = never. */
    readonly rereadAfterSeconds: number;
    /** Devices trusted with Secrets: the broker authenticates them over TLS (see docs/security.md). */
    readonly secrets: { readonly allow: readonly string[] };
  };
  readonly desired: {
    /** Changes to one device within this window go out as one document. */
    readonly debounceMs: number;
    /**
     * Ceiling on a published desired document: devicelet sends at most the smaller of this and the
     * device's announced `maxMessageBytes`, so no device can make it publish what the broker drops.
     */
    readonly maxDocumentBytes: number;
    /** Generations reserved per durable-store write. */
    readonly generationBlock: number;
    /** deletePod fails Transient (and is retried) when the broker does not ack within this. */
    readonly publishTimeoutMs: number;
    /**
     * How long start waits for the retained documents read back; documents arriving later are
     * adopted as they come.
     */
    readonly readbackTimeoutMs: number;
    /**
     * A pod found in a document that arrived after the engine listed the provider's pods, and that
     * the engine has not claimed (created, updated or deleted) within this many seconds, has no pod
     * object any more: it is tombstoned.
     */
    readonly orphanGraceSeconds: number;
    /** Large file contents by reference through this container; absent: every file inline. */
    readonly blobs?: DesiredBlobsConfig;
  };
  readonly commands: { readonly queueLimit: number; readonly ttlSeconds: number };
  /** Logs and exec sessions (docs/protocol.md § 3.9); see io-sessions.ts. */
  readonly sessions: {
    readonly maxPerDevice: number;
    readonly idleSeconds: number;
    readonly openTimeoutSeconds: number;
    readonly gapTimeoutSeconds: number;
    readonly maxLogBytes: number;
    readonly maxBufferedBytes: number;
    readonly maxChunkBytes: number;
    readonly logCache: { readonly bytesPerContainer: number; readonly containers: number };
  };
  readonly health: { readonly disconnectedGraceSeconds: number };
  /** Which pod stage Events are recorded (stages.ts). */
  readonly podEvents: PodEventsConfig;
  readonly metricsLogIntervalSeconds: number;
  readonly allowSecretsWithoutTls: boolean;
  readonly supports?: readonly PodFeature[];
}

/** `podEvents`: which pod stage Events are recorded (stages.ts, docs/protocol.md § Pod Events). */
export interface PodEventsConfig {
  /**
   * `notable`: Queued, Rejected, TombstoneConfirmed and restarts always; Delivered, Applied and a
   * container's first Started only for a slow pod. `all`: every stage.
   */
  readonly stages: "notable" | "all";
  /** A pod not Running this long after its change was published is slow. */
  readonly slowStageSeconds: number;
}

/** `desired.blobs`: exactly one of `containerUrlFile` and `containerUrl` (checked at load). */
export interface DesiredBlobsConfig {
  readonly containerUrlFile?: string;
  readonly containerUrl?: string;
  readonly caFile?: string;
  readonly minFileBytes: number;
}

/** What callers may pass to the factory: anything the schema accepts; defaults fill the rest. */
export type MqttConfigInput = {
  readonly broker: Partial<Omit<MqttConfig["broker"], "tls" | "reconnect">> & {
    readonly url: string;
    readonly tls?: Partial<MqttConfig["broker"]["tls"]>;
    readonly reconnect?: Partial<MqttConfig["broker"]["reconnect"]>;
  };
  readonly devices: Partial<Omit<MqttConfig["devices"], "secrets">> & {
    readonly allow: readonly string[];
    readonly secrets?: Partial<MqttConfig["devices"]["secrets"]>;
  };
  readonly desired?: Partial<Omit<MqttConfig["desired"], "blobs">> & {
    readonly blobs?: Partial<DesiredBlobsConfig>;
  };
  readonly commands?: Partial<MqttConfig["commands"]>;
  readonly sessions?: Partial<Omit<MqttConfig["sessions"], "logCache">> & {
    readonly logCache?: Partial<MqttConfig["sessions"]["logCache"]>;
  };
  readonly health?: Partial<MqttConfig["health"]>;
  readonly podEvents?: Partial<PodEventsConfig>;
  readonly metricsLogIntervalSeconds?: number;
  readonly allowSecretsWithoutTls?: boolean;
  readonly supports?: readonly PodFeature[];
};

/** Whether `id` matches an allow-list entry: an exact id or a glob (`*` any run, `?` one char). */
export const allowListMatcher = (allow: readonly string[]): ((id: string) => boolean) => {
  const exact = new Set(allow.filter((p) => !/[*?]/.test(p)));
  const globs = allow
    .filter((p) => /[*?]/.test(p))
    .map(
      (p) =>
        new RegExp(
          `^${p
            .replace(/[.+^${}()|[\]\\-]/g, "\\$&")
            .replaceAll("*", ".*")
            .replaceAll("?", ".")}$`,
        ),
    );
  return (id) => exact.has(id) || globs.some((g) => g.test(id));
};

const TLS_KEYS = ["ca", "cert", "key", "servername"] as const;

/** Why a container URL cannot be used, or undefined; names it without its query (a credential). */
export const containerUrlProblem = (text: string): string | undefined => {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return "is not a URL";
  }
  const shown = urlLocation(text);
  if (url.protocol !== "https:") return `${shown} is not an https URL`;
  if (url.pathname.replace(/^\/+|\/+$/g, "") === "") return `${shown} names no container`;
  if (!url.searchParams.has("sig"))
    return `${shown} carries no SAS: give the container's SAS URL (its query has sv, sp, se and sig)`;
  return undefined;
};

/** A file's trimmed text, for a path already found readable. */
const textOf = (path: unknown): string | undefined =>
  typeof path === "string" && path !== "" ? readFileSync(path, "utf8").trim() : undefined;

/**
 * Rules of `desired.blobs` (both providers): exactly one of `containerUrlFile` and `containerUrl`;
 * the URL, inline or in the file, is a container SAS URL; the files exist and are readable now.
 */
export const desiredBlobsChecks: ConfigCheck = (config) => {
  const base = "/desired/blobs";
  if (valueAt(config, base) === undefined) return [];
  const file = `${base}/containerUrlFile`;
  const inline = `${base}/containerUrl`;
  const given = [file, inline].filter((p) => valueAt(config, p) !== undefined);
  const unreadable = [file, `${base}/caFile`].flatMap((p) => readableFile(config, p));
  const urls = [
    { path: inline, url: valueAt(config, inline) },
    // The file's content, when it can be read: a wrong file is reported now, not at the first pod.
    { path: file, url: unreadable.some((u) => u.path === file) ? undefined : textOf(valueAt(config, file)) },
  ];
  return [
    ...(given.length === 2
      ? [{ path: inline, message: `give one of ${file} and ${inline}, not both`, involves: given }]
      : given.length === 0
        ? [{ path: file, message: `or ${inline} is required`, involves: [file, inline] }]
        : []),
    ...urls.flatMap(({ path, url }) => {
      const problem = typeof url === "string" ? containerUrlProblem(url) : undefined;
      return problem === undefined
        ? []
        : [{ path, message: path === file ? `the URL in it ${problem}` : problem }];
    }),
    ...unreadable,
  ];
};

/**
 * Rules of the MQTT provider's config beyond its schema: client certificate and key come together;
 * the reconnect backoff's minimum is at most its maximum; TLS settings on a plain `mqtt://` or
 * `ws://` URL are refused (they would be silently unused); the password and TLS files exist and
 * are readable now, not only when the first connection is attempted; `desired.blobs` as
 * {@link desiredBlobsChecks} says.
 */
export const mqttConfigChecks: ConfigCheck = (config) => {
  const url = valueAt(config, "/broker/url");
  const plain = typeof url === "string" && /^(mqtt|ws):\/\//.test(url);
  const scheme = plain ? url.slice(0, url.indexOf(":")) : "";
  const unusedTls = plain
    ? [
        ...TLS_KEYS.filter((k) => valueAt(config, `/broker/tls/${k}`) !== undefined),
        ...(valueAt(config, "/broker/tls/rejectUnauthorized") === false ? ["rejectUnauthorized"] : []),
      ].map((k) => ({
        path: `/broker/tls/${k}`,
        message: `is a TLS setting, but /broker/url is a plain ${scheme}:// URL where it would be silently unused: use ${scheme}s:// or remove it`,
        involves: [`/broker/tls/${k}`, "/broker/url"],
      }))
    : [];
  return [
    ...together(config, "/broker/tls/cert", "/broker/tls/key"),
    ...compare(config, "/broker/reconnect/minDelayMs", "/broker/reconnect/maxDelayMs", "at most"),
    ...unusedTls,
    ...["/broker/passwordFile", ...TLS_KEYS.slice(0, 3).map((k) => `/broker/tls/${k}`)].flatMap((p) =>
      readableFile(config, p),
    ),
    ...desiredBlobsChecks(config),
  ];
};
registerConfigCheck(mqttConfigSchema, mqttConfigChecks);
