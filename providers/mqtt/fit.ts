/**
 * Making a desired document fit the largest message a device accepts (docs/protocol.md § 9): pods
 * changed since the last document are held at the version last sent — or left out, when new —
 * largest first, until the document fits. Nothing else is ever dropped: tombstones and unchanged
 * pods always go. Pure; sizes are measured with the longest epoch, generation and time the schema
 * allows, so the document actually published is never larger than measured.
 */
import { desiredContentHash, encodeMessage } from "../../src/protocol/codec.ts";
import type { DesiredPod, Tombstone } from "../../src/protocol/types.ts";
import { MESSAGE_BYTES, type DocumentSize, type PodEntry } from "./desired-types.ts";

/** Pods of a document that fits, and the entries held back to make it fit (with why). */
export interface Fitted {
  readonly pods: DesiredPod[];
  readonly deferred: Map<PodEntry, { readonly reason: string; readonly message: string }>;
}

/**
 * The largest desired document to publish to a device: what it announced in its birth
 * (`capabilities.maxMessageBytes`, the protocol's default before a birth), but never more than
 * devicelet's configured ceiling (`desired.maxDocumentBytes`), so a device announcing 16 MiB
 * cannot make devicelet publish a message the broker refuses (its `max_packet_size`).
 */
export const documentLimit = (o: {
  announced: number | undefined;
  ceiling: number;
  fallback: number;
}): number => Math.min(o.ceiling, o.announced ?? o.fallback);

/**
 * Headroom over a payload for the rest of an MQTT PUBLISH packet: fixed header (at most 5 bytes),
 * topic name (2 + a topic of at most ~170 bytes here), packet identifier (2) and MQTT 5 properties
 * (a broker may add user properties or a subscription identifier).
 */
export const PACKET_HEADROOM_BYTES = 4096;

/** The MQTT 5 Maximum Packet Size devicelet announces: the inbound payload limit plus headroom. */
export const inboundPacketLimit = (maxMessageBytes: number): number =>
  maxMessageBytes + PACKET_HEADROOM_BYTES;

export const byKey = <T extends { namespace: string; name: string; uid: string }>(a: T, b: T) =>
  a.namespace.localeCompare(b.namespace) || a.name.localeCompare(b.name) || a.uid.localeCompare(b.uid);

/**
 * The pods of a document that fits in `max` bytes (`pods` itself when it fits as is), or undefined
 * when holding back every changed pod is not enough.
 * @throws TypeError when the document is invalid whatever its size (e.g. more than 256 pods).
 */
export function fitDocument(o: {
  deviceId: string;
  /** The device's pod entries; those with `since` undefined changed since the last document. */
  entries: Iterable<PodEntry>;
  pods: DesiredPod[];
  tombstones: Tombstone[];
  max: number;
  /** Default {@link MESSAGE_BYTES}. */
  size?: DocumentSize;
}): Fitted | undefined {
  const documentSize = o.size ?? MESSAGE_BYTES;
  const size = (candidate: DesiredPod[]) =>
    documentSize.measure(
      encodeMessage({
        protocol: 1,
        kind: "desired",
        deviceId: o.deviceId,
        epoch: "e".repeat(64),
        generation: Number.MAX_SAFE_INTEGER,
        issuedAt: "2000-01-01T00:00:00.000000000+00:00",
        pods: candidate,
        tombstones: o.tombstones,
        contentHash: desiredContentHash(candidate, o.tombstones),
      }),
    );
  const deferred: Fitted["deferred"] = new Map();
  if (size(o.pods) <= o.max) return { pods: o.pods, deferred };
  const changed = [...o.entries]
    .filter((p) => !p.blocked && p.since === undefined)
    .map((p) => ({ p, bytes: JSON.stringify(p.desired).length }))
    .sort((a, b) => b.bytes - a.bytes);
  let current = o.pods;
  for (const { p } of changed) {
    const previous = p.lastSent;
    current = current.flatMap((q) => (q !== p.desired ? [q] : previous ? [previous] : []));
    const kept = previous ? "; the device keeps the version it has" : "";
    deferred.set(p, {
      reason: "DocumentTooLarge",
      message: `this version of the pod would make the device's desired document larger than ${documentSize.describe(o.max)}${kept}`,
    });
    if (size(current) <= o.max) return { pods: current.sort(byKey), deferred };
  }
  return undefined;
}
