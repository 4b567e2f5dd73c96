/**
 * What a device makes of a message it receives (docs/protocol.md § 2, § 4): a valid desired
 * document or command; devicelet's bridge presence; nothing (a cleared retained message); a desired
 * document that failed validation but whose epoch and generation are readable (to be acked
 * `rejected` with reason `InvalidDocument`); or anything else rejected (a `MessageRejected` event).
 * Payload contents never reach the results' texts beyond the codec's one-line detail. Also the
 * buffer for what arrives before a connection's birth ({@link PreBirthBuffer}).
 */
import { decodeBridge, decodeToDevice } from "../protocol/codec.ts";
import { topics } from "../protocol/topics.ts";
import type { BridgeMessage, BridgeToDevice } from "../protocol/types.ts";

export type Inbound =
  | { readonly kind: "message"; readonly message: BridgeToDevice }
  | { readonly kind: "bridge"; readonly bridge: BridgeMessage }
  | { readonly kind: "nothing" }
  | {
      readonly kind: "invalid-document";
      readonly epoch: string;
      readonly generation: number;
      readonly message: string;
    }
  | { readonly kind: "rejected"; readonly message: string; readonly reason: string };

const TOKEN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export function classifyInbound(
  topic: string,
  payload: Buffer,
  o: { deviceId: string; maxBytes: number },
): Inbound {
  if (topic === topics.bridge()) {
    const decoded = decodeBridge(payload);
    return decoded.ok ? { kind: "bridge", bridge: decoded.value } : { kind: "nothing" };
  }
  const decoded = decodeToDevice(topic, payload, { deviceId: o.deviceId, maxBytes: o.maxBytes });
  if (decoded.ok) return { kind: "message", message: decoded.value };
  // A zero-byte retained publish clears `desired`: nothing to run, nothing to complain about.
  if (decoded.reason === "empty") return { kind: "nothing" };
  const message = `${topic.split("/").slice(3).join("/")}: ${decoded.reason}: ${decoded.detail}`;
  const readable =
    topic === topics.desired(o.deviceId) && decoded.reason !== "oversized" ? versionOf(payload) : undefined;
  return readable
    ? { kind: "invalid-document", ...readable, message }
    : { kind: "rejected", reason: decoded.reason, message };
}

/** The epoch and generation of a document that parses as JSON, when both are well formed. */
function versionOf(payload: Buffer): { epoch: string; generation: number } | undefined {
  try {
    const doc = JSON.parse(payload.toString("utf8")) as { epoch?: unknown; generation?: unknown } | null;
    const { epoch, generation } = doc ?? {};
    if (
      typeof epoch === "string" &&
      TOKEN.test(epoch) &&
      Number.isSafeInteger(generation) &&
      (generation as number) >= 1
    ) {
      return { epoch, generation: generation as number };
    }
  } catch {
    // Not JSON: a MessageRejected event instead.
  }
  return undefined;
}

/** A message received, with when it arrived by the device's clock (a command's TTL runs from it). */
export interface Arrival {
  readonly inbound: Exclude<Inbound, { kind: "bridge" | "nothing" }>;
  readonly topic: string;
  readonly receivedAt: number;
}

/**
 * What arrives before the birth of a connection, held to be handled after it (docs/protocol.md
 * § 5): of the messages on the `desired` topic only the last (valid or not: the retained copy comes
 * last), and the first `max` others (commands, messages to refuse), in arrival order.
 */
export class PreBirthBuffer {
  readonly #desiredTopic: string;
  readonly #max: number;
  #held: Arrival[] = [];

  constructor(desiredTopic: string, max = 64) {
    this.#desiredTopic = desiredTopic;
    this.#max = max;
  }

  hold(arrival: Arrival): void {
    if (arrival.topic === this.#desiredTopic) {
      this.#held = this.#held.filter((a) => a.topic !== this.#desiredTopic);
    } else if (this.#held.length >= this.#max) return;
    this.#held.push(arrival);
  }

  /** Everything held, in arrival order; the buffer is empty afterwards. */
  take(): Arrival[] {
    return this.#held.splice(0);
  }

  clear(): void {
    this.#held = [];
  }
}
