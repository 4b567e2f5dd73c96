/**
 * A {@link DeviceLink} over Azure IoT Hub (`azure-iot-device` on its MQTT transport, over TLS or
 * over WebSockets): the unchanged {@link DeviceSession} runs over it, the link translating the
 * protocol's topics onto the device twin, direct methods and device-to-cloud messages.
 * docs/iothub.md ("Mapping onto IoT Hub") is the contract the provider implements the other half of.
 *
 *   const link = new IotHubLink({ deviceId, connectionString, logger });
 *   const session = new DeviceSession({ deviceId, link, runtime, device, logger });
 *   // X.509: connectionString "HostName=…;DeviceId=…;x509=true", x509: () => readCertAndKey()
 *
 * - Credentials: a SAS key in the connection string (the SDK renews its tokens), or an X.509
 *   certificate and key that `x509()` gives at each connect, so a renewed certificate is used
 *   from the next connect on. `GatewayHostName` is honoured with both (the SDK drops it for
 *   `x509=true` connection strings, so the link builds the X.509 client itself).
 * - Every connect is a fresh SDK client: it subscribes to desired patches, then reads the full twin,
 *   and delivers the desired document as the retained message of the `desired` subscription. A
 *   patch is merged into the link's own copy of the desired section only when its `$version` is the
 *   next one; an older or equal one is ignored, a gap (a patch missed) makes it read the full twin
 *   again. The SDK merges every patch whatever its version and never re-reads by itself.
 * - Documents travel in the twin as JSON text cut into parts ({@link encodeTwinDocument}), since
 *   twin keys may not hold `.` or `$` (pod labels do), nesting stops at 10 levels and strings at
 *   4 KB.
 * - Retained `state` and `reported` and desired `ack`s become reported properties; a write that
 *   would take the reported section over 32 KB fails the publish before it is sent.
 * - No last will: while up, a heartbeat reported property; the will the session arms is reported
 *   at connect for the provider to assume once the heartbeat goes stale.
 */
import azureIotDevice, {
  type DeviceMethodRequest,
  type DeviceMethodResponse,
  type Twin,
} from "azure-iot-device";
import { Mqtt, MqttWs } from "azure-iot-device-mqtt";
import type { Logger } from "pino";
import { retryDelay } from "../base/backoff.ts";
import { systemClock, type Clock } from "../base/clock.ts";
import {
  decodeTwinDocument,
  encodeTwinDocument,
  IOTHUB_MAPPING,
  TWIN_SECTION_LIMIT_BYTES,
  type TwinDocument,
} from "../protocol/iothub-twin.ts";
import { TOPIC_ROOT, topics } from "../protocol/topics.ts";
import type { DeviceLink, LinkHandlers, PublishOptions } from "./link.ts";

// A CommonJS module: Node gives its exports as the default import only (named imports fail).
const { Client, ConnectionString, Message, X509AuthenticationProvider } = azureIotDevice;
type Client = azureIotDevice.Client;

// The mapping moved to src/protocol/ so the provider shares it; these exports stay for callers here.
export {
  decodeTwinDocument,
  encodeTwinDocument,
  IOTHUB_MAPPING,
  TWIN_SECTION_LIMIT_BYTES,
  type TwinDocument,
} from "../protocol/iothub-twin.ts";

/** Room kept in the reported section for the presence heartbeat and the section's `$version`. */
const HEARTBEAT_ALLOWANCE_BYTES = 256;

/** An X.509 client certificate (PEM, with any intermediates after it) and its private key. */
export interface X509Credentials {
  readonly cert: string;
  readonly key: string;
  /** Of an encrypted key. */
  readonly passphrase?: string;
}

/**
 * MQTT over TLS (port 8883) or MQTT over WebSockets (`wss://…:443/$iothub/websocket`, for networks
 * that open only 443). Both carry SAS and X.509 alike.
 */
export type IotHubTransport = "mqtt" | "mqttWs";

