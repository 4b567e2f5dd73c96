/**
 * The reference device agent for Linux gateways: one {@link DeviceSession} over MQTT (TLS and
 * mutual TLS) or over Azure IoT Hub (`iothub`: an {@link IotHubLink}, docs/iothub.md; a SAS key or
 * an X.509 certificate, over MQTT or MQTT over WebSockets), a
 * {@link ProcessRuntime} running each app as a supervised child process, and a state file that
 * makes restarts safe. Only the link differs between the two; over IoT Hub the birth announces
 * `logs: false, exec: false`, as the mapping carries no sessions.
 *
 *   const config = parseAgentConfig(yamlText, "agent.yaml");
 *   const agent = await startAgent(config, { logger });
 *   await agent.stop();       // retained `offline`, apps stopped gracefully
 *
 * Boot id: the kernel's (`/proc/sys/kernel/random/boot_id`), so an agent restart on the same boot
 * keeps it (and continues its sequence numbers from the state file) while a reboot changes it. The
 * state file (written atomically, mode 0600: it holds Secret-derived env and files) keeps the
 * applied (epoch, generation) and that document's pods: a restarted agent runs those pods again
 * at once, before it connects, and does not apply the retained document a second time.
 * The agent refuses the `reboot` command: rebooting the host is not its call.
 *
 * `kubectl logs`, `exec` and `top` (docs/protocol.md § 3.9, § 3.10): logs come from each app's
 * captured stdout and stderr (by default the last 1 MiB of the running instance and 256 KiB of
 * the one before, config `logs`); exec runs the command as the app runs (environment, folder,
 * user, setpriv) in a process group of its own, without a terminal (tty is refused); stats are
 * read from /proc for each app's process group every `statsIntervalSeconds`.
 *
 * Crash safety: each desired document is stored before it is applied (applier.ts), so an agent
 * killed mid-apply restarts into the document it was applying. At start, before anything runs,
 * app processes an earlier run left behind are killed and pod folders that the stored state does
 * not want are deleted (leftovers.ts). A corrupt state file is moved aside and the agent starts
 * empty (store.ts).
 */
import { access, mkdir, readFile, rename } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import type { Logger } from "pino";
import { parse } from "yaml";
import { ConfigError, registerConfigCheck, validateWithSchema } from "../config/load.ts";
import type { RuleProblem } from "../config/rules.ts";
import { withoutCredentials } from "../log/redact.ts";
import { DEVICE_ID } from "../protocol/topics.ts";
import { DEFAULT_MAX_MESSAGE_BYTES } from "../protocol/types.ts";
import { IotHubLink, iotHubCredentialProblem, type IotHubTransport } from "./iothub-link.ts";
import type { DeviceLink } from "./link.ts";
import { MqttTransport } from "./mqtt-link.ts";
import { removeLeftovers } from "./leftovers.ts";
import { ProcessRuntime } from "./process-runtime.ts";
import { DeviceSession, type BirthInfo } from "./session.ts";
import { fileStore } from "./store.ts";

/** Exactly one of `broker` and `iothub` is set. */
export interface AgentConfig {
  readonly broker?: {
    readonly url: string;
    readonly protocolVersion: 4 | 5;
    /** PEM files; relative paths are relative to the configuration file. */
    readonly ca?: string;
    readonly cert?: string;
    readonly key?: string;
    readonly username?: string;
    readonly passwordFile?: string;
    readonly keepaliveSeconds: number;
  };
  readonly iothub?: {
    /**
     * A device connection string: `HostName=…;DeviceId=…;SharedAccessKey=…`, or with `x509`,
     * `HostName=…;DeviceId=…;x509=true`; optional `GatewayHostName`.
     */
    readonly connectionString?: string;
    /** A file holding it (exactly one of the two is set); relative to the configuration file. */
    readonly connectionStringFile?: string;
    /** An extra CA (PEM file) to trust: the emulator's, or a private gateway's. */
    readonly caFile?: string;
    /**
     * X.509 authentication instead of a SAS key: PEM files, read at every connect (a rotated
     * certificate is used from the next reconnect); relative to the configuration file.
     */
    readonly x509?: { readonly certFile: string; readonly keyFile: string; readonly passphraseFile?: string };
    /** `mqtt` (TLS, port 8883) or `mqttWs` (MQTT over WebSockets, port 443). */
    readonly transport: IotHubTransport;
    readonly heartbeatSeconds: number;
  };
  readonly device: {
    /** Required with `broker`; with `iothub` the connection string's DeviceId, which it must equal. */
    readonly id?: string;
    readonly deviceClass: string;
    readonly zone?: string;
    readonly labels: Readonly<Record<string, string>>;
    /** Defaults: the host's CPUs and memory, 110 pods. */
    readonly capacity: Readonly<Record<string, string>>;
    readonly maxMessageBytes: number;
    /** The address pods get as their IP. */
    readonly address?: string;
  };
  readonly workDir: string;
  readonly stateFile: string;
  readonly bootIdFile: string;
  readonly restartBackoff: { readonly initialMs: number; readonly maxMs: number };
  readonly willDelaySeconds: number;
  readonly reportCoalesceMs: number;
  /** Seconds between two `stats` messages (docs/protocol.md § 3.10). */
  readonly statsIntervalSeconds: number;
  /** Logs and exec sessions at once; more are refused (docs/protocol.md § 3.9). */
  readonly maxSessions: number;
  /** Output kept per app: of the running instance, and of the one before it (`--previous`). */
  readonly logs: { readonly currentBytes: number; readonly previousBytes: number };
  readonly log: { readonly level: string };
}

