/**
 * DesiredPublisher: gets each device's desired state (DesiredStore) out as its one retained
 * `desired` document. Publishing is coalesced per device: the first change starts a short
 * debounce, everything changed until then goes out as one document (latest wins), and while a
 * publish is in flight further changes wait for the next one; a failed publish is retried with
 * backoff. A document whose content equals the last published one is not sent again. Each
 * document gets a fresh generation from the GenerationAllocator, reserved durably first. Changed
 * pods that would make the document larger than the device accepts are held at their last sent
 * version (`deferred`, see fit.ts); when even that does not fit, nothing is sent and the device is
 * marked `unsendable`. It releases the store's waiters (pod changes, tombstones) once the broker
 * holds their change — pod changes also once the content is found unsendable, since no document
 * will carry it — and moves each entry's `since` when a document carried it. Owned by the
 * DesiredStore.
 *
 *   const publisher = new DesiredPublisher({ ...storeOptions, isCurrent: (d) => map.get(d.deviceId) === d });
 *   publisher.dirty(device);        // publishes within ~debounceMs
 *   publisher.schedule(device, 0);  // try again now what is pending
 */
import type { Logger } from "pino";
import { retryDelay } from "../../src/base/backoff.ts";
import { desiredContentHash, encodeMessage } from "../../src/protocol/codec.ts";
import { topics } from "../../src/protocol/topics.ts";
import type { DesiredDocument, DesiredPod, Tombstone } from "../../src/protocol/types.ts";
import { MESSAGE_BYTES, type DeviceDesired, type DocumentSize } from "./desired-types.ts";
import { byKey, fitDocument, type Fitted } from "./fit.ts";
import type { GenerationAllocator } from "./generations.ts";
import type { MqttMetrics } from "./metrics.ts";

export interface DesiredPublisherOptions {
  readonly allocator: Pick<GenerationAllocator, "next">;
  readonly publish: (topic: string, payload: Buffer) => Promise<void>;
  /** Largest document the device accepts. */
  readonly maxBytes: (deviceId: string) => number;
  /** How a document counts against `maxBytes`; default {@link MESSAGE_BYTES}. */
  readonly documentSize?: DocumentSize;
  readonly debounceMs: number;
  /** A document went out (or could not, `tooLarge`): delivery and status may have changed. */
  readonly onChange: (deviceId: string) => void;
  /** Whether the store still holds this device (false once it was forgotten). */
  readonly isCurrent: (d: DeviceDesired) => boolean;
  /**
   * Called once the broker holds the device's content (published now or earlier), before anyone
   * waiting for it is released: the workload hashes are handed on to be stored (not waited for).
   */
  readonly persist: (d: DeviceDesired) => void;
  /**
   * The broker took document `generation` of `epoch`, issued at `issuedAtMs`, carrying changes the
   * first of which was made at `changedAtMs` (issue and delivery latency).
   */
  readonly onPublished?: (
    deviceId: string,
    epoch: string,
    generation: number,
    issuedAtMs: number,
    changedAtMs: number | undefined,
  ) => void;
  readonly metrics: MqttMetrics;
  readonly logger: Logger;
  readonly now: () => Date;
}

export class DesiredPublisher {
  readonly #o: DesiredPublisherOptions;
  #stopped = false;

  constructor(options: DesiredPublisherOptions) {
    this.#o = options;
  }

  /** Stops publishing: nothing is scheduled or sent from now on (timers are the store's to clear). */
  stop(): void {
    this.#stopped = true;
  }

  /**
   * Resolves once every change made to these devices so far is handled (published, or found
   * unsendable), flushing now what waits for its debounce. Never rejects; it does not end by
   * itself while a publish cannot complete (the caller bounds it).
   */
  async drain(devices: Iterable<DeviceDesired>): Promise<void> {
    const pending: Promise<void>[] = [];
    for (const d of devices) {
      if (d.handledSeq >= d.changeSeq) continue;
      pending.push(new Promise((resolve) => d.waiters.push({ seq: d.changeSeq, until: "handled", resolve })));
      if (d.timer !== undefined) {
        clearTimeout(d.timer);
        d.timer = undefined;
      }
      this.schedule(d, 0);
    }
    await Promise.all(pending);
  }

  /** A change to the device's desired state: publish it after the debounce. */
  dirty(d: DeviceDesired): void {
    d.changeSeq++;
    d.changedAtMs ??= this.#o.now().getTime();
    this.schedule(d, this.#o.debounceMs);
  }

  /** Flushes the device after `delayMs`, unless a flush is already scheduled or in flight. */
  schedule(d: DeviceDesired, delayMs: number): void {
    if (d.timer !== undefined || d.inFlight || this.#stopped) return;
    d.timer = setTimeout(() => {
      d.timer = undefined;
      void this.#flush(d);
    }, delayMs);
  }

  #unsendable(
    d: DeviceDesired,
    contentHash: string,
    reason: "DocumentTooLarge" | "DocumentInvalid",
    message: string,
  ): void {
    if (d.unsendable?.message !== message)
      this.#o.logger.warn({ device: d.deviceId, reason, message }, "desired document not sent");
    d.unsendable = { reason, message, contentHash };
    this.#o.onChange(d.deviceId);
  }

  /** The document content as it is now: sorted pods (not blocked) and tombstones. */
  #content(d: DeviceDesired) {
    const pods = [...d.pods.values()]
      .filter((p) => !p.blocked)
      .map((p) => p.desired)
      .sort(byKey);
    const tombstones = [...d.tombstones.values()].map((t) => t.tombstone).sort(byKey);
    return { pods, tombstones, contentHash: desiredContentHash(pods, tombstones) };
  }

