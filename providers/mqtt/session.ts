/**
 * BrokerSession: the MQTT provider's side of its broker connection. `start` connects and reads
 * back devicelet's own retained documents (readback.ts; documents arriving late go to `onLate`),
 * adopting them into the DesiredStore
 * before any device message is handled: messages that arrive meanwhile are held, then handed to
 * Inbound in order. It counts connects and disconnects, remembers when the current connection
 * began (for SilenceWatch), and, when the broker did not keep the session (MQTT 3.1.1 § 3.2.2.2,
 * MQTT 5 § 3.2.2.1.1: session present 0), subscribes again and has every device's document
 * published again. Also builds the bridge's birth and will payloads.
 *
 * What it subscribes to is {@link DeviceSubscriptions}'s: every device's traffic, or with an
 * ownership predicate (a shard) the discovery `+/state` and each owned device's own filters.
 * Every message passes {@link DeviceSubscriptions.admit} first: another shard's device's message
 * (its `state`, its read-back document) is dropped before the read-back or Inbound sees it, so the
 * read-back adopts only owned devices' documents.
 *
 *   const session = new BrokerSession({ connection, subscriptions, readbackTimeoutMs, onLate, inbound, ... });
 *   const documents = await session.start(signal);   // connected, read back, adopted
 *   session.connectedSince();                        // epoch ms, or undefined while disconnected
 */
import type { Logger } from "pino";
import { encodeMessage } from "../../src/protocol/codec.ts";
import type { BridgeMessage, DesiredDocument } from "../../src/protocol/types.ts";
import type { TransportConnection } from "./connection.ts";
import type { DesiredStore } from "./desired.ts";
import type { Inbound } from "./inbound.ts";
import type { MqttMetrics } from "./metrics.ts";
import { Readback } from "./readback.ts";
import type { DeviceSubscriptions } from "./subscriptions.ts";

/** The payload of the bridge's retained state (`online`) and will (`offline`) for one process. */
export const bridgePayload =
  (instance: string) =>
  (state: "online" | "offline"): Buffer => {
    const message: BridgeMessage = {
      protocol: 1,
      kind: "bridge",
      state,
      instance,
      sentAt: new Date().toISOString(),
    };
    return encodeMessage(message);
  };

export interface BrokerSessionOptions {
  readonly connection: Omit<TransportConnection, "stop" | "health">;
  readonly subscriptions: Pick<
    DeviceSubscriptions,
    "filters" | "admit" | "learn" | "started" | "resume" | "resubscribe" | "settled" | "stop"
  >;
  /** Also how long start waits for the broker to acknowledge owned devices' filters. */
  readonly readbackTimeoutMs: number;
  /** A document read back after `start` resolved (it is not in `start`'s result). */
  readonly onLate: (doc: DesiredDocument) => void;
  readonly inbound: Pick<Inbound, "handle" | "confirmTombstones">;
  readonly desired: Pick<DesiredStore, "adopt" | "republishAll">;
  readonly metrics: MqttMetrics;
  readonly logger: Logger;
}

export class BrokerSession {
  readonly #o: BrokerSessionOptions;
  readonly #readback: Readback;
  /** Device messages that arrive during the read-back, handled once it is done. */
  #held: [string, Buffer, boolean][] | undefined = [];
  /** When the current broker connection began; undefined while disconnected. */
  #connectedSince: number | undefined;

  constructor(options: BrokerSessionOptions) {
    this.#o = options;
    this.#readback = new Readback({
      connection: options.connection,
      logger: options.logger,
      timeoutMs: options.readbackTimeoutMs,
      onLate: (doc) => {
        options.subscriptions.learn([doc.deviceId]);
        options.onLate(doc);
        // A report that came before the document may already confirm its tombstones.
        options.inbound.confirmTombstones(doc.deviceId);
      },
    });
  }

  /** When the current broker connection began; undefined while disconnected. */
  connectedSince(): number | undefined {
    return this.#connectedSince;
  }

  /**
   * Connects (waiting for the broker as long as it takes, or until the signal aborts), reads back
   * the retained desired documents and adopts them, then handles the device messages held
   * meanwhile. Serving a shard, it then waits (at most `readbackTimeoutMs`) for the broker to
   * acknowledge the filters of the owned devices it learned. Resolves with the documents read
   * back, by device id. Call once.
   */
  async start(signal: AbortSignal): Promise<Map<string, DesiredDocument>> {
    const { subscriptions } = this.#o;
    this.#attach();
    await this.#o.connection.start(signal);
    const documents = await this.#readback.run(subscriptions.filters());
    subscriptions.started();
    for (const doc of documents.values()) this.#o.desired.adopt(doc);
    subscriptions.learn(documents.keys());
    const held = this.#held ?? [];
    this.#held = undefined;
    for (const [topic, payload, retained] of held) this.#o.inbound.handle(topic, payload, retained);
    if (!(await subscriptions.settled(this.#o.readbackTimeoutMs)))
      this.#o.logger.warn(
        { timeoutMs: this.#o.readbackTimeoutMs },
        "the broker has not acknowledged every owned device's subscriptions yet; continuing, they are retried",
      );
    return documents;
  }

  /** Stops waiting for late documents. The connection is the caller's to stop. */
  stop(): void {
    this.#readback.stop();
    this.#o.subscriptions.stop();
  }

  #attach(): void {
    const { connection, subscriptions, inbound, metrics, logger } = this.#o;
    connection.onMessage((topic, payload, retained) => {
      if (!subscriptions.admit(topic, payload)) return;
      if (this.#readback.take(topic, payload, retained)) return;
      if (this.#held) this.#held.push([topic, payload, retained]);
      else inbound.handle(topic, payload, retained);
    });
    connection.onConnect(({ sessionPresent }) => {
      metrics.inc("connects");
      this.#connectedSince = Date.now();
      // The read-back subscribes the discovery filters; owned devices' filters still pending go now.
      if (this.#held || sessionPresent) {
        subscriptions.resume(sessionPresent);
        return;
      }
      // The broker lost our session — and perhaps its retained messages: subscribe again and
      // publish every device's document again (a new generation each; devices apply it once).
      logger.warn("broker did not keep devicelet's session; subscribing and publishing desired state again");
      subscriptions.resubscribe();
      this.#o.desired.republishAll();
    });
    connection.onDisconnect(() => {
      metrics.inc("disconnects");
      this.#connectedSince = undefined;
    });
  }
}