const strings = { type: "object", additionalProperties: { type: "string" } } as const;

/**
 * In a folder of its own, which the agent makes 0700: the state holds Secret values, and the folder
 * holding `workDir` cannot be closed to the users apps run as.
 */
export const DEFAULT_STATE_FILE = "/var/lib/devicelet/state/agent-state.json";
/** The default before the state file got its own folder; moved at start (see moveStateFile). */
export const LEGACY_STATE_FILE = "/var/lib/devicelet/agent-state.json";

export const agentConfigSchema = {
  type: "object",
  additionalProperties: false,
  properties: {
    broker: {
      type: "object",
      additionalProperties: false,
      required: ["url"],
      properties: {
        url: { type: "string", pattern: "^(mqtts?|wss?)://" },
        protocolVersion: { enum: [4, 5], default: 5 },
        ca: { type: "string", minLength: 1 },
        cert: { type: "string", minLength: 1 },
        key: { type: "string", minLength: 1 },
        username: { type: "string" },
        passwordFile: { type: "string", minLength: 1 },
        keepaliveSeconds: { type: "integer", minimum: 5, maximum: 3600, default: 60 },
      },
      dependencies: { cert: ["key"], key: ["cert"] },
    },
    iothub: {
      type: "object",
      additionalProperties: false,
      properties: {
        connectionString: { type: "string", minLength: 1 },
        connectionStringFile: { type: "string", minLength: 1 },
        caFile: { type: "string", minLength: 1 },
        x509: {
          type: "object",
          additionalProperties: false,
          required: ["certFile", "keyFile"],
          properties: {
            certFile: { type: "string", minLength: 1 },
            keyFile: { type: "string", minLength: 1 },
            passphraseFile: { type: "string", minLength: 1 },
          },
        },
        transport: { enum: ["mqtt", "mqttWs"], default: "mqtt" },
        heartbeatSeconds: { type: "integer", minimum: 5, maximum: 3600, default: 60 },
      },
    },
    device: {
      type: "object",
      additionalProperties: false,
      default: {},
      properties: {
        id: { type: "string", pattern: DEVICE_ID.source },
        deviceClass: { type: "string", minLength: 1, maxLength: 63, default: "gateway" },
        zone: { type: "string", minLength: 1, maxLength: 63 },
        labels: { ...strings, default: {} },
        capacity: { ...strings, default: {} },
        maxMessageBytes: {
          type: "integer",
          minimum: 1024,
          maximum: 16_777_216,
          default: DEFAULT_MAX_MESSAGE_BYTES,
        },
        address: { type: "string", minLength: 1 },
      },
    },
    workDir: { type: "string", minLength: 1, default: "/var/lib/devicelet/pods" },
    stateFile: { type: "string", minLength: 1, default: DEFAULT_STATE_FILE },
    bootIdFile: { type: "string", minLength: 1, default: "/proc/sys/kernel/random/boot_id" },
    restartBackoff: {
      type: "object",
      additionalProperties: false,
      default: {},
      properties: {
        initialMs: { type: "integer", minimum: 1, default: 10_000 },
        maxMs: { type: "integer", minimum: 1, default: 300_000 },
      },
    },
    willDelaySeconds: { type: "integer", minimum: 0, maximum: 3600, default: 5 },
    reportCoalesceMs: { type: "integer", minimum: 0, maximum: 10_000, default: 20 },
    statsIntervalSeconds: { type: "integer", minimum: 5, maximum: 3600, default: 15 },
    maxSessions: { type: "integer", minimum: 1, maximum: 64, default: 8 },
    logs: {
      type: "object",
      additionalProperties: false,
      default: {},
      properties: {
        currentBytes: { type: "integer", minimum: 4096, maximum: 268_435_456, default: 1_048_576 },
        previousBytes: { type: "integer", minimum: 0, maximum: 268_435_456, default: 262_144 },
      },
    },
    log: {
      type: "object",
      additionalProperties: false,
      default: {},
      properties: { level: { enum: ["fatal", "error", "warn", "info", "debug", "trace"], default: "info" } },
    },
  },
} as const;

