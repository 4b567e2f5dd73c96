/**
 * How the device protocol sits in an Azure IoT Hub device twin (docs/iothub.md, "Mapping onto IoT
 * Hub"): the twin keys and method names both halves use, and the twin document encoding. Shared by
 * the device's link (src/device/iothub-link.ts) and the provider (providers/iothub/).
 *
 *   const value = encodeTwinDocument(JSON.stringify(doc), previous?.n ?? 0); // { n, p0, p1, … }
 *   const text = decodeTwinDocument(twin.properties.desired[IOTHUB_MAPPING.desiredKey]);
 */

/** Twin keys and method names of the mapping (docs/iothub.md, "Mapping onto IoT Hub"). */
export const IOTHUB_MAPPING = {
  desiredKey: "devicelet",
  reported: {
    state: "devicelet_state",
    reported: "devicelet_reported",
    ack: "devicelet_ack",
    will: "devicelet_will",
    presence: "devicelet_presence",
  },
  commandMethod: "devicelet.command",
  noticeMethod: "devicelet.notice",
  /** Application property of device-to-cloud messages naming the topic kind. */
  kindProperty: "devicelet-kind",
} as const;

/** IoT Hub's limit on each of the desired and reported sections, measured as compact JSON. */
export const TWIN_SECTION_LIMIT_BYTES = 32 * 1024;
/** Characters per part: at most 4 KB of UTF-8 (IoT Hub's string value limit) whatever they are. */
const PART_CHARS = 1024;

/** A document as it sits in the twin: `{ n, p0, p1, … }`, the parts joined give its JSON text. */
export type TwinDocument = Record<string, string | number | null>;

/** Cuts `text` into parts; `previousParts` of an earlier value under the same key are deleted (null). */
export function encodeTwinDocument(text: string, previousParts = 0): TwinDocument {
  const doc: TwinDocument = { n: 0 };
  let n = 0;
  for (let at = 0; at < text.length; at += PART_CHARS) {
    let end = Math.min(text.length, at + PART_CHARS);
    // Never split a surrogate pair.
    if (end < text.length && /[\uD800-\uDBFF]/.test(text.charAt(end - 1))) end -= 1;
    doc[`p${n}`] = text.slice(at, end);
    n += 1;
    at = end - PART_CHARS;
  }
  doc.n = n;
  for (let i = n; i < previousParts; i++) doc[`p${i}`] = null;
  return doc;
}

/** The JSON text of a twin document; undefined when it is absent or incomplete. */
export function decodeTwinDocument(value: unknown): string | undefined {
  if (typeof value !== "object" || value === null) return undefined;
  const doc = value as Record<string, unknown>;
  const n = doc.n;
  if (typeof n !== "number" || !Number.isInteger(n) || n < 0 || n > 1024) return undefined;
  let text = "";
  for (let i = 0; i < n; i++) {
    const part = doc[`p${i}`];
    if (typeof part !== "string") return undefined;
    text += part;
  }
  return text;
}
