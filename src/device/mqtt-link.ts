/**
 * {@link DeviceLink}s over MQTT.js: one `MqttTransport` is one MQTT connection. Its primary link
 * belongs to the device that owns the connection (and its will); a gateway adds one bridged link
 * per child microcontroller, so a gateway and all its children share a single connection and go
 * down together. This is the only file of the device side that imports `mqtt`.
 *
 *   const transport = new MqttTransport({ url, clientId: "gw-1", logger });
 *   const gatewayLink = transport.link("gw-1");
 *   const childLink = transport.bridged("gw-1-c-0");
 *
 * Session semantics (docs/protocol.md § 5): every CONNECT starts a clean session (MQTT 3.1.1
 * CleanSession = 1, MQTT 5 Clean Start = 1), so the broker never queues `desired` documents or
 * commands for the device while it is away: on each connection the device gets the retained
 * document once, from its SUBSCRIBE, and nothing older. On MQTT 5 the connection also carries a
 * Session Expiry Interval of at least the will's delay: the Will Delay Interval only holds back
 * the will while the session lives, and a new connection for the same client id within that delay
 * cancels the will, clean start or not (MQTT 5 §3.1.2.5, §3.1.3.2.2), so a quick reconnect still
 * does not flap.
 */
import mqtt, { type IClientOptions, type MqttClient } from "mqtt";
import type { Logger } from "pino";
import { TOPIC_ROOT } from "../protocol/topics.ts";
import type { DeviceLink, LinkHandlers, LinkWill, PublishOptions } from "./link.ts";

export interface MqttTransportOptions {
  /** `mqtt://`, `mqtts://`, `ws://` or `wss://`. */
  readonly url: string;
  /** The owning device's id: also the MQTT client id, so a second connection takes over the first. */
  readonly clientId: string;
  /** Default 5; 4 (3.1.1) for brokers without MQTT 5 such as aedes. */
  readonly protocolVersion?: 4 | 5;
  /** PEM: CA to verify the broker with; client certificate and key for mutual TLS. */
  readonly ca?: string | Buffer;
  readonly cert?: string | Buffer;
  readonly key?: string | Buffer;
  readonly username?: string;
  readonly password?: string;
  /** Default 60. */
  readonly keepaliveSeconds?: number;
  /**
   * MQTT 5 only: how long the broker keeps the session after a drop, raised to the will's delay
   * when that is longer (the delay holds only while the session lives). Default 120.
   */
  readonly sessionExpirySeconds?: number;
  /** Delay between reconnect attempts. Default 2000. */
  readonly reconnectMs?: number;
  readonly logger: Logger;
}

/** One MQTT connection carrying one device, or a gateway and its bridged children. */
export class MqttTransport {
  readonly client: MqttClient;
  readonly #logger: Logger;
  #version: 4 | 5;
  readonly #sessionExpirySeconds: number;
  #primary: PrimaryLink | undefined;
  readonly #bridged = new Map<string, BridgedLink>();
  #up = false;
  #opened = false;
  /** Children are up once the owner is born (or at connect when there is no owner). */
  #childrenUp = false;

