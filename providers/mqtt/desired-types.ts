/**
 * What the DesiredStore (desired.ts) keeps per device: pod entries, tombstones and the state of the
 * device's retained document. Owned and mutated by the store; others read them.
 */
import type { DesiredPod, Tombstone } from "../../src/protocol/types.ts";
import type { PodRef } from "../../src/provider/types.ts";

export interface Since {
  readonly epoch: string;
  readonly generation: number;
}

export interface PodEntry {
  readonly ref: PodRef;
  desired: DesiredPod;
  since: Since | undefined;
  /** Whether any version of this pod went into a document (then deleting it needs a tombstone). */
  sent: boolean;
  /** The version last carried by a published document (kept when a newer one does not fit). */
  lastSent: DesiredPod | undefined;
  /** Why the current version was left out of the last document (it made it too large). */
  deferred: { readonly reason: string; readonly message: string } | undefined;
  /** Why the pod is kept out of the document (e.g. Secrets over a plain connection). */
  blocked: { readonly reason: string; readonly message: string } | undefined;
}

export interface TombstoneEntry {
  readonly ref: PodRef;
  readonly tombstone: Tombstone;
  /** Hash the pod had (for listPods); empty when read back from the broker. */
  readonly hash: string;
  since: Since | undefined;
}

export interface DeviceDesired {
  readonly deviceId: string;
  readonly pods: Map<string, PodEntry>;
  readonly tombstones: Map<string, TombstoneEntry>;
  /** The last document the broker holds for this device (published or read back). */
  published: { epoch: string; generation: number; contentHash: string } | undefined;
  /** Why the current content cannot be sent (too large for the device, or invalid as a whole). */
  unsendable:
    | {
        readonly reason: "DocumentTooLarge" | "DocumentInvalid";
        readonly message: string;
        readonly contentHash: string;
      }
    | undefined;
  /** Bumped by every change; `handledSeq` is the last one flushed, `durableSeq` the last the broker holds. */
  changeSeq: number;
  /** When the first change not yet carried by an issued document was made (the issue latency). */
  changedAtMs: number | undefined;
  handledSeq: number;
  durableSeq: number;
  timer: NodeJS.Timeout | undefined;
  inFlight: boolean;
  failures: number;
  /**
   * Callers waiting for a change: released once a flush at or after `seq` succeeded — `durable`
   * ones only when that flush left the content retained, `handled` ones also when the content was
   * found unsendable (held back with a reason; no document will carry it until something changes).
   */
  waiters: { seq: number; until: "durable" | "handled"; resolve: () => void }[];
}

/** How a desired document is measured against a device's limit, and how that limit is named. */
export interface DocumentSize {
  /** The size that counts, from the encoded message. */
  readonly measure: (payload: Uint8Array) => number;
  /** The limit in a refusal, e.g. "the 65536 bytes it accepts". */
  readonly describe: (max: number) => string;
}

/** MQTT's: the message's bytes. */
export const MESSAGE_BYTES: DocumentSize = {
  measure: (payload) => payload.byteLength,
  describe: (max) => `the ${max} bytes it accepts`,
};
