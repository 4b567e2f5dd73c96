/**
 * The one seam to MQTT.js: a persistent-session connection to the broker with TLS / mutual TLS,
 * jittered exponential reconnect, devicelet's retained bridge presence (birth on every connect,
 * last will `offline`) and a health verdict for the node controller.
 *
 * MQTT clauses it follows: clean session off (3.1.1 §3.1.2.4; on MQTT 5 clean start off plus a
 * session expiry, §3.1.2.11.2) so subscriptions and QoS 1 messages queued while devicelet was away
 * survive; the will is retained (§3.1.2.5–7) and, on MQTT 5 only, delayed (§3.1.3.2.2) so a quick
 * reconnect does not flap the bridge state. Messages in flight when the connection drops are kept
 * in the outgoing store and sent again after reconnecting.
 *
 * Client-id takeover: a broker closes an existing connection when another client connects with the
 * same client id (3.1.1 §3.1.4-2, MQTT 5 §3.1.4-3; on MQTT 5 it first sends DISCONNECT with reason
 * 0x8E "Session taken over", §3.14.2.1). Two devicelet processes with one `broker.clientId` would
 * take the session from each other forever, each reconnecting at once. So a takeover (the 0x8E
 * reason, or on 3.1.1 a connection closed within seconds of its CONNACK) makes the next reconnect
 * wait, longer at each repetition (up to minutes), and is logged as such; a connection that stays
 * up long enough clears the count.
 *
 * ```ts
 * const conn = new MqttConnection({ config: cfg.broker, graceSeconds: 30, bridge, logger });
 * conn.onMessage((topic, payload) => ...);
 * conn.onConnect(({ sessionPresent }) => conn.subscribe([...]));
 * await conn.start(signal);          // resolves at the first CONNACK
 * await conn.publish(topic, buf, { qos: 1, retain: true });
 * ```
 */
import { readFile } from "node:fs/promises";
import mqtt, { type IClientOptions, type IClientPublishOptions, type MqttClient } from "mqtt";
import type { Logger } from "pino";
import { retryDelay } from "../../src/base/backoff.ts";
import { withoutCredentials } from "../../src/log/redact.ts";
import type { MqttConfig } from "./schema.ts";
import { connectionInsecurity } from "./secret-gate.ts";

export interface PublishOptions {
  readonly qos: 0 | 1;
  readonly retain: boolean;
  /** MQTT 5 only (ignored on 3.1.1): the broker drops the message after this many seconds. */
  readonly messageExpirySeconds?: number;
}

/** The connection as the rest of the provider sees it; small enough to fake in a test. */
export interface BrokerConnection {
  readonly protocolVersion: 4 | 5;
  /**
   * Whether the transport is TLS (mqtts:// or wss://) with the broker's certificate verified: only
   * then may Secrets travel (see secret-gate.ts).
   */
  readonly secure: boolean;
  isConnected(): boolean;
  /** `retained`: delivered because of a (re-)subscription, not published just now (MQTT §3.3.1.3). */
  onMessage(listener: (topic: string, payload: Buffer, retained: boolean) => void): void;
  onConnect(listener: (info: { readonly sessionPresent: boolean }) => void): void;
  onDisconnect(listener: () => void): void;
  subscribe(filters: readonly string[]): Promise<void>;
  unsubscribe(filters: readonly string[]): Promise<void>;
  /** Resolves at PUBACK for QoS 1 (after reconnecting, if need be); never times out by itself. */
  publish(topic: string, payload: Buffer, options: PublishOptions): Promise<void>;
  /**
   * Whether a publish to `topic` is still waiting for its turn in a rate budget of devicelet's own
   * (IoT Hub's twin-update share), not yet sent. Such a wait says nothing about the transport, so
   * publish timeouts do not count it. Absent: publishes never wait so (MQTT).
   */
  waitingForTurn?(topic: string): boolean;
}

/**
 * A whole transport as the provider runs it: the {@link BrokerConnection} plus its lifecycle and
 * health. {@link MqttConnection} is one; providers/iothub's `HubConnection` presents Azure IoT Hub
 * (twins, direct methods, device-to-cloud events) the same way, so the same provider parts run on
 * either (docs/iothub.md).
 */
export interface TransportConnection extends BrokerConnection {
  /** Resolves once connected the first time; keeps reconnecting until `stop`. */
  start(signal: AbortSignal): Promise<void>;
  /** Says goodbye where the transport has a way to, and closes. Idempotent. */
  stop(): Promise<void>;
  /** The transport's health for the node controller; never node readiness. */
  health(): { ready: boolean; message: string };
}