  constructor(options: MqttTransportOptions) {
    this.#logger = options.logger;
    this.#version = options.protocolVersion ?? 5;
    this.#sessionExpirySeconds = options.sessionExpirySeconds ?? 120;
    const clientOptions: IClientOptions = {
      clientId: options.clientId,
      protocolVersion: this.#version,
      clean: true,
      keepalive: options.keepaliveSeconds ?? 60,
      reconnectPeriod: options.reconnectMs ?? 2_000,
      connectTimeout: 10_000,
      manualConnect: true,
      // The sessions subscribe again themselves on every connect, before their birth.
      resubscribe: false,
      rejectUnauthorized: true,
      ...(this.#version === 5 ? { properties: { sessionExpiryInterval: this.#sessionExpirySeconds } } : {}),
      ...(options.ca === undefined ? {} : { ca: options.ca }),
      ...(options.cert === undefined ? {} : { cert: options.cert }),
      ...(options.key === undefined ? {} : { key: options.key }),
      ...(options.username === undefined ? {} : { username: options.username }),
      ...(options.password === undefined ? {} : { password: options.password }),
    };
    this.client = mqtt.connect(options.url, clientOptions);
    this.client.on("reconnect", () => {
      this.#applyWill();
    });
    this.client.on("connect", () => {
      this.#up = true;
      const primary = this.#primary?.handlers;
      if (primary) primary.onUp();
      else this.releaseChildren();
    });
    this.client.on("close", () => {
      if (!this.#up) return;
      this.#up = false;
      const childrenWereUp = this.#childrenUp;
      this.#childrenUp = false;
      this.#primary?.handlers?.onDown();
      if (childrenWereUp)
        for (const child of this.#bridged.values()) if (child.attached) child.handlers?.onDown();
    });
    this.client.on("error", (err) => {
      this.#logger.warn({ err: err.message, clientId: options.clientId }, "mqtt connection error");
    });
    this.client.on("message", (topic, payload) => {
      this.#route(topic, payload);
    });
  }

  get up(): boolean {
    return this.#up;
  }

  get protocolVersion(): 4 | 5 {
    return this.#version;
  }

  /** Whether bridged children may use the connection: up, and the owner born. */
  get childrenUp(): boolean {
    return this.#childrenUp;
  }

  /**
   * @internal The owner is born: bridged children go up (and publish their births) now, and every
   * child that became unreachable while the connection was down gets its `lost` published, so no
   * child's retained state still says `online` under a reborn gateway (docs/protocol.md § 8).
   */
  releaseChildren(): void {
    if (!this.#up || this.#childrenUp) return;
    this.#childrenUp = true;
    for (const child of this.#bridged.values()) {
      if (child.attached) child.handlers?.onUp();
      else child.publishOwedLost();
    }
  }

  /** The link of the device that owns this connection and its will. Once per transport. */
  link(deviceId: string): DeviceLink {
    if (this.#primary)
      throw new Error(`MqttTransport: the primary link already exists (${this.#primary.deviceId})`);
    this.#primary = new PrimaryLink(this, deviceId);
    return this.#primary;
  }

  /** A link for a child device reached through this connection (a gateway's microcontroller). */
  bridged(deviceId: string): DeviceLink {
    if (this.#bridged.has(deviceId)) throw new Error(`MqttTransport: ${deviceId} is already bridged`);
    const link = new BridgedLink(this, deviceId);
    this.#bridged.set(deviceId, link);
    return link;
  }

  /**
   * Ends the connection (abruptly: no DISCONNECT, so the broker sends the will). A clean end waits
   * up to `drainMs` for in-flight QoS 1 messages. Whatever is still in flight is dropped (its
   * publish rejects): MQTT.js would otherwise keep waiting for acks that a later reconnect(),
   * which starts with empty stores, never brings, and a clean end would wait forever. The session
   * re-sends state after its next birth, so nothing of value is lost.
   */
  async end(abrupt: boolean, drainMs = 5_000): Promise<void> {
    const inFlight = () => Object.keys(this.client.outgoing).length;
    if (!abrupt && this.#up && inFlight() > 0) {
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          this.client.off("packetreceive", onPacket);
          resolve();
        };
        const check = () => {
          if (inFlight() === 0) done();
        };
        // Acks are handled after the packet event: look again once this turn is over.
        const onPacket = () => setImmediate(check);
        const timer = setTimeout(done, drainMs);
        this.client.on("packetreceive", onPacket);
      });
    }
    for (const id of Object.keys(this.client.outgoing)) this.client.removeOutgoingMessage(Number(id));
    await this.client.endAsync(abrupt);
  }

  /** @internal */ forget(deviceId: string): void {
    this.#bridged.delete(deviceId);
  }

  /**
   * @internal First connect, or reconnect after end(); a no-op while connected or while MQTT.js
   * is already retrying by itself.
   */
  connectNow(): void {
    if (!this.#opened) {
      this.#opened = true;
      this.#applyWill();
      this.client.connect();
    } else if (!this.client.connected && (this.client.disconnected || this.client.disconnecting)) {
      this.client.reconnect();
    }
  }

  /** Sets the CONNECT's will from the primary link, right before MQTT.js builds the packet. */
  #applyWill(): void {
    const will = this.#primary?.handlers?.will();
    if (!will) {
      delete this.client.options.will;
      return;
    }
    if (this.#version === 5 && will.delaySeconds !== undefined) {
      this.client.options.properties = {
        ...this.client.options.properties,
        sessionExpiryInterval: Math.max(this.#sessionExpirySeconds, will.delaySeconds),
      };
    }
    this.client.options.will = {
      topic: will.topic,
      payload: will.payload,
      qos: 1,
      retain: true,
      ...(this.#version === 5 && will.delaySeconds !== undefined
        ? { properties: { willDelayInterval: will.delaySeconds } }
        : {}),
    };
  }

  #route(topic: string, payload: Buffer): void {
    const parts = topic.split("/");
    if (`${parts[0]}/${parts[1]}` !== TOPIC_ROOT) return;
    const id = parts[2];
    if (id === "_bridge") {
      this.#primary?.handlers?.onMessage(topic, payload);
      for (const child of this.#bridged.values())
        if (child.attached) child.handlers?.onMessage(topic, payload);
      return;
    }
    const primary = this.#primary;
    if (primary && id === primary.deviceId) {
      primary.handlers?.onMessage(topic, payload);
      return;
    }
    const child = id === undefined ? undefined : this.#bridged.get(id);
    if (child?.attached) child.handlers?.onMessage(topic, payload);
  }
}

class PrimaryLink implements DeviceLink {
  handlers: LinkHandlers | undefined;
  readonly #transport: MqttTransport;
  readonly deviceId: string;
  constructor(transport: MqttTransport, deviceId: string) {
    this.#transport = transport;
    this.deviceId = deviceId;
  }
  get protocolVersion(): 4 | 5 {
    return this.#transport.protocolVersion;
  }
  get up(): boolean {
    return this.#transport.up;
  }
  open(handlers: LinkHandlers): void {
    if (this.handlers) throw new Error(`link ${this.deviceId} is already open`);
    this.handlers = handlers;
    this.#transport.connectNow();
  }
  publish(topic: string, payload: Buffer, options: PublishOptions): Promise<void> {
    return publishOn(this.#transport, topic, payload, options);
  }
  async subscribe(filters: readonly string[]): Promise<void> {
    await this.#transport.client.subscribeAsync([...filters], { qos: 1 });
  }
  async disconnect(options: { abrupt: boolean }): Promise<void> {
    await this.#transport.end(options.abrupt);
  }
  reconnect(): void {
    this.#transport.connectNow();
  }
  born(): void {
    this.#transport.releaseChildren();
  }
  async close(): Promise<void> {
    await this.#transport.end(false);
  }
}

/**
 * A child's link through its gateway's connection. A child cannot have a broker-side will (one
 * per connection), so when a child drops abruptly its gateway publishes the child's will for it;
 * when the gateway's connection drops, the children go down with it silently, and devicelet infers
 * them lost from the gateway's will (their births name the gateway).
 */
class BridgedLink implements DeviceLink {
  handlers: LinkHandlers | undefined;
  attached = true;
  /** Detached while the connection was down: its `lost` is still to be published. */
  #owesLost = false;
  readonly #transport: MqttTransport;
  readonly #filters = new Set<string>();
  readonly deviceId: string;
  constructor(transport: MqttTransport, deviceId: string) {
    this.#transport = transport;
    this.deviceId = deviceId;
  }
  get protocolVersion(): 4 | 5 {
    return this.#transport.protocolVersion;
  }
  get up(): boolean {
    return this.attached && this.#transport.childrenUp;
  }
  open(handlers: LinkHandlers): void {
    if (this.handlers) throw new Error(`link ${this.deviceId} is already open`);
    this.handlers = handlers;
    if (this.up) queueMicrotask(() => this.handlers?.onUp());
  }
  publish(topic: string, payload: Buffer, options: PublishOptions): Promise<void> {
    if (!this.attached) return Promise.reject(new Error(`${this.deviceId} is disconnected from its gateway`));
    return publishOn(this.#transport, topic, payload, options);
  }
  async subscribe(filters: readonly string[]): Promise<void> {
    for (const f of filters) this.#filters.add(f);
    await this.#transport.client.subscribeAsync([...filters], { qos: 1 });
  }
  async disconnect(options: { abrupt: boolean }): Promise<void> {
    if (!this.attached) return;
    const wasUp = this.up;
    this.attached = false;
    // Nothing can be published for it now; its gateway says it is lost once born again.
    this.#owesLost = !wasUp;
    if (wasUp) {
      const handlers = this.handlers;
      const will: LinkWill | undefined = options.abrupt
        ? (handlers?.lost?.() ?? handlers?.will())
        : undefined;
      const filters = [...this.#filters];
      this.#filters.clear();
      await Promise.all([
        will ? publishOn(this.#transport, will.topic, will.payload, { retain: true }) : undefined,
        filters.length > 0 ? this.#transport.client.unsubscribeAsync(filters) : undefined,
      ]).catch(() => undefined);
      this.handlers?.onDown();
    }
  }
  /** @internal Publishes the `lost` owed since it was detached while the connection was down. */
  publishOwedLost(): void {
    if (!this.#owesLost) return;
    this.#owesLost = false;
    const will = this.handlers?.lost?.() ?? this.handlers?.will();
    if (!will) return;
    publishOn(this.#transport, will.topic, will.payload, { retain: true }).catch(() => {
      this.#owesLost = !this.attached;
    });
  }

  reconnect(): void {
    if (this.attached) return;
    this.#owesLost = false;
    this.attached = true;
    if (this.up) queueMicrotask(() => this.handlers?.onUp());
  }
  async close(): Promise<void> {
    await this.disconnect({ abrupt: false });
    this.#transport.forget(this.deviceId);
  }
}

async function publishOn(transport: MqttTransport, topic: string, payload: Buffer, options: PublishOptions) {
  if (!transport.up) throw new Error("mqtt connection is down");
  await transport.client.publishAsync(topic, payload, { qos: options.qos ?? 1, retain: options.retain });
}