/** The `DeviceId` of a device connection string, or undefined when it has none. */
export function connectionStringDeviceId(connectionString: string): string | undefined {
  for (const field of connectionString.trim().split(";")) {
    const at = field.indexOf("=");
    if (at > 0 && field.slice(0, at) === "DeviceId") return field.slice(at + 1) || undefined;
  }
  return undefined;
}

/** The agent's device id over IoT Hub, from its connection string. @throws naming the mismatch. */
function iotHubDeviceId(connectionString: string, configured: string | undefined): string {
  const id = connectionStringDeviceId(connectionString);
  if (id === undefined) throw new Error("the IoT Hub connection string has no DeviceId");
  if (!DEVICE_ID.test(id)) throw new Error(`the connection string's DeviceId ${id} is not a valid device id`);
  if (configured !== undefined && configured !== id)
    throw new Error(`device.id ${configured} differs from the connection string's DeviceId ${id}`);
  return id;
}

registerConfigCheck(agentConfigSchema, (data) => {
  // Runs on data the schema may have rejected: read each field for what it is.
  const config = data as Partial<Record<"broker" | "iothub" | "device", unknown>>;
  const field = (value: unknown, key: string): unknown =>
    typeof value === "object" && value !== null ? (value as Record<string, unknown>)[key] : undefined;
  const problems: RuleProblem[] = [];
  const { broker, iothub } = config;
  const deviceId = field(config.device, "id");
  if ((broker === undefined) === (iothub === undefined))
    problems.push({
      path: "",
      message: "exactly one of broker (MQTT) and iothub (Azure IoT Hub) is required",
    });
  if (broker !== undefined && deviceId === undefined)
    problems.push({ path: "/device", message: "must have required property 'id'" });
  if (iothub === undefined) return problems;
  const connectionString = field(iothub, "connectionString");
  if ((connectionString === undefined) === (field(iothub, "connectionStringFile") === undefined))
    problems.push({
      path: "/iothub",
      message: "exactly one of connectionString and connectionStringFile is required",
    });
  if (typeof connectionString === "string") {
    try {
      iotHubDeviceId(connectionString, typeof deviceId === "string" ? deviceId : undefined);
    } catch (err) {
      problems.push({ path: "/iothub/connectionString", message: (err as Error).message });
    }
    // A connection string in a file is checked when the agent reads it, by the link.
    const credentials = iotHubCredentialProblem(connectionString, field(iothub, "x509") !== undefined);
    if (credentials !== undefined) problems.push({ path: "/iothub", message: credentials });
  }
  return problems;
});

/**
 * YAML → validated, defaulted, frozen {@link AgentConfig}; relative paths resolved against the
 * file's folder. @throws ConfigError listing every problem at once.
 */