export interface IotHubLinkOptions {
  readonly deviceId: string;
  /**
   * A device connection string, `HostName=…;DeviceId=…;` then `SharedAccessKey=…` or, with
   * `x509`, `x509=true`; optional `GatewayHostName`.
   */
  readonly connectionString: string;
  /**
   * The X.509 certificate and key, asked for at each connect (read them from their files there,
   * so a rotated certificate is picked up on reconnect). Exactly when the connection string says
   * `x509=true`. A failure counts as a failed connect: logged, and retried after `reconnectMs`.
   */
  readonly x509?: () => Promise<X509Credentials>;
  /** Default `mqtt`. */
  readonly transport?: IotHubTransport;
  /** PEM of a CA to trust besides the system's (the local emulator's). */
  readonly ca?: string;
  /** Seconds between presence heartbeats while up. Default 60. */
  readonly heartbeatSeconds?: number;
  /** Delay before connecting again after a failure or a drop. Default 2000. */
  readonly reconnectMs?: number;
  /** How long a command method waits for the session's first ack before answering 202. Default 4000. */
  readonly methodAnswerMs?: number;
  readonly clock?: Clock;
  /** For the heartbeat's jitter; default Math.random. */
  readonly random?: () => number;
  readonly logger: Logger;
}

type Section = Record<string, unknown>;

function parseObject(payload: Buffer): Section {
  try {
    const value: unknown = JSON.parse(payload.toString());
    return typeof value === "object" && value !== null ? (value as Section) : {};
  } catch {
    return {};
  }
}

/** Merge patch (RFC 7386) as twins apply it: `null` deletes, objects merge, anything else replaces. */
function mergePatch(target: Section, patch: Section): void {
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) Reflect.deleteProperty(target, key);
    else if (typeof value === "object" && !Array.isArray(value)) {
      const current = target[key];
      const into = typeof current === "object" && current !== null ? (current as Section) : {};
      mergePatch(into, value as Section);
      target[key] = into;
    } else target[key] = value;
  }
}

export class IotHubLink implements DeviceLink {
  readonly protocolVersion = 4 as const;
  readonly deviceId: string;
  readonly #o: IotHubLinkOptions;
  readonly #log: Logger;
  readonly #clock: Clock;
  #handlers: LinkHandlers | undefined;
  #client: Client | undefined;
  #twin: Twin | undefined;
  #up = false;
  /** False after disconnect() or close(): no reconnecting until reconnect(). */
  #wanted = false;
  #closed = false;
  /** Bumped per connection attempt: callbacks of an earlier client stop. */
  #attempt = 0;
  #retryTimer: unknown;
  #heartbeatTimer: unknown;
  #heartbeatSeq = 0;
  /** The link's own copy of the desired section, at `#desiredVersion`. */
  #desired: Section = {};
  #desiredVersion = 0;
  /** Patches held while a full read is under way. */
  #held: Section[] | undefined;
  #desiredSubscribed = false;
  /** Our keys of the reported section as last written, for the size check. */
  readonly #reported = new Map<string, TwinDocument>();
  /** The latest write asked for per reported key: an older one still retrying gives way to it. */
  readonly #reportSeq = new Map<string, number>();
  /** Command ids waiting for their first ack: the method's answer. */
  readonly #methodAnswers = new Map<string, (ack: unknown) => void>();

  /** @throws when the connection string's credential form does not fit `x509` (see {@link iotHubCredentialProblem}). */
  constructor(options: IotHubLinkOptions) {
    const problem = iotHubCredentialProblem(options.connectionString, options.x509 !== undefined);
    if (problem !== undefined) throw new Error(`IoT Hub device ${options.deviceId}: ${problem}`);
    this.#o = options;
    this.deviceId = options.deviceId;
    this.#clock = options.clock ?? systemClock;
    this.#log = options.logger.child({ device: options.deviceId, link: "iothub" });
  }

  get up(): boolean {
    return this.#up;
  }