export interface MqttConnectionOptions {
  readonly config: MqttConfig["broker"];
  /** Seconds disconnected before health turns not ready. */
  readonly graceSeconds: number;
  /** devicelet's retained presence: topic and the payload for `online` / `offline`. */
  readonly bridge: { readonly topic: string; readonly payload: (state: "online" | "offline") => Buffer };
  readonly logger: Logger;
  /**
   * MQTT 5 only: the CONNECT Maximum Packet Size (§3.1.2.11.4), so the broker never forwards a
   * larger packet to devicelet (§3.1.2-25: it discards it instead). Ignored on 3.1.1.
   */
  readonly maximumPacketSize?: number;
  readonly random?: () => number;
  readonly now?: () => number;
}

/** The broker refused some filters of a SUBSCRIBE (SUBACK failure codes); the rest are held. */
export class SubscriptionsRefused extends Error {
  readonly filters: readonly string[];
  constructor(filters: readonly string[]) {
    super(`broker refused subscriptions: ${filters.join(", ")}`);
    this.name = "SubscriptionsRefused";
    this.filters = filters;
  }
}

/** MQTT 5 DISCONNECT reason code "Session taken over" (§3.14.2.1). */
const SESSION_TAKEN_OVER = 0x8e;
/** A connection the broker closes sooner than this after CONNACK counts as taken over (3.1.1). */
const SHORT_LIVED_MS = 5_000;
/** Wait before reconnecting after a takeover: from this, doubling at each repetition, up to the max. */
const TAKEOVER_MIN_DELAY_MS = 1_000;
const TAKEOVER_MAX_DELAY_MS = 120_000;
/** A connection up this long clears the takeover count. */
const TAKEOVER_CLEAR_MS = 2 * TAKEOVER_MAX_DELAY_MS;

/**
 * Wait before reconnect `attempt` (0-based): equal jitter (half the capped step fixed, half random),
 * so a fleet that lost the broker together spreads out, yet never reconnects in a hot loop.
 */
const reconnectDelay = (attempt: number, minMs: number, maxMs: number, random: () => number) =>
  Math.round(retryDelay({ failures: attempt + 1, baseMs: minMs, maxMs, jitter: "equal", random }));

export class MqttConnection implements TransportConnection {
  readonly protocolVersion: 4 | 5;
  readonly secure: boolean;
  readonly #o: MqttConnectionOptions;
  readonly #log: Logger;
  /** The broker URL as it may be shown (logs, the node condition): without `user:password@`. */
  readonly #shownUrl: string;
  readonly #now: () => number;
  readonly #random: () => number;
  readonly #messageListeners: ((topic: string, payload: Buffer, retained: boolean) => void)[] = [];
  readonly #connectListeners: ((info: { sessionPresent: boolean }) => void)[] = [];
  readonly #disconnectListeners: (() => void)[] = [];
  #client: MqttClient | undefined;
  #attempt = 0;
  #reconnectTimer: NodeJS.Timeout | undefined;
  #everConnected = false;
  #disconnectedSince: number;
  #lastError = "";
  #stopping = false;
  /** When the current connection got its CONNACK; undefined while disconnected. */
  #connectedAt: number | undefined;
  /** Takeovers in a row (reset by a connection that stays up for TAKEOVER_CLEAR_MS). */
  #takeovers = 0;
  #takenOver = false;

  constructor(options: MqttConnectionOptions) {
    this.#o = options;
    this.#log = options.logger;
    this.#now = options.now ?? Date.now;
    this.#random = options.random ?? Math.random;
    this.protocolVersion = options.config.protocolVersion;
    this.secure = connectionInsecurity(options.config) === undefined;
    this.#shownUrl = withoutCredentials(options.config.url);
    this.#disconnectedSince = this.#now();
  }

  isConnected(): boolean {
    return this.#client?.connected === true;
  }

  onMessage(listener: (topic: string, payload: Buffer, retained: boolean) => void): void {
    this.#messageListeners.push(listener);
  }
  onConnect(listener: (info: { sessionPresent: boolean }) => void): void {
    this.#connectListeners.push(listener);
  }
  onDisconnect(listener: () => void): void {
    this.#disconnectListeners.push(listener);
  }

