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
 *   const session = new BrokerSession({ connection, readbackTimeoutMs, onLate, inbound, ... });
 *   const documents = await session.start(signal);   // connected, read back, adopted
 *   session.connectedSince();                        // epoch ms, or undefined while disconnected
 */
import type { Logger } from "pino";
import { encodeMessage } from "../../src/protocol/codec.ts";
import { topics } from "../../src/protocol/topics.ts";
import type { BridgeMessage, DesiredDocument } from "../../src/protocol/types.ts";
import type { TransportConnection } from "./connection.ts";
import type { DesiredStore } from "./desired.ts";
import type { Inbound } from "./inbound.ts";
import type { MqttMetrics } from "./metrics.ts";
import { Readback } from "./readback.ts";

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
   * meanwhile. Resolves with the documents read back, by device id. Call once.
   */
  async start(signal: AbortSignal): Promise<Map<string, DesiredDocument>> {
    this.#attach();
    await this.#o.connection.start(signal);
    const documents = await this.#readback.run(topics.fromDevices());
    for (const doc of documents.values()) this.#o.desired.adopt(doc);
    const held = this.#held ?? [];
    this.#held = undefined;
    for (const [topic, payload, retained] of held) this.#o.inbound.handle(topic, payload, retained);
    return documents;
  }

  /** Stops waiting for late documents. The connection is the caller's to stop. */
  stop(): void {
    this.#readback.stop();
  }

  #attach(): void {
    const { connection, inbound, metrics, logger } = this.#o;
    connection.onMessage((topic, payload, retained) => {
      if (this.#readback.take(topic, payload, retained)) return;
      if (this.#held) this.#held.push([topic, payload, retained]);
      else inbound.handle(topic, payload, retained);
    });
    connection.onConnect(({ sessionPresent }) => {
      metrics.inc("connects");
      this.#connectedSince = Date.now();
      if (this.#held) return; // the read-back subscribes
      if (sessionPresent) return;
      // The broker lost our session — and perhaps its retained messages: subscribe again and
      // publish every device's document again (a new generation each; devices apply it once).
      logger.warn("broker did not keep devicelet's session; subscribing and publishing desired state again");
      connection.subscribe(topics.fromDevices()).catch((err: unknown) => {
        logger.error({ err }, "subscribing after reconnect failed");
      });
      this.#o.desired.republishAll();
    });
    connection.onDisconnect(() => {
      metrics.inc("disconnects");
      this.#connectedSince = undefined;
    });
  }
}
