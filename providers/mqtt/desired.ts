/**
 * DesiredStore: each device's desired state — its pods and tombstones — and the one retained
 * `desired` document that carries it (design decisions 2 and 3).
 *
 * Changes mark a device dirty; publishing is coalesced per device: the first change starts a short
 * debounce, everything changed until then goes out as one document (latest wins), and while a
 * publish is in flight further changes wait for the next one. A document whose content equals the
 * last published one is not sent again (this is what makes a restart re-publish nothing). Each
 * document gets a fresh generation from the {@link GenerationAllocator}, reserved durably first.
 * Changed pods that would make the document larger than the device accepts are held at their last
 * sent version (`deferred`, see fit.ts); when even that does not fit, nothing is sent and the
 * device is marked `unsendable`.
 *
 * Per pod and tombstone it remembers `since`: the first published (epoch, generation) that
 * carried it as it is now. Delivery stages are judged against it: an ack or report for an earlier
 * generation says nothing about the pod's current spec.
 *
 *   const store = new DesiredStore({ allocator, publish, maxBytes, debounceMs: 15, ... });
 *   store.upsertPod("gw-1", ref, desiredPod);           // publishes within ~debounceMs
 *   await store.tombstone("gw-1", ref, 30);              // resolves once the broker holds it
 */
import type { Logger } from "pino";
import { desiredContentHash, encodeMessage } from "../../src/protocol/codec.ts";
import { topics } from "../../src/protocol/topics.ts";
import type { DesiredDocument, DesiredPod, Tombstone } from "../../src/protocol/types.ts";
import { transient } from "../../src/provider/errors.ts";
import type { PodRef } from "../../src/provider/types.ts";
import type { DeviceDesired, PodEntry, TombstoneEntry } from "./desired-types.ts";
import { byKey, fitDocument, type Fitted } from "./fit.ts";
import type { GenerationAllocator } from "./generations.ts";
import type { MqttMetrics } from "./metrics.ts";

export type { DeviceDesired, PodEntry, Since, TombstoneEntry } from "./desired-types.ts";

export interface DesiredStoreOptions {
  readonly allocator: Pick<GenerationAllocator, "next">;
  readonly publish: (topic: string, payload: Buffer) => Promise<void>;
  /** Largest document the device accepts. */
  readonly maxBytes: (deviceId: string) => number;
  readonly debounceMs: number;
  readonly publishTimeoutMs: number;
  /** A document went out (or could not, `tooLarge`): delivery and status may have changed. */
  readonly onChange: (deviceId: string) => void;
  readonly metrics: MqttMetrics;
  readonly logger: Logger;
  readonly now?: () => Date;
}

const withTimeout = <T>(promise: Promise<T>, ms: number, what: string): Promise<T> =>
  new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(transient(`${what}: no answer within ${ms} ms`)), ms);
    promise.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (err: unknown) => {
        clearTimeout(timer);
        reject(err instanceof Error ? err : new Error(String(err)));
      },
    );
  });

export class DesiredStore {
  readonly #o: DesiredStoreOptions;
  readonly #now: () => Date;
  readonly #devices = new Map<string, DeviceDesired>();
  /** uid → device id, for pods and tombstones. */
  readonly #byUid = new Map<string, string>();
  #stopped = false;

  constructor(options: DesiredStoreOptions) {
    this.#o = options;
    this.#now = options.now ?? (() => new Date());
  }

  device(deviceId: string): DeviceDesired | undefined {
    return this.#devices.get(deviceId);
  }

  devices(): IterableIterator<DeviceDesired> {
    return this.#devices.values();
  }

  deviceOf(uid: string): string | undefined {
    return this.#byUid.get(uid);
  }

