/**
 * `src/protocol`: the devicelet device protocol, version 1 — the message types, the topic names
 * and the codec that validates every message against `schemas/*.json`. Used by devicelet's MQTT
 * provider and by the device agent alike; `docs/protocol.md` is the normative text.
 *
 * ```ts
 * import { decodeFromDevice, encodeMessage, topics } from "../../src/protocol/index.ts";
 * client.subscribe(topics.fromDevices(), { qos: 1 });
 * client.on("message", (topic, payload) => {
 *   const result = decodeFromDevice(topic, payload);
 *   if (result.ok) handle(result.value.deviceId, result.value.message);
 *   else if (result.reason !== "empty") countRejected(result.reason, result.detail);
 * });
 * client.publish(topics.desired(id), encodeMessage(doc), { qos: 1, retain: true });
 * ```
 */
export * from "./types.ts";
export * from "./topics.ts";
export {
  decodeBridge,
  decodeFromDevice,
  decodeIoIn,
  decodeNotice,
  decodeToDevice,
  desiredContentHash,
  encodeMessage,
  type DecodeResult,
  type RejectReason,
} from "./codec.ts";