  /** Connects and resolves at the first CONNACK; keeps reconnecting until the signal aborts. */
  async start(signal: AbortSignal): Promise<void> {
    const options = await this.#clientOptions();
    const client = mqtt.connect(this.#o.config.url, options);
    this.#client = client;
    const first = new Promise<void>((resolve, reject) => {
      client.once("connect", () => resolve());
      signal.addEventListener("abort", () => reject(signal.reason as Error), { once: true });
    });
    client.on("connect", (connack) => {
      this.#attempt = 0;
      this.#connectedAt = this.#now();
      this.#takenOver = false;
      this.#everConnected = true;
      this.#lastError = "";
      this.#log.info(
        { url: this.#shownUrl, clientId: this.#o.config.clientId, sessionPresent: connack.sessionPresent },
        "connected to broker",
      );
      // Bridge birth: retained, so devices connecting later learn that devicelet is up.
      client.publish(
        this.#o.bridge.topic,
        this.#o.bridge.payload("online"),
        { qos: 1, retain: true },
        (err) => {
          if (err) this.#log.warn({ err }, "bridge presence publish failed");
        },
      );
      for (const l of this.#connectListeners) l({ sessionPresent: connack.sessionPresent });
    });
    client.on("message", (topic, payload, packet) => {
      for (const l of this.#messageListeners) l(topic, payload, packet.retain);
    });
    client.on("disconnect", (packet) => {
      if (packet.reasonCode === SESSION_TAKEN_OVER) this.#takenOver = true;
    });
    client.on("error", (err) => {
      this.#lastError = err.message;
      this.#log.warn({ err: err.message }, "broker connection error");
    });
    client.on("close", () => {
      const takeoverDelay = this.#takeoverDelay();
      if (this.#reconnectTimer === undefined && !this.#stopping) {
        if (this.#everConnected && this.#attempt === 0) {
          this.#disconnectedSince = this.#now();
          this.#log.warn({ url: this.#shownUrl }, "disconnected from broker; reconnecting");
          for (const l of this.#disconnectListeners) l();
        }
        this.#scheduleReconnect(takeoverDelay);
      }
    });
    signal.addEventListener("abort", () => void this.stop(), { once: true });
    await first;
  }

  /** Publishes the bridge `offline` presence and closes the connection. Idempotent. */
  async stop(): Promise<void> {
    if (this.#stopping) return;
    this.#stopping = true;
    clearTimeout(this.#reconnectTimer);
    const client = this.#client;
    if (!client) return;
    if (client.connected) {
      await Promise.race([
        client.publishAsync(this.#o.bridge.topic, this.#o.bridge.payload("offline"), {
          qos: 1,
          retain: true,
        }),
        new Promise((resolve) => setTimeout(resolve, 2_000).unref()),
      ]).catch(() => undefined);
    }
    await client.endAsync(!client.connected).catch(() => undefined);
  }

  /**
   * Ready while connected, and for `graceSeconds` after losing the connection or after starting to
   * connect (a broker restart or a slow first connect must not taint every node); the message says
   * why not. This is the transport's health only: node readiness never depends on it.
   */
  health(): { ready: boolean; message: string } {
    if (this.isConnected()) return { ready: true, message: `connected to ${this.#shownUrl}` };
    const away = Math.round((this.#now() - this.#disconnectedSince) / 1000);
    const why = this.#lastError ? `: ${this.#lastError}` : "";
    const ready = away < this.#o.graceSeconds;
    if (!this.#everConnected) return { ready, message: `connecting to ${this.#shownUrl} for ${away}s${why}` };
    return { ready, message: `disconnected from ${this.#shownUrl} for ${away}s, reconnecting${why}` };
  }

  /**
   * One SUBSCRIBE with every filter (QoS 1); resolves at the SUBACK.
   * @throws SubscriptionsRefused naming the filters whose SUBACK return code is a failure (0x80 on
   * 3.1.1, §3.9.3; any reason code of 0x80 or more on MQTT 5, §3.9.3: not authorized, quota
   * exceeded, …); the other filters of the packet are subscribed.
   */
  async subscribe(filters: readonly string[]): Promise<void> {
    const client = this.#need();
    const granted = await client.subscribeAsync([...filters], { qos: 1 });
    const refused = granted.filter((g) => g.qos >= 0x80);
    if (refused.length > 0) throw new SubscriptionsRefused(refused.map((g) => g.topic));
  }

  async unsubscribe(filters: readonly string[]): Promise<void> {
    await this.#need().unsubscribeAsync([...filters]);
  }

  async publish(topic: string, payload: Buffer, options: PublishOptions): Promise<void> {
    const publishOptions: IClientPublishOptions = { qos: options.qos, retain: options.retain };
    if (this.protocolVersion === 5 && options.messageExpirySeconds !== undefined)
      publishOptions.properties = {
        messageExpiryInterval: Math.max(1, Math.ceil(options.messageExpirySeconds)),
      };
    await this.#need().publishAsync(topic, payload, publishOptions);
  }

  #need(): MqttClient {
    if (!this.#client || this.#stopping) throw new Error("broker connection is not running");
    return this.#client;
  }

  /**
   * On a connection closing: whether it was taken over by a client with the same id, and if so how
   * long to wait before reconnecting (undefined: the usual backoff).
   */
  #takeoverDelay(): number | undefined {
    const since = this.#connectedAt;
    this.#connectedAt = undefined;
    if (since === undefined) return undefined; // a failed attempt, not a lost connection
    const lived = this.#now() - since;
    const byReason = this.#takenOver;
    const takenOver = byReason || lived < SHORT_LIVED_MS;
    this.#takenOver = false;
    if (!takenOver || this.#stopping) {
      if (lived >= TAKEOVER_CLEAR_MS) this.#takeovers = 0;
      return undefined;
    }
    if (lived >= TAKEOVER_CLEAR_MS) this.#takeovers = 0;
    const delay = reconnectDelay(
      this.#takeovers++,
      TAKEOVER_MIN_DELAY_MS,
      TAKEOVER_MAX_DELAY_MS,
      this.#random,
    );
    this.#log.warn(
      {
        clientId: this.#o.config.clientId,
        takeovers: this.#takeovers,
        connectedMs: lived,
        delayMs: delay,
        reason: byReason ? "DISCONNECT 0x8E session taken over" : "closed within seconds of CONNACK",
      },
      "broker session taken over by another client with the same client id (a second devicelet with this broker.clientId?); waiting before reconnecting",
    );
    return delay;
  }

  #scheduleReconnect(delayMs?: number): void {
    const { minDelayMs, maxDelayMs } = this.#o.config.reconnect;
    const backoff = reconnectDelay(this.#attempt++, minDelayMs, maxDelayMs, this.#random);
    const delay = delayMs ?? backoff;
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = undefined;
      const client = this.#client;
      if (!client || this.#stopping || client.connected) return;
      // Keep the stores: QoS 1 messages in flight are sent again once connected.
      client.reconnect({ incomingStore: client.incomingStore, outgoingStore: client.outgoingStore });
    }, delay);
  }

  async #clientOptions(): Promise<IClientOptions> {
    const c = this.#o.config;
    const v5 = c.protocolVersion === 5;
    const file = (path: string | undefined) => (path === undefined ? undefined : readFile(path));
    const [ca, cert, key, password] = await Promise.all([
      file(c.tls.ca),
      file(c.tls.cert),
      file(c.tls.key),
      file(c.passwordFile),
    ]);
    return {
      protocolVersion: c.protocolVersion,
      clientId: c.clientId,
      clean: false,
      keepalive: c.keepaliveSeconds,
      connectTimeout: c.connectTimeoutMs,
      // Reconnects are ours (jittered backoff); MQTT.js would retry at a fixed period.
      reconnectPeriod: 0,
      resubscribe: false,
      ...(c.username === undefined ? {} : { username: c.username }),
      ...(password === undefined ? {} : { password: password.toString("utf8").trim() }),
      ...(ca === undefined ? {} : { ca }),
      ...(cert === undefined ? {} : { cert }),
      ...(key === undefined ? {} : { key }),
      ...(c.tls.servername === undefined ? {} : { servername: c.tls.servername }),
      rejectUnauthorized: c.tls.rejectUnauthorized,
      ...(v5
        ? {
            properties: {
              sessionExpiryInterval: c.sessionExpirySeconds,
              ...(this.#o.maximumPacketSize === undefined
                ? {}
                : { maximumPacketSize: this.#o.maximumPacketSize }),
            },
          }
        : {}),
      will: {
        topic: this.#o.bridge.topic,
        payload: this.#o.bridge.payload("offline"),
        qos: 1,
        retain: true,
        ...(v5 ? { properties: { willDelayInterval: c.willDelaySeconds } } : {}),
      },
    };
  }
}