  async #flush(d: DeviceDesired): Promise<void> {
    if (d.inFlight || this.#stopped) return;
    d.inFlight = true;
    const seq = d.changeSeq;
    try {
      const { pods, tombstones, contentHash } = this.#content(d);
      let durable = d.published
        ? d.published.contentHash === contentHash
        : pods.length + tombstones.length === 0;
      if (!durable && d.unsendable?.contentHash !== contentHash) {
        durable = await this.#publish(d, pods, tombstones, contentHash);
      }
      if (durable && this.#o.isCurrent(d)) this.#o.persist(d);
      d.handledSeq = seq;
      d.failures = 0;
      if (durable) {
        d.unsendable = undefined;
        d.durableSeq = seq;
      }
      const released = (w: DeviceDesired["waiters"][number]) =>
        w.seq <= seq && (durable || w.until === "handled");
      for (const w of d.waiters.filter(released)) w.resolve();
      d.waiters = d.waiters.filter((w) => !released(w));
    } catch (err) {
      d.failures++;
      this.#o.logger.warn(
        { err, device: d.deviceId, failures: d.failures },
        "publishing desired document failed; retrying",
      );
    } finally {
      d.inFlight = false;
    }
    if (d.changeSeq > d.handledSeq) {
      this.schedule(
        d,
        d.failures === 0
          ? this.#o.debounceMs
          : // 0.5 s doubling to 30 s, no jitter: all of these go over devicelet's one broker
            // connection, not from many clients at one server, so spreading them buys nothing.
            retryDelay({ failures: d.failures, baseMs: 500, maxMs: 30_000, jitter: "none" }),
      );
    }
  }

  /**
   * Publishes one document; false when nothing could be sent (see `unsendable`). When the whole
   * content is larger than the device accepts, pods changed since the last document are left at
   * the version last sent (or left out, when new), largest first, until it fits (docs/protocol.md
   * § 9); those pods are marked `deferred`.
   */
  async #publish(
    d: DeviceDesired,
    pods: DesiredPod[],
    tombstones: Tombstone[],
    contentHash: string,
  ): Promise<boolean> {
    const max = this.#o.maxBytes(d.deviceId);
    let fitted: Fitted | undefined;
    try {
      fitted = fitDocument({
        deviceId: d.deviceId,
        entries: d.pods.values(),
        pods,
        tombstones,
        max,
        size: this.#o.documentSize ?? MESSAGE_BYTES,
      });
    } catch (err) {
      const message = `the desired document is invalid: ${(err as Error).message}`;
      this.#unsendable(d, contentHash, "DocumentInvalid", message);
      return false;
    }
    if (!fitted) {
      this.#o.metrics.inc("tooLarge");
      const message = `the desired document of this device would exceed ${(this.#o.documentSize ?? MESSAGE_BYTES).describe(max)}`;
      this.#unsendable(d, contentHash, "DocumentTooLarge", message);
      return false;
    }
    for (const p of d.pods.values()) p.deferred = fitted.deferred.has(p) ? fitted.deferred.get(p) : undefined;
    if (fitted.deferred.size > 0) this.#o.metrics.inc("tooLarge");
    const content = fitted.pods === pods ? contentHash : desiredContentHash(fitted.pods, tombstones);
    if (d.published ? d.published.contentHash === content : fitted.pods.length + tombstones.length === 0) {
      this.#o.onChange(d.deviceId);
      return true;
    }
    const { epoch, generation } = await this.#o.allocator.next(d.deviceId, d.published?.generation ?? 0);
    const doc: DesiredDocument = {
      protocol: 1,
      kind: "desired",
      deviceId: d.deviceId,
      epoch,
      generation,
      issuedAt: this.#o.now().toISOString(),
      pods: fitted.pods,
      tombstones,
      contentHash: content,
    };
    const payload = encodeMessage(doc);
    if (!this.#o.isCurrent(d)) return false; // forgotten (decommissioned) meanwhile
    // Changes made from now on wait for the next document.
    const changedAtMs = d.changedAtMs;
    d.changedAtMs = undefined;
    const carried = new Set<object>([...fitted.pods, ...tombstones]);
    for (const p of d.pods.values()) if (carried.has(p.desired)) p.sent = true;
    // No timeout here: MQTT.js keeps the message and sends it again after reconnecting, and until
    // it is acknowledged further changes wait (and coalesce) behind it.
    await this.#o.publish(topics.desired(d.deviceId), payload);
    this.#o.metrics.inc("published");
    this.#o.onPublished?.(d.deviceId, epoch, generation, Date.parse(doc.issuedAt), changedAtMs);
    d.published = { epoch, generation, contentHash: content };
    // `since` moves only for entries this document carried as they are now.
    const since = { epoch, generation };
    for (const p of d.pods.values()) {
      if (!carried.has(p.desired)) continue;
      p.lastSent = p.desired;
      if (p.since?.epoch !== epoch) p.since = since;
    }
    for (const t of d.tombstones.values())
      if (carried.has(t.tombstone) && t.since?.epoch !== epoch) t.since = since;
    this.#o.logger.debug(
      {
        device: d.deviceId,
        generation,
        pods: fitted.pods.length,
        tombstones: tombstones.length,
        bytes: payload.byteLength,
      },
      "published desired document",
    );
    this.#o.onChange(d.deviceId);
    return true;
  }
}