export function parseAgentConfig(text: string, sourceName: string): AgentConfig {
  let data: unknown;
  try {
    data = parse(text) ?? {};
  } catch (err) {
    throw new ConfigError(sourceName, [{ path: "", message: (err as Error).message }], { cause: err });
  }
  const config = validateWithSchema(agentConfigSchema, data, sourceName) as AgentConfig;
  const base = path.dirname(path.resolve(sourceName));
  const at = (p: string | undefined) => (p === undefined ? undefined : path.resolve(base, p));
  const { broker, iothub } = config;
  return Object.freeze({
    ...config,
    ...(broker === undefined
      ? {}
      : {
          broker: Object.freeze({
            ...broker,
            ...(broker.ca === undefined ? {} : { ca: at(broker.ca) }),
            ...(broker.cert === undefined ? {} : { cert: at(broker.cert) }),
            ...(broker.key === undefined ? {} : { key: at(broker.key) }),
            ...(broker.passwordFile === undefined ? {} : { passwordFile: at(broker.passwordFile) }),
          }),
        }),
    ...(iothub === undefined
      ? {}
      : {
          iothub: Object.freeze({
            ...iothub,
            ...(iothub.connectionStringFile === undefined
              ? {}
              : { connectionStringFile: at(iothub.connectionStringFile) }),
            ...(iothub.caFile === undefined ? {} : { caFile: at(iothub.caFile) }),
            ...(iothub.x509 === undefined
              ? {}
              : {
                  x509: Object.freeze({
                    certFile: path.resolve(base, iothub.x509.certFile),
                    keyFile: path.resolve(base, iothub.x509.keyFile),
                    ...(iothub.x509.passphraseFile === undefined
                      ? {}
                      : { passphraseFile: at(iothub.x509.passphraseFile) }),
                  }),
                }),
          }),
        }),
    workDir: path.resolve(base, config.workDir),
    stateFile: path.resolve(base, config.stateFile),
  });
}

export interface Agent {
  readonly session: DeviceSession;
  readonly runtime: ProcessRuntime;
  /** Retained `offline`, clean disconnect, every app stopped within its grace period. */
  stop(): Promise<void>;
}

/** Starts the agent: restores and re-runs persisted pods, then connects (and keeps reconnecting). */
export async function startAgent(config: AgentConfig, options: { logger: Logger }): Promise<Agent> {
  const { logger } = options;
  const { device } = config;
  const bootId = (await readFile(config.bootIdFile, "utf8")).trim();
  const { deviceId, link, endpoint } = await deviceLink(config, logger);
  if (config.stateFile === DEFAULT_STATE_FILE)
    await moveStateFile(LEGACY_STATE_FILE, config.stateFile, logger);
  const store = fileStore(config.stateFile, { logger });
  const saved = await store.load();
  await removeLeftovers({
    workDir: config.workDir,
    keep: new Set(saved?.pods.map((p) => p.uid)),
    logger,
  });
  const birth = await birthInfo(config);
  const runtime = new ProcessRuntime({
    workDir: config.workDir,
    logger,
    capacity: birth.capacity,
    backoff: config.restartBackoff,
    logBytes: config.logs.currentBytes,
    previousLogBytes: config.logs.previousBytes,
  });
  const session = new DeviceSession({
    deviceId,
    link,
    runtime,
    device: birth,
    logger,
    store,
    bootId,
    willDelaySeconds: config.willDelaySeconds,
    reportCoalesceMs: config.reportCoalesceMs,
    onRebootCommand: null,
    ...(device.address === undefined ? {} : { address: device.address }),
  });
  await session.start();
  logger.info({ device: deviceId, ...endpoint, bootId }, "agent started");
  // The agent lives until stop(). Its links wait to reconnect on unref'd timers, so an agent with
  // no connection and no app (an IoT Hub device whose first connect was refused) would otherwise
  // let the process end.
  const keepAlive = setInterval(() => undefined, 2 ** 31 - 1);
  return {
    session,
    runtime,
    stop: async () => {
      try {
        await session.stop();
      } finally {
        clearInterval(keepAlive);
      }
    },
  };
}

