/**
 * Decoding and encoding of device-protocol messages (docs/protocol.md § Validation), used on both
 * sides: devicelet decodes what devices publish, the device agent decodes what devicelet publishes.
 *
 * Every decoder takes raw MQTT payload bytes and never throws: it answers a {@link DecodeResult},
 * either the validated message or a {@link RejectReason} with a one-line detail that names the
 * first schema error path. Checks run cheapest first: empty, size (before parsing), UTF-8 and JSON,
 * protocol version, kind against the topic, device id against the topic, then the JSON Schema
 * (`schemas/*.json`, compiled once at module load). Returned values are fresh objects owned by
 * the caller.
 *
 * ```ts
 * const result = decodeFromDevice(topic, payload);
 * if (!result.ok) { if (result.reason !== "empty") metrics.rejected(result.reason); return; }
 * handle(result.value.deviceId, result.value.message);
 * client.publish(topics.desired(id), encodeMessage(doc), { qos: 1, retain: true });
 * ```
 */
import { Ajv, type ErrorObject, type SchemaObject, type ValidateFunction } from "ajv";
import ackSchema from "../../schemas/ack.json" with { type: "json" };
import bridgeSchema from "../../schemas/bridge.json" with { type: "json" };
import commandSchema from "../../schemas/command.json" with { type: "json" };
import commonSchema from "../../schemas/common.json" with { type: "json" };
import desiredSchema from "../../schemas/desired.json" with { type: "json" };
import eventSchema from "../../schemas/event.json" with { type: "json" };
import ioInSchema from "../../schemas/io-in.json" with { type: "json" };
import ioOutSchema from "../../schemas/io-out.json" with { type: "json" };
import noticeSchema from "../../schemas/notice.json" with { type: "json" };
import presenceSchema from "../../schemas/presence.json" with { type: "json" };
import reportedSchema from "../../schemas/reported.json" with { type: "json" };
import statsSchema from "../../schemas/stats.json" with { type: "json" };
import { canonicalJson, sha256Hex } from "../base/canonical.ts";
import { DEVICE_ID, TOPIC_ROOT } from "./topics.ts";
import {
  DEFAULT_MAX_MESSAGE_BYTES,
  PROTOCOL_VERSION,
  type BridgeMessage,
  type BridgeToDevice,
  type DesiredPod,
  type DeviceToBridge,
  type IoInMessage,
  type NoticeMessage,
  type Tombstone,
} from "./types.ts";

export { DEFAULT_MAX_MESSAGE_BYTES };

/** Why a payload was refused. `empty` is a cleared retained message: treat it as "nothing". */
export type RejectReason =
  "empty" | "oversized" | "not-json" | "schema" | "wrong-device" | "unknown-topic" | "unsupported-protocol";

export type DecodeResult<T> = { ok: true; value: T } | { ok: false; reason: RejectReason; detail: string };

type AnyMessage = DeviceToBridge | BridgeToDevice | BridgeMessage | NoticeMessage | IoInMessage;
type Kind = AnyMessage["kind"];

const SCHEMAS: readonly SchemaObject[] = [
  commonSchema,
  desiredSchema,
  commandSchema,
  presenceSchema,
  reportedSchema,
  ackSchema,
  eventSchema,
  bridgeSchema,
  noticeSchema,
  ioInSchema,
  ioOutSchema,
  statsSchema,
];

const ajv = new Ajv({ allErrors: false, schemas: [...SCHEMAS] });
const compiled = (schema: SchemaObject): ValidateFunction => {
  const validate = ajv.getSchema(schema.$id as string);
  if (!validate) throw new Error(`protocol schema ${String(schema.$id)} did not compile`);
  return validate;
};
const validators: Readonly<Record<Kind, ValidateFunction>> = {
  desired: compiled(desiredSchema),
  command: compiled(commandSchema),
  presence: compiled(presenceSchema),
  reported: compiled(reportedSchema),
  ack: compiled(ackSchema),
  "command-ack": compiled(ackSchema),
  event: compiled(eventSchema),
  bridge: compiled(bridgeSchema),
  notice: compiled(noticeSchema),
  "io-open": compiled(ioInSchema),
  "io-stdin": compiled(ioInSchema),
  "io-resize": compiled(ioInSchema),
  "io-keepalive": compiled(ioInSchema),
  "io-cancel": compiled(ioInSchema),
  "io-data": compiled(ioOutSchema),
  "io-end": compiled(ioOutSchema),
  stats: compiled(statsSchema),
};