  #entry(deviceId: string): DeviceDesired {
    let d = this.#devices.get(deviceId);
    if (!d) {
      d = {
        deviceId,
        pods: new Map(),
        tombstones: new Map(),
        published: undefined,
        unsendable: undefined,
        changeSeq: 0,
        handledSeq: 0,
        durableSeq: 0,
        timer: undefined,
        inFlight: false,
        failures: 0,
        waiters: [],
      };
      this.#devices.set(deviceId, d);
    }
    return d;
  }

  /**
   * Takes a document read back from the broker (at start, or arriving late) as what the device has
   * been given, and returns the pods it newly brought in. What this process already decided wins:
   * - when a document of this process is already out (a different epoch, or a generation at or
   *   above this one), the read-back one is superseded and only floors the next generation;
   * - otherwise its pods and tombstones are taken, except uids this process already holds (those
   *   are only marked as sent, so deleting them needs a tombstone), and the next document is
   *   compared with (and numbered above) this one.
   */
  adopt(doc: DesiredDocument): PodEntry[] {
    const d = this.#entry(doc.deviceId);
    const since = { epoch: doc.epoch, generation: doc.generation };
    if (d.published && (d.published.epoch !== doc.epoch || d.published.generation >= doc.generation))
      return [];
    d.published = { epoch: doc.epoch, generation: doc.generation, contentHash: doc.contentHash };
    const adopted: PodEntry[] = [];
    for (const p of doc.pods) {
      const held = d.pods.get(p.uid);
      if (held) {
        held.sent = true;
        held.lastSent ??= p;
        continue;
      }
      if (d.tombstones.has(p.uid)) continue;
      const entry: PodEntry = {
        ref: { namespace: p.namespace, name: p.name, uid: p.uid },
        desired: p,
        since,
        sent: true,
        lastSent: p,
        deferred: undefined,
        blocked: undefined,
      };
      d.pods.set(p.uid, entry);
      this.#byUid.set(p.uid, doc.deviceId);
      adopted.push(entry);
    }
    for (const t of doc.tombstones) {
      if (d.pods.has(t.uid) || d.tombstones.has(t.uid)) continue;
      d.tombstones.set(t.uid, {
        ref: { namespace: t.namespace, name: t.name, uid: t.uid },
        tombstone: t,
        hash: "",
        since,
      });
      this.#byUid.set(t.uid, doc.deviceId);
    }
    // Changes made before the document arrived go out above it (no-op when there were none).
    if (d.changeSeq > d.handledSeq) this.#schedule(d, this.#o.debounceMs);
    return adopted;
  }

  /**
   * Sets the pod's desired spec. A tombstone for the same uid is revived. Returns false when
   * nothing changed (same hash, same blocking).
   */
  upsertPod(deviceId: string, ref: PodRef, desired: DesiredPod, blocked?: PodEntry["blocked"]): boolean {
    const d = this.#entry(deviceId);
    const current = d.pods.get(ref.uid);
    const revived = d.tombstones.delete(ref.uid);
    if (!revived && current?.desired.hash === desired.hash && current.blocked?.reason === blocked?.reason)
      return false;
    const keep =
      current?.desired.hash === desired.hash && current.blocked === undefined && blocked === undefined;
    d.pods.set(ref.uid, {
      ref,
      desired,
      since: keep ? current.since : undefined,
      sent: revived || (current?.sent ?? false),
      lastSent: current?.lastSent,
      deferred: undefined,
      blocked,
    });
    this.#byUid.set(ref.uid, deviceId);
    this.#dirty(d);
    return true;
  }

  /**
   * Replaces the pod with a tombstone and resolves once a document carrying it is held by the
   * broker. A pod never published is simply dropped (the device cannot have it). Rejects Transient
   * when the broker does not take it within the publish timeout (the caller retries; the
   * tombstone stays and goes out with the next document anyway).
   */
  async tombstone(
    deviceId: string,
    ref: PodRef,
    gracePeriodSeconds: number,
  ): Promise<"tombstoned" | "dropped"> {
    const d = this.#entry(deviceId);
    const pod = d.pods.get(ref.uid);
    if (!d.tombstones.has(ref.uid)) {
      if (!pod?.sent) {
        if (pod) {
          d.pods.delete(ref.uid);
          this.#byUid.delete(ref.uid);
          this.#dirty(d);
        }
        return "dropped";
      }
      d.pods.delete(ref.uid);
      const tombstone: Tombstone = {
        uid: ref.uid,
        namespace: ref.namespace,
        name: ref.name,
        deleted: true,
        gracePeriodSeconds,
      };
      d.tombstones.set(ref.uid, { ref, tombstone, hash: pod.desired.hash, since: undefined });
      this.#byUid.set(ref.uid, deviceId);
      this.#dirty(d);
    }
    const seq = d.changeSeq;
    if (d.durableSeq >= seq) return "tombstoned";
    await withTimeout(
      new Promise<void>((resolve) => d.waiters.push({ seq, resolve })),
      this.#o.publishTimeoutMs,
      `publishing the tombstone of ${ref.namespace}/${ref.name} for ${deviceId}`,
    );
    return "tombstoned";
  }

  /** Drops a tombstone the device has confirmed; the next document leaves it out. */
  clearTombstone(deviceId: string, uid: string): TombstoneEntry | undefined {
    const d = this.#devices.get(deviceId);
    const t = d?.tombstones.get(uid);
    if (!d || !t) return undefined;
    d.tombstones.delete(uid);
    if (!d.pods.has(uid)) this.#byUid.delete(uid);
    this.#dirty(d);
    return t;
  }

  /** Tries again what is pending or could not be sent (e.g. after a birth announcing a new size). */
  kick(deviceId: string): void {
    const d = this.#devices.get(deviceId);
    if (!d) return;
    if (d.unsendable) {
      d.unsendable = undefined;
      d.changeSeq++;
    }
    if (d.changeSeq > d.handledSeq) this.#schedule(d, 0);
  }

  /**
   * Forgets a decommissioned device: its pods and tombstones, and any publish not yet made (a
   * document being prepared is not sent). Callers waiting for a tombstone are released. Returns
   * what it held.
   */
  forget(deviceId: string): DeviceDesired | undefined {
    const d = this.#devices.get(deviceId);
    if (!d) return undefined;
    clearTimeout(d.timer);
    d.timer = undefined;
    this.#devices.delete(deviceId);
    for (const uid of [...d.pods.keys(), ...d.tombstones.keys()])
      if (this.#byUid.get(uid) === deviceId) this.#byUid.delete(uid);
    for (const w of d.waiters) w.resolve();
    d.waiters = [];
    return d;
  }

  /** Publishes every device's document again, even unchanged (the broker may have lost it). */
  republishAll(): void {
    for (const d of this.#devices.values()) {
      if (!d.published) continue;
      d.published = { ...d.published, contentHash: "" };
      this.#dirty(d);
    }
  }

  stop(): void {
    this.#stopped = true;
    for (const d of this.#devices.values()) clearTimeout(d.timer);
  }

  #unsendable(
    d: DeviceDesired,
    contentHash: string,
    reason: "DocumentTooLarge" | "DocumentInvalid",
    message: string,
  ): void {
    if (d.unsendable?.message !== message)
      this.#o.logger.warn({ deviceId: d.deviceId, reason, message }, "desired document not sent");
    d.unsendable = { reason, message, contentHash };
    this.#o.onChange(d.deviceId);
  }

  #dirty(d: DeviceDesired): void {
    d.changeSeq++;
    this.#schedule(d, this.#o.debounceMs);
  }

  #schedule(d: DeviceDesired, delayMs: number): void {
    if (d.timer !== undefined || d.inFlight || this.#stopped) return;
    d.timer = setTimeout(() => {
      d.timer = undefined;
      void this.#flush(d);
    }, delayMs);
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
      d.handledSeq = seq;
      d.failures = 0;
      if (durable) {
        d.unsendable = undefined;
        d.durableSeq = seq;
        for (const w of d.waiters.filter((w) => w.seq <= seq)) w.resolve();
        d.waiters = d.waiters.filter((w) => w.seq > seq);
      }
    } catch (err) {
      d.failures++;
      this.#o.logger.warn(
        { err, deviceId: d.deviceId, failures: d.failures },
        "publishing desired document failed; retrying",
      );
    } finally {
      d.inFlight = false;
    }
    if (d.changeSeq > d.handledSeq) {
      this.#schedule(
        d,
        d.failures === 0 ? this.#o.debounceMs : Math.min(30_000, 250 * 2 ** Math.min(d.failures, 7)),
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
      fitted = fitDocument({ deviceId: d.deviceId, entries: d.pods.values(), pods, tombstones, max });
    } catch (err) {
      const message = `the desired document is invalid: ${(err as Error).message}`;
      this.#unsendable(d, contentHash, "DocumentInvalid", message);
      return false;
    }
    if (!fitted) {
      this.#o.metrics.inc("tooLarge");
      const message = `the desired document of this device would exceed the ${max} bytes it accepts`;
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
      issuedAt: this.#now().toISOString(),
      pods: fitted.pods,
      tombstones,
      contentHash: content,
    };
    const payload = encodeMessage(doc);
    if (this.#devices.get(d.deviceId) !== d) return false; // forgotten (decommissioned) meanwhile
    const carried = new Set<object>([...fitted.pods, ...tombstones]);
    for (const p of d.pods.values()) if (carried.has(p.desired)) p.sent = true;
    // No timeout here: MQTT.js keeps the message and sends it again after reconnecting, and until
    // it is acknowledged further changes wait (and coalesce) behind it.
    await this.#o.publish(topics.desired(d.deviceId), payload);
    this.#o.metrics.inc("published");
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
        deviceId: d.deviceId,
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