/** The one part that differs between MQTT and IoT Hub: the link, and the id it fixes. */
async function deviceLink(
  config: AgentConfig,
  logger: Logger,
): Promise<{ deviceId: string; link: DeviceLink; endpoint: Record<string, string> }> {
  const read = async (file: string | undefined) => (file === undefined ? undefined : readFile(file, "utf8"));
  const { broker, iothub, device } = config;
  if (iothub !== undefined) {
    const [connectionString, ca] = await Promise.all([
      iothub.connectionString ?? read(iothub.connectionStringFile).then((t) => t?.trim() ?? ""),
      read(iothub.caFile),
    ]);
    const deviceId = iotHubDeviceId(connectionString, device.id);
    const { x509 } = iothub;
    const link = new IotHubLink({
      deviceId,
      connectionString,
      transport: iothub.transport,
      heartbeatSeconds: iothub.heartbeatSeconds,
      logger,
      ...(ca === undefined ? {} : { ca }),
      // Read at every connect: a certificate rotated on disk is used from the next reconnect.
      ...(x509 === undefined
        ? {}
        : {
            x509: async () => {
              const [cert, key, passphrase] = await Promise.all([
                readFile(x509.certFile, "utf8"),
                readFile(x509.keyFile, "utf8"),
                read(x509.passphraseFile).then((t) => t?.replace(/\r?\n$/, "")),
              ]);
              return { cert, key, ...(passphrase === undefined ? {} : { passphrase }) };
            },
          }),
    });
    const hub = /(?:^|;)HostName=([^;]*)/.exec(connectionString)?.[1] ?? "";
    return {
      deviceId,
      link,
      endpoint: {
        iothub: hub,
        transport: iothub.transport,
        authentication: x509 === undefined ? "sas" : "x509",
      },
    };
  }
  if (broker === undefined || device.id === undefined)
    throw new Error("the agent has neither broker nor iothub");
  const [ca, cert, key, password] = await Promise.all([
    read(broker.ca),
    read(broker.cert),
    read(broker.key),
    read(broker.passwordFile).then((t) => t?.trim()),
  ]);
  const transport = new MqttTransport({
    url: broker.url,
    clientId: device.id,
    protocolVersion: broker.protocolVersion,
    keepaliveSeconds: broker.keepaliveSeconds,
    logger,
    ...(ca === undefined ? {} : { ca }),
    ...(cert === undefined ? {} : { cert }),
    ...(key === undefined ? {} : { key }),
    ...(broker.username === undefined ? {} : { username: broker.username }),
    ...(password === undefined ? {} : { password }),
  });
  return {
    deviceId: device.id,
    link: transport.link(device.id),
    endpoint: { broker: withoutCredentials(broker.url) },
  };
}

/**
 * Moves a state file from where an earlier version kept it by default (`from`) to `to`, in a new
 * folder of mode 0700, when `to` does not exist yet; otherwise does nothing.
 */
export async function moveStateFile(from: string, to: string, logger: Logger): Promise<void> {
  const exists = (file: string) =>
    access(file).then(
      () => true,
      () => false,
    );
  if ((await exists(to)) || !(await exists(from))) return;
  await mkdir(path.dirname(to), { recursive: true, mode: 0o700 });
  await rename(from, to);
  logger.info({ from, to }, "moved the agent state file into its own folder");
}

const KUBE_ARCH: Readonly<Record<string, string>> = {
  x64: "amd64",
  arm64: "arm64",
  arm: "arm",
  ia32: "386",
  ppc64: "ppc64le",
  s390x: "s390x",
  riscv64: "riscv64",
};

async function birthInfo(config: AgentConfig): Promise<BirthInfo> {
  const { device } = config;
  const osRelease = await readFile("/etc/os-release", "utf8").catch(() => "");
  const prettyName = /^PRETTY_NAME="?([^"\n]*)"?$/m.exec(osRelease)?.[1];
  return {
    deviceClass: device.deviceClass,
    os: "linux",
    arch: KUBE_ARCH[process.arch] ?? process.arch,
    ...(device.zone === undefined ? {} : { zone: device.zone }),
    labels: device.labels,
    capacity: {
      cpu: String(os.availableParallelism()),
      memory: `${Math.floor(os.totalmem() / 1024 / 1024)}Mi`,
      pods: "110",
      ...device.capacity,
    },
    addresses: [
      ...(device.address === undefined ? [] : [{ type: "InternalIP" as const, address: device.address }]),
      { type: "Hostname" as const, address: os.hostname() },
    ],
    ...(prettyName ? { osImage: prettyName.slice(0, 256) } : {}),
    kernelVersion: os.release().slice(0, 256),
    capabilities: {
      maxMessageBytes: device.maxMessageBytes,
      encodings: ["json"],
      runtime: "process",
      // IoT Hub carries no logs or exec sessions (docs/iothub.md, "Not carried yet").
      logs: config.iothub === undefined,
      exec: config.iothub === undefined,
      // Node.js has no pseudo-terminal without a native addon: exec with -t is refused.
      tty: false,
      stats: true,
      statsIntervalSeconds: config.statsIntervalSeconds,
      maxSessions: config.maxSessions,
      // It has a wall clock too, and checks both (docs/protocol.md § 7).
      commandTtl: true,
    },
  };
}