const IO_IN_KINDS: readonly Kind[] = ["io-open", "io-stdin", "io-resize", "io-keepalive", "io-cancel"];
const IO_OUT_KINDS: readonly Kind[] = ["io-data", "io-end"];

/** Which kinds each device topic carries. */
const FROM_DEVICE: ReadonlyMap<string, readonly Kind[]> = new Map([
  ["state", ["presence"]],
  ["reported", ["reported"]],
  ["ack", ["ack", "command-ack"]],
  ["evt", ["event"]],
  ["stats", ["stats"]],
]);

const utf8 = new TextDecoder("utf-8", { fatal: true });

type Rejection = Extract<DecodeResult<never>, { ok: false }>;
const reject = (reason: RejectReason, detail: string): Rejection => ({ ok: false, reason, detail });

const describe = (value: unknown): string =>
  value === null ? "null" : Array.isArray(value) ? "array" : typeof value;

const quote = (value: unknown): string => {
  const text = typeof value === "string" ? JSON.stringify(value) : describe(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
};

/** `/pods/0/apps/1/name must match pattern "..."`, from ajv's first error. */
function schemaDetail(errors: readonly ErrorObject[] | null | undefined): string {
  const first = errors?.[0];
  if (!first) return "/ does not match the schema";
  const extra = (first.params as { additionalProperty?: unknown }).additionalProperty;
  const suffix = typeof extra === "string" ? ` (${quote(extra)})` : "";
  const text = first.keyword === "false schema" ? "is not allowed here" : (first.message ?? "is invalid");
  return `${first.instancePath === "" ? "/" : first.instancePath} ${text}${suffix}`;
}

/** Bytes → plain JSON object, with the version checked; the first three checks of every decoder. */
function parse(payload: Uint8Array, maxBytes: number): DecodeResult<Record<string, unknown>> {
  if (!(payload instanceof Uint8Array)) return reject("not-json", "payload is not bytes");
  if (payload.byteLength === 0) return reject("empty", "zero-length payload (cleared retained message)");
  if (payload.byteLength > maxBytes) {
    return reject("oversized", `${payload.byteLength} bytes is over the limit of ${maxBytes}`);
  }
  let value: unknown;
  try {
    value = JSON.parse(utf8.decode(payload));
  } catch (error) {
    return reject("not-json", error instanceof Error ? error.message.slice(0, 200) : "invalid JSON");
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return reject("schema", `/ must be object, not ${describe(value)}`);
  }
  const record = value as Record<string, unknown>;
  const protocol = record.protocol;
  if (typeof protocol === "number" && Number.isInteger(protocol) && protocol !== PROTOCOL_VERSION) {
    return reject("unsupported-protocol", `protocol ${protocol} is not supported (this side speaks 1)`);
  }
  return { ok: true, value: record };
}

/** Kind, device id and schema; `kinds` are those the topic may carry. */
function check<T>(
  record: Record<string, unknown>,
  kinds: readonly Kind[],
  topicName: string,
  deviceId: string | undefined,
): DecodeResult<T> {
  const kind = record.kind;
  const expected = kinds.find((k) => k === kind);
  if (expected === undefined) {
    return reject(
      "schema",
      `/kind must be ${kinds.map((k) => `"${k}"`).join(" or ")} on ${topicName}, not ${quote(kind)}`,
    );
  }
  if (deviceId !== undefined && typeof record.deviceId === "string" && record.deviceId !== deviceId) {
    return reject("wrong-device", `/deviceId ${quote(record.deviceId)} on the topic of device "${deviceId}"`);
  }
  const validate = validators[expected];
  if (!validate(record)) return reject("schema", schemaDetail(validate.errors));
  return { ok: true, value: record as T };
}

const maxBytesOf = (options: { maxBytes?: number } | undefined): number => {
  const max = options?.maxBytes;
  return typeof max === "number" && max > 0 ? max : DEFAULT_MAX_MESSAGE_BYTES;
};

/**
 * Decodes anything a device publishes, on `devicelet/v1/{id}/{state|reported|ack|evt|stats}` and
 * `devicelet/v1/{id}/io/{streamId}/out`. The topic's device id is the sender's identity (the
 * broker's ACL guarantees it); a message naming another device is `wrong-device`, and session
 * output naming another stream than its topic's is `schema`. Ordering by (bootId, seq), or by a
 * session's seq, is the caller's job.
 */
export function decodeFromDevice(
  topic: string,
  payload: Uint8Array,
  options?: { maxBytes?: number },
): DecodeResult<{ deviceId: string; message: DeviceToBridge }> {
  try {
    const parts = typeof topic === "string" ? topic.split("/") : [];
    const [root, version, deviceId, sub, streamId, out] = parts;
    const isIo =
      parts.length === 6 && sub === "io" && streamId !== undefined && TOKEN.test(streamId) && out === "out";
    const kinds = isIo
      ? IO_OUT_KINDS
      : parts.length === 4 && sub !== undefined
        ? FROM_DEVICE.get(sub)
        : undefined;
    if (`${root}/${version}` !== TOPIC_ROOT || !deviceId || !DEVICE_ID.test(deviceId) || !kinds) {
      return reject("unknown-topic", `${quote(topic)} is not a device topic of ${TOPIC_ROOT}`);
    }
    const parsed = parse(payload, maxBytesOf(options));
    if (!parsed.ok) return parsed;
    const topicName = isIo ? '"io/{streamId}/out"' : `"${sub ?? ""}"`;
    const checked = check<DeviceToBridge>(parsed.value, kinds, topicName, deviceId);
    if (!checked.ok) return checked;
    const message = checked.value;
    if ((message.kind === "io-data" || message.kind === "io-end") && message.streamId !== streamId) {
      return reject(
        "schema",
        `/streamId ${quote(message.streamId)} does not match the topic's ${quote(streamId)}`,
      );
    }
    return { ok: true, value: { deviceId, message } };
  } catch (error) {
    return internal(error);
  }
}

/**
 * Decodes what devicelet publishes to one device: `devicelet/v1/{deviceId}/desired` or
 * `devicelet/v1/{deviceId}/cmd/{commandId}`. A gateway calls it with each child's id for the
 * child's topics. A desired document whose `contentHash` does not match its content is `schema`.
 */
export function decodeToDevice(
  topic: string,
  payload: Uint8Array,
  options: { deviceId: string; maxBytes?: number },
): DecodeResult<BridgeToDevice> {
  try {
    const parts = typeof topic === "string" ? topic.split("/") : [];
    const [root, version, deviceId, sub, commandId] = parts;
    const isDesired = parts.length === 4 && sub === "desired";
    const isCommand = parts.length === 5 && sub === "cmd" && commandId !== undefined && TOKEN.test(commandId);
    if (
      `${root}/${version}` !== TOPIC_ROOT ||
      deviceId === undefined ||
      !DEVICE_ID.test(deviceId) ||
      !(isDesired || isCommand)
    ) {
      return reject("unknown-topic", `${quote(topic)} is not a desired or command topic of ${TOPIC_ROOT}`);
    }
    if (deviceId !== options.deviceId) {
      return reject("wrong-device", `topic of device "${deviceId}", decoding for ${quote(options.deviceId)}`);
    }
    const parsed = parse(payload, maxBytesOf(options));
    if (!parsed.ok) return parsed;
    const record = parsed.value;
    const checked = check<BridgeToDevice>(
      record,
      isDesired ? ["desired"] : ["command"],
      `"${sub}"`,
      deviceId,
    );
    if (!checked.ok) return checked;
    const message = checked.value;
    if (message.kind === "command" && message.commandId !== commandId) {
      return reject(
        "schema",
        `/commandId ${quote(message.commandId)} does not match the topic's ${quote(commandId)}`,
      );
    }
    if (
      message.kind === "desired" &&
      message.contentHash !== desiredContentHash(message.pods, message.tombstones)
    ) {
      return reject("schema", "/contentHash does not match pods and tombstones");
    }
    return checked;
  } catch (error) {
    return internal(error);
  }
}

/** Decodes a notice from devicelet on `devicelet/v1/{deviceId}/notice` (docs/protocol.md § 3.8). */
export function decodeNotice(
  topic: string,
  payload: Uint8Array,
  options: { deviceId: string },
): DecodeResult<NoticeMessage> {
  try {
    const parts = typeof topic === "string" ? topic.split("/") : [];
    const [root, version, deviceId, sub] = parts;
    if (parts.length !== 4 || `${root}/${version}` !== TOPIC_ROOT || sub !== "notice" || !deviceId) {
      return reject("unknown-topic", `${quote(topic)} is not a notice topic of ${TOPIC_ROOT}`);
    }
    if (deviceId !== options.deviceId) {
      return reject("wrong-device", `topic of device "${deviceId}", decoding for ${quote(options.deviceId)}`);
    }
    const parsed = parse(payload, DEFAULT_MAX_MESSAGE_BYTES);
    if (!parsed.ok) return parsed;
    return check<NoticeMessage>(parsed.value, ["notice"], '"notice"', deviceId);
  } catch (error) {
    return internal(error);
  }
}

/**
 * Decodes a session's input from devicelet on `devicelet/v1/{deviceId}/io/{streamId}`
 * (docs/protocol.md § 3.9): io-open, io-stdin, io-resize, io-keepalive or io-cancel. A gateway
 * calls it with each child's id for the child's topics. A message naming another stream than its
 * topic's is `schema`.
 */
export function decodeIoIn(
  topic: string,
  payload: Uint8Array,
  options: { deviceId: string; maxBytes?: number },
): DecodeResult<IoInMessage> {
  try {
    const parts = typeof topic === "string" ? topic.split("/") : [];
    const [root, version, deviceId, sub, streamId] = parts;
    if (
      parts.length !== 5 ||
      `${root}/${version}` !== TOPIC_ROOT ||
      sub !== "io" ||
      deviceId === undefined ||
      !DEVICE_ID.test(deviceId) ||
      streamId === undefined ||
      !TOKEN.test(streamId)
    ) {
      return reject("unknown-topic", `${quote(topic)} is not a session input topic of ${TOPIC_ROOT}`);
    }
    if (deviceId !== options.deviceId) {
      return reject("wrong-device", `topic of device "${deviceId}", decoding for ${quote(options.deviceId)}`);
    }
    const parsed = parse(payload, maxBytesOf(options));
    if (!parsed.ok) return parsed;
    const checked = check<IoInMessage>(parsed.value, IO_IN_KINDS, '"io/{streamId}"', deviceId);
    if (!checked.ok) return checked;
    if (checked.value.streamId !== streamId) {
      return reject(
        "schema",
        `/streamId ${quote(checked.value.streamId)} does not match the topic's ${quote(streamId)}`,
      );
    }
    return checked;
  } catch (error) {
    return internal(error);
  }
}

/** Decodes devicelet's retained presence on `devicelet/v1/_bridge/state`. */
export function decodeBridge(payload: Uint8Array): DecodeResult<BridgeMessage> {
  try {
    const parsed = parse(payload, DEFAULT_MAX_MESSAGE_BYTES);
    if (!parsed.ok) return parsed;
    return check<BridgeMessage>(parsed.value, ["bridge"], "the bridge topic", undefined);
  } catch (error) {
    return internal(error);
  }
}

/**
 * JSON bytes of a message, validated against its schema as the receiver will see it (after a JSON
 * round trip). Throws on an invalid message or a desired document with a wrong `contentHash`:
 * that is a bug on the sending side, not a runtime condition. Size limits are the caller's.
 */
export function encodeMessage(message: AnyMessage): Buffer {
  const json = JSON.stringify(message) as string | undefined;
  if (json === undefined) throw new TypeError("encodeMessage: message is not JSON-serialisable");
  const wire: unknown = JSON.parse(json);
  const kind: unknown =
    typeof wire === "object" && wire !== null ? (wire as { kind?: unknown }).kind : undefined;
  if (typeof kind !== "string" || !Object.hasOwn(validators, kind)) {
    throw new TypeError(`encodeMessage: unknown kind ${quote(kind)}`);
  }
  const validate = validators[kind as Kind];
  if (!validate(wire))
    throw new TypeError(`encodeMessage: invalid ${kind}: ${schemaDetail(validate.errors)}`);
  const doc = wire as AnyMessage;
  if (doc.kind === "desired" && doc.contentHash !== desiredContentHash(doc.pods, doc.tombstones)) {
    throw new TypeError("encodeMessage: desired contentHash does not match pods and tombstones");
  }
  return Buffer.from(json, "utf8");
}

/**
 * The `contentHash` of a desired document: lowercase hex SHA-256 of the canonical JSON (RFC 8785
 * for the values this protocol uses: sorted keys, no whitespace) of `{ pods, tombstones }`.
 */
export function desiredContentHash(pods: readonly DesiredPod[], tombstones: readonly Tombstone[]): string {
  return sha256Hex(canonicalJson({ pods, tombstones }));
}

const TOKEN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

// Only reachable through a bug in this file or ajv (e.g. a getter that throws on a crafted value):
// still an answer, never an exception.
function internal(error: unknown): Rejection {
  return reject(
    "schema",
    `could not be checked: ${error instanceof Error ? error.message.slice(0, 200) : "error"}`,
  );
}
