/**
 * The seam between a {@link DeviceSession} and MQTT: a `DeviceLink` is one device's view of a
 * connection to the broker. It is small on purpose, so that the same session code runs over
 *
 * - a device's own MQTT connection (`MqttTransport.link()` in mqtt-link.ts, the only file of the
 *   device side that imports `mqtt`), and
 * - a gateway's connection on behalf of a child microcontroller (`MqttTransport.bridged(id)`).
 *
 * Unit tests run sessions over the first, against aedes in-process (test/support/device-broker.ts).
 *
 * Also the clock the device side uses, injectable so tests can drive time.
 */

/**
 * The last will to register with the next CONNECT (MQTT 3.1.1 §3.1.2.5, MQTT 5 §3.1.3.2). A link
 * asks for it right before every connect, so the payload can carry a fresh sequence number.
 */
export interface LinkWill {
  readonly topic: string;
  readonly payload: Buffer;
  /** MQTT 5 Will Delay Interval; ignored on 3.1.1 links. */
  readonly delaySeconds?: number;
}

export interface LinkHandlers {
  /** The will for the next CONNECT; called right before each connect attempt. */
  will(): LinkWill | undefined;
  /**
   * For links that cannot register a will with the broker (a child bridged by its gateway): the
   * `lost` message the gateway publishes for the device when it drops abruptly. Default: will().
   */
  lost?(): LinkWill | undefined;
  /** The link is up (again). Subscriptions are the session's to make, every time. */
  onUp(): void;
  /** The link went down (network, broker, {@link DeviceLink.disconnect}). */
  onDown(): void;
  /**
   * The link stayed up, but devicelet may have taken the device for lost meanwhile (IoT Hub: its
   * heartbeat could not be written for two intervals, so the will stood in for its state): the
   * session announces itself again with a fresh birth, as after a reconnect.
   */
  reannounce?(): void;
  onMessage(topic: string, payload: Buffer): void;
}

export interface PublishOptions {
  readonly retain: boolean;
  /** Default 1: every device-protocol message is QoS 1. */
  readonly qos?: 0 | 1;
}

/** One device's connection to the broker; owned by exactly one session. */
export interface DeviceLink {
  /** 5 when MQTT 5 features (will delay, message expiry) are available on this link. */
  readonly protocolVersion: 4 | 5;
  readonly up: boolean;
  /** Starts connecting (and reconnecting after failures) and reports through `handlers`. Once. */
  open(handlers: LinkHandlers): void;
  /** Rejects when the link is down or the broker refuses; resolves once the broker has it (QoS 1). */
  publish(topic: string, payload: Buffer, options: PublishOptions): Promise<void>;
  /** QoS 1 subscriptions; resolves on SUBACK. Retained messages follow (MQTT 3.1.1 §3.3.1.3). */
  subscribe(filters: readonly string[]): Promise<void>;
  /**
   * Stops the link and any reconnecting. `abrupt` drops the connection without DISCONNECT, so the
   * broker (or, for a bridged child, its gateway) publishes the will; otherwise the will is discarded
   * (MQTT 3.1.1 §3.14.4).
   */
  disconnect(options: { abrupt: boolean }): Promise<void>;
  /** Connects again after {@link disconnect}; `onUp` follows once connected. */
  reconnect(): void;
  /**
   * The owner's birth is out on this connection. A gateway's link releases its children then, so
   * their births follow the gateway's (docs/protocol.md § 8).
   */
  born?(): void;
  /** Releases everything for good; the link cannot be reopened. */
  close(): Promise<void>;
}