  open(handlers: LinkHandlers): void {
    if (this.#handlers) throw new Error(`link ${this.deviceId} is already open`);
    this.#handlers = handlers;
    this.#wanted = true;
    void this.#connect();
  }

  async publish(topic: string, payload: Buffer, options: PublishOptions): Promise<void> {
    const twin = this.#twin;
    if (!this.#up || !this.#client || !twin) throw new Error("iothub link is down");
    const kind = topic.slice(`${TOPIC_ROOT}/${this.deviceId}/`.length);
    const keys = IOTHUB_MAPPING.reported;
    if (kind === "state" && options.retain) return this.#report(twin, keys.state, payload);
    if (kind === "reported") return this.#report(twin, keys.reported, payload);
    if (kind === "ack") {
      const ack = parseObject(payload) as { kind?: string; commandId?: string };
      if (ack.kind === "ack") return this.#report(twin, keys.ack, payload);
      if (ack.commandId !== undefined) this.#methodAnswers.get(ack.commandId)?.(ack);
    }
    const message = new Message(payload);
    message.contentType = "application/json";
    message.contentEncoding = "utf-8";
    message.properties.add(IOTHUB_MAPPING.kindProperty, kind.split("/")[0] === "io" ? "io" : kind);
    await this.#client.sendEvent(message);
  }

  subscribe(filters: readonly string[]): Promise<void> {
    if (!this.#up) return Promise.reject(new Error("iothub link is down"));
    if (filters.includes(topics.ioInAll(this.deviceId)))
      this.#log.debug("logs and exec sessions are not carried over IoT Hub yet");
    if (filters.includes(topics.desired(this.deviceId))) {
      this.#desiredSubscribed = true;
      // As a broker sends the retained message after SUBACK (MQTT 3.1.1 §3.3.1.3).
      const attempt = this.#attempt;
      setImmediate(() => {
        if (attempt === this.#attempt) this.#deliverDesired();
      });
    }
    return Promise.resolve();
  }

  async disconnect(_options: { abrupt: boolean }): Promise<void> {
    // The SDK has no abrupt close; either way the provider learns of it from the heartbeat.
    this.#wanted = false;
    await this.#drop();
  }

  reconnect(): void {
    if (this.#closed || this.#wanted) return;
    this.#wanted = true;
    void this.#connect();
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#wanted = false;
    await this.#drop();
  }

  async #connect(): Promise<void> {
    const attempt = ++this.#attempt;
    // The will of this connection, written below before the birth: it repeats the seq the birth
    // will carry (docs/protocol.md § 5), as an MQTT will registered at CONNECT does.
    const will = this.#handlers?.will();
    let twin: Twin;
    try {
      const client = await this.#newClient();
      if (attempt !== this.#attempt) return;
      this.#client = client;
      if (this.#o.ca !== undefined) await client.setOptions({ ca: this.#o.ca });
      await client.open();
      twin = await client.getTwin();
      if (attempt !== this.#attempt) return;
      this.#twin = twin;
      // Held from here: the SDK emits the section it read as soon as the listener is added.
      this.#held = [];
      twin.on("properties.desired", (patch: Section) => {
        if (attempt === this.#attempt) this.#onDesiredPatch(patch);
      });
      client.onDeviceMethod(IOTHUB_MAPPING.commandMethod, (request, response) => {
        if (attempt === this.#attempt) this.#onCommand(request, response);
      });
      client.onDeviceMethod(IOTHUB_MAPPING.noticeMethod, (request, response) => {
        if (attempt === this.#attempt) this.#onNotice(request, response);
      });
      client.on("disconnect", () => {
        if (attempt === this.#attempt) void this.#lost(attempt);
      });
      client.on("error", (err: Error) => this.#log.warn({ err: err.message }, "iothub client error"));
      // The full read comes after the subscription to patches, so no patch falls in between.
      await this.#readFullTwin(twin);
      if (attempt !== this.#attempt) return;
      this.#reported.clear();
      const reported = (twin.properties.reported as unknown as Section | undefined) ?? {};
      for (const key of Object.values(IOTHUB_MAPPING.reported)) {
        const value = reported[key];
        if (typeof value === "object" && value !== null) this.#reported.set(key, value as TwinDocument);
      }
      if (will) await this.#report(twin, IOTHUB_MAPPING.reported.will, will.payload);
    } catch (err) {
      if (attempt !== this.#attempt) return;
      this.#log.warn({ err: (err as Error).message }, "iothub connect failed; retrying");
      await this.#lost(attempt);
      return;
    }
    this.#up = true;
    this.#desiredSubscribed = false;
    this.#startHeartbeat(twin);
    this.#handlers?.onUp();
  }

  /** A fresh SDK client on the configured transport, with the X.509 credentials of now when it has them. */
  async #newClient(): Promise<Client> {
    const transport = this.#o.transport === "mqttWs" ? MqttWs : Mqtt;
    if (this.#o.x509 === undefined) return Client.fromConnectionString(this.#o.connectionString, transport);
    const { cert, key, passphrase } = await this.#o.x509();
    const fields = ConnectionString.parse(this.#o.connectionString);
    const provider = new X509AuthenticationProvider({
      host: fields.HostName ?? "",
      deviceId: fields.DeviceId ?? "",
      ...(fields.GatewayHostName === undefined ? {} : { gatewayHostName: fields.GatewayHostName }),
      x509: { cert, key, ...(passphrase === undefined ? {} : { passphrase }) },
    });
    return Client.fromAuthenticationProvider(provider, transport);
  }

  /** The connection ended on its own: down, then a fresh client after `reconnectMs`. */
  async #lost(attempt: number): Promise<void> {
    if (attempt !== this.#attempt) return;
    await this.#drop();
    if (!this.#wanted || this.#closed) return;
    this.#retryTimer = this.#clock.setTimeout(() => {
      if (this.#wanted && attempt + 1 === this.#attempt) void this.#connect();
    }, this.#o.reconnectMs ?? 2_000);
  }

  async #drop(): Promise<void> {
    this.#attempt++;
    this.#clock.clearTimeout(this.#retryTimer);
    this.#clock.clearTimeout(this.#heartbeatTimer);
    const client = this.#client;
    const wasUp = this.#up;
    this.#client = undefined;
    this.#twin = undefined;
    this.#up = false;
    this.#desiredSubscribed = false;
    this.#held = undefined;
    for (const answer of this.#methodAnswers.values()) answer(undefined);
    if (wasUp) this.#handlers?.onDown();
    await client?.close().catch(() => undefined);
  }

  /**
   * Takes the desired section of a full read as the baseline. Patches arriving meanwhile (the SDK
   * also re-emits the whole section it read) are held and then go through the version rules.
   */
  async #readFullTwin(twin: Twin): Promise<void> {
    this.#held ??= [];
    try {
      await twin.get();
      this.#desired = structuredClone(twin.properties.desired);
      this.#desiredVersion = Number(this.#desired.$version ?? 0);
    } finally {
      const held = this.#held;
      this.#held = undefined;
      for (const patch of held) this.#onDesiredPatch(patch);
    }
  }

  /** Versions decide: the next one merges, older ones are ignored, a gap means reading it all again. */
  #onDesiredPatch(patch: Section): void {
    if (this.#held) {
      this.#held.push(structuredClone(patch));
      return;
    }
    const version = Number(patch.$version);
    if (!Number.isInteger(version) || version <= this.#desiredVersion) {
      this.#log.debug({ version, seen: this.#desiredVersion }, "ignored a desired patch that is not newer");
      return;
    }
    if (version > this.#desiredVersion + 1) {
      const twin = this.#twin;
      if (!twin) return;
      this.#log.info({ version, seen: this.#desiredVersion }, "desired patches missed; reading the twin");
      this.#readFullTwin(twin)
        .then(() => this.#deliverDesired())
        .catch((err: unknown) => this.#log.warn({ err: (err as Error).message }, "twin read failed"));
      return;
    }
    mergePatch(this.#desired, patch);
    this.#desiredVersion = version;
    if (IOTHUB_MAPPING.desiredKey in patch) this.#deliverDesired();
  }

  /** The desired document as the retained message; a removed one as a cleared (empty) message. */
  #deliverDesired(): void {
    if (!this.#up || !this.#desiredSubscribed) return;
    const text = decodeTwinDocument(this.#desired[IOTHUB_MAPPING.desiredKey]);
    this.#handlers?.onMessage(topics.desired(this.deviceId), Buffer.from(text ?? ""));
  }

  #onCommand(request: DeviceMethodRequest, response: DeviceMethodResponse): void {
    const command = request.payload as { commandId?: unknown } | null;
    const commandId = command?.commandId;
    if (!this.#up || typeof commandId !== "string" || !/^[A-Za-z0-9._-]{1,128}$/.test(commandId)) {
      void response.send(400, { message: "the payload must be a command message with a commandId" });
      return;
    }
    const timer = this.#clock.setTimeout(() => answer(undefined), this.#o.methodAnswerMs ?? 4_000);
    const answer = (ack: unknown) => {
      this.#methodAnswers.delete(commandId);
      this.#clock.clearTimeout(timer);
      const sent =
        ack === undefined ? response.send(202, { commandId, stage: "pending" }) : response.send(200, ack);
      sent.catch((err: unknown) => this.#log.warn({ err: (err as Error).message }, "method answer failed"));
    };
    this.#methodAnswers.set(commandId, answer);
    this.#handlers?.onMessage(topics.command(this.deviceId, commandId), Buffer.from(JSON.stringify(command)));
  }

  #onNotice(request: DeviceMethodRequest, response: DeviceMethodResponse): void {
    this.#handlers?.onMessage(topics.notice(this.deviceId), Buffer.from(JSON.stringify(request.payload)));
    void response.send(200, {}).catch(() => undefined);
  }

  /** Writes one key of the reported section, refusing what would take the section over 32 KB. */
  async #report(twin: Twin, key: string, payload: Buffer): Promise<void> {
    const previous = this.#reported.get(key);
    const value = encodeTwinDocument(payload.toString(), Number(previous?.n ?? 0));
    const section: Section = { ...Object.fromEntries(this.#reported), [key]: value };
    // The heartbeat's key, `$version` and the braces: a small allowance over what is counted.
    const size = Buffer.byteLength(JSON.stringify(section)) + HEARTBEAT_ALLOWANCE_BYTES;
    if (size > TWIN_SECTION_LIMIT_BYTES)
      throw new Error(
        `${key} refused: the reported section would be ${size} bytes, over IoT Hub's ${TWIN_SECTION_LIMIT_BYTES}-byte twin section limit`,
      );
    const seq = (this.#reportSeq.get(key) ?? 0) + 1;
    this.#reportSeq.set(key, seq);
    // A refused write (429 when the hub's twin-update quota is spent, a timeout) is tried again,
    // with backoff, while this connection lasts: a report lost here would leave devicelet waiting
    // for a status the device has. A newer write of the same key supersedes it.
    for (let failures = 1; ; failures++) {
      try {
        await this.#update(twin, { [key]: value });
        break;
      } catch (err) {
        if (!this.#connectedTo(twin)) throw err;
        if (this.#reportSeq.get(key) !== seq) return;
        const delayMs = retryDelay({ failures, baseMs: 250, maxMs: 10_000 });
        this.#log.debug({ err: (err as Error).message, key, delayMs }, "reported write refused; retrying");
        await new Promise<void>((resolve) => this.#clock.setTimeout(() => resolve(), delayMs));
        if (!this.#connectedTo(twin)) throw err;
        if (this.#reportSeq.get(key) !== seq) return;
      }
    }
    const stored: TwinDocument = Object.fromEntries(Object.entries(value).filter(([, v]) => v !== null));
    this.#reported.set(key, stored);
  }

  /** Whether this connection, the one `twin` belongs to, is still up. */
  #connectedTo(twin: Twin): boolean {
    return this.#up && this.#twin === twin;
  }

  #update(twin: Twin, patch: Section): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const reported = twin.properties.reported as { update(p: Section, done: (err?: Error) => void): void };
      reported.update(patch, (err) => (err ? reject(err) : resolve()));
    });
  }

  #startHeartbeat(twin: Twin): void {
    const seconds = this.#o.heartbeatSeconds ?? 60;
    let failures = 0;
    let lastWritten = this.#clock.now();
    const beat = () => {
      if (!this.#up || this.#twin !== twin) return;
      this.#heartbeatSeq += 1;
      const presence = {
        seq: this.#heartbeatSeq,
        at: new Date(this.#clock.now()).toISOString(),
        intervalSeconds: seconds,
      };
      this.#update(twin, { [IOTHUB_MAPPING.reported.presence]: presence }).then(
        () => {
          failures = 0;
          const now = this.#clock.now();
          // Two intervals without a heartbeat in the twin: the provider may have taken the will
          // for the state (docs/iothub.md), and only a newer birth undoes that.
          if (now - lastWritten > 2 * seconds * 1000 && this.#twin === twin) this.#handlers?.reannounce?.();
          lastWritten = now;
        },
        (err: unknown) => {
          // Two missed heartbeats make the device lost: try again soon, not an interval later.
          failures++;
          this.#log.warn({ err: (err as Error).message, failures }, "presence heartbeat failed; retrying");
          this.#clock.clearTimeout(this.#heartbeatTimer);
          const delayMs = Math.min(seconds * 1000, retryDelay({ failures, baseMs: 1_000, maxMs: 15_000 }));
          this.#heartbeatTimer = this.#clock.setTimeout(beat, delayMs);
        },
      );
      // Between 0.8 and 1 interval: never later than the interval the provider times it by, and
      // devices that connected together (a fleet after an outage) drift apart instead of all
      // writing their twins in the same second every interval.
      const jitter = 1 - 0.2 * (this.#o.random ?? Math.random)();
      this.#heartbeatTimer = this.#clock.setTimeout(beat, seconds * 1000 * jitter);
    };
    beat();
  }
}

/**
 * What is wrong with a device connection string's credential form, given whether X.509
 * credentials come with it; undefined when nothing is. Exactly one credential: a SAS key
 * (`SharedAccessKey`, or a ready `SharedAccessSignature`) without X.509, or `x509=true` with it.
 * Never quotes the key.
 */
export function iotHubCredentialProblem(connectionString: string, withX509: boolean): string | undefined {
  const fields = new Map<string, string>();
  for (const field of connectionString.trim().split(";")) {
    const at = field.indexOf("=");
    if (at > 0) fields.set(field.slice(0, at), field.slice(at + 1));
  }
  const sas = fields.has("SharedAccessKey") || fields.has("SharedAccessSignature");
  const x509 = fields.get("x509")?.toLowerCase() === "true";
  if (sas && withX509)
    return "exactly one of a SAS key and x509 is allowed: the connection string has a SharedAccessKey (or SharedAccessSignature) and x509 (certFile, keyFile) is set too";
  if (sas && x509)
    return "the connection string has both a SharedAccessKey (or SharedAccessSignature) and x509=true";
  if (!sas && !withX509)
    return x509
      ? "the connection string says x509=true, but no x509 certificate and key (certFile, keyFile) are set"
      : "exactly one of a SAS key and x509 is required: the connection string has no SharedAccessKey and x509 (certFile, keyFile) is not set";
  if (withX509 && !x509) return "with x509 (certFile, keyFile), the connection string must say x509=true";
  return undefined;
}
