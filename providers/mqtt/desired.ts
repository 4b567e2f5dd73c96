/**
 * DesiredStore: each device's desired state — its pods and tombstones — and the one retained
 * `desired` document that carries it (docs/architecture.md, decisions 2 and 3).
 *
 * Changes mark a device dirty; its DesiredPublisher (desired-publisher.ts) gets them out: coalesced
 * per device over a short debounce, one document at a time, nothing sent again when the content
 * equals the last published one (this is what makes a restart re-publish nothing), each document
 * with a fresh generation from the {@link GenerationAllocator}, reserved durably first. Changed
 * pods that would make the document larger than the device accepts are held at their last sent
 * version (`deferred`, see fit.ts); when even that does not fit, nothing is sent and the device is
 * marked `unsendable`.
 *
 * Per pod and tombstone it remembers `since`: the first published (epoch, generation) that
 * carried it as it is now. Delivery stages are judged against it: an ack or report for an earlier
 * generation says nothing about the pod's current spec.
 *
 *   const store = new DesiredStore({ allocator, publish, maxBytes, debounceMs: 15, ... });
 *   store.upsertPod("gw-1", ref, desiredPod);           // publishes within ~debounceMs
 *   await store.held("gw-1", ref.uid);                   // resolves once the broker holds it
 *   await store.tombstone("gw-1", ref, 30);              // resolves once the broker holds it
 */
import type { Logger } from "pino";
import type { DesiredDocument, DesiredPod, Tombstone } from "../../src/protocol/types.ts";
import { transient } from "../../src/provider/errors.ts";
import type { PodRef } from "../../src/provider/types.ts";
import { DesiredPublisher, type DesiredPublisherOptions } from "./desired-publisher.ts";
import type { DeviceDesired, DocumentSize, PodEntry, TombstoneEntry } from "./desired-types.ts";
import type { GenerationAllocator } from "./generations.ts";
import type { MqttMetrics } from "./metrics.ts";

export type { DeviceDesired, DocumentSize, PodEntry, Since, TombstoneEntry } from "./desired-types.ts";

export interface DesiredStoreOptions {
  readonly allocator: Pick<GenerationAllocator, "next">;
  readonly publish: (topic: string, payload: Buffer) => Promise<void>;
  /** Largest document the device accepts. */
  readonly maxBytes: (deviceId: string) => number;
  /**
   * How a document's size is counted against `maxBytes`, and how the limit is named in refusals;
   * default the encoded message's bytes, "the N bytes it accepts". IoT Hub counts the twin section
   * the document becomes (providers/iothub).
   */
  readonly documentSize?: DocumentSize;
  readonly debounceMs: number;
  /**
   * How long a document may take to be held by the broker before waiting callers are rejected
   * Transient. Time the document spends waiting for its turn in a local rate budget
   * (`waitingForTurn`) does not count: a thousand first documents at IoT Hub's 20 twin updates a
   * second take 50 s, and rejecting them would only send the engine round its retry backoff.
   */
  readonly publishTimeoutMs: number;
  /** Whether the device's document is waiting for its turn in a local rate budget. Default: never. */
  readonly waitingForTurn?: (deviceId: string) => boolean;
  /**
   * Called once the broker holds a device's content, before callers waiting for it are released
   * (workload hashes, handed on to be stored later). Default: nothing to keep.
   */
  readonly persist?: (d: DeviceDesired) => void;
  /** Whether the broker connection is up (`stop` flushes pending documents only then). Default: yes. */
  readonly connected?: () => boolean;
  /** A document went out (or could not, `tooLarge`): delivery and status may have changed. */
  readonly onChange: (deviceId: string) => void;
  /** The broker took a device's document (its generation, and when it was issued): for metrics. */
  readonly onPublished?: DesiredPublisherOptions["onPublished"];
  readonly metrics: MqttMetrics;
  readonly logger: Logger;
  readonly now?: () => Date;
}

/** Rejects Transient after `ms`, counted again from the start while `waiting()` says so. */
const withTimeout = <T>(
  promise: Promise<T>,
  ms: number,
  what: string,
  waiting: () => boolean = () => false,
): Promise<T> =>
  new Promise<T>((resolve, reject) => {
    const expire = () => {
      if (waiting()) timer = setTimeout(expire, ms);
      else reject(transient(`${what}: no answer within ${ms} ms`));
    };
    let timer = setTimeout(expire, ms);
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
  readonly #publisher: DesiredPublisher;
  readonly #devices = new Map<string, DeviceDesired>();
  /** uid → device id, for pods and tombstones. */
  readonly #byUid = new Map<string, string>();

  constructor(options: DesiredStoreOptions) {
    this.#o = options;
    this.#publisher = new DesiredPublisher({
      ...options,
      persist: options.persist ?? (() => undefined),
      now: options.now ?? (() => new Date()),
      isCurrent: (d) => this.#devices.get(d.deviceId) === d,
    });
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
        changedAtMs: undefined,
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
    if (d.changeSeq > d.handledSeq) this.#publisher.schedule(d, this.#o.debounceMs);
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
    this.#publisher.dirty(d);
    return true;
  }

  /**
   * A change that leaves the document as it is (the engine's workload hash changed, the content
   * did not): flushed like any change, so `persist` sees it and `held` waits for it.
   */
  touch(deviceId: string): void {
    const d = this.#devices.get(deviceId);
    if (d) this.#publisher.dirty(d);
  }

  /**
   * Resolves once the device's changes made so far (the pod's among them) are held by the broker
   * in a retained document, or found unsendable as a whole (DocumentTooLarge,
   * DocumentInvalid: the pod is then held back with that reason, as it is when it was left out to
   * fit, and no document will come for it until something changes). A pod kept out of the
   * document (`blocked`) resolves at once: what holds it is this store, reporting the reason.
   *
   * While the broker is away the change stays queued here and in MQTT.js's in-memory store,
   * neither of which survives a process restart, so this does not resolve: it rejects Transient
   * after the publish timeout, the engine retries with backoff, and the change is carried out by
   * whichever publish comes first (a restart before then leaves the engine to give it again).
   * @throws ProviderError Transient when the broker does not take the document in time.
   */
  async held(deviceId: string, uid: string): Promise<void> {
    const d = this.#devices.get(deviceId);
    if (!d || d.pods.get(uid)?.blocked) return;
    const seq = d.changeSeq;
    if (d.handledSeq >= seq) return;
    await withTimeout(
      new Promise<void>((resolve) => d.waiters.push({ seq, until: "handled", resolve })),
      this.#o.publishTimeoutMs,
      `publishing the desired document of ${deviceId}`,
      () => this.#o.waitingForTurn?.(deviceId) ?? false,
    );
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
          this.#publisher.dirty(d);
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
      this.#publisher.dirty(d);
    }
    const seq = d.changeSeq;
    if (d.durableSeq >= seq) return "tombstoned";
    await withTimeout(
      new Promise<void>((resolve) => d.waiters.push({ seq, until: "durable", resolve })),
      this.#o.publishTimeoutMs,
      `publishing the tombstone of ${ref.namespace}/${ref.name} for ${deviceId}`,
      () => this.#o.waitingForTurn?.(deviceId) ?? false,
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
    this.#publisher.dirty(d);
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
    if (d.changeSeq > d.handledSeq) this.#publisher.schedule(d, 0);
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
      this.#publisher.dirty(d);
    }
  }

  /**
   * Stops publishing. While the broker is connected, what waits for its debounce is published
   * first (bounded by the publish timeout): a create that has not resolved yet then survives the
   * restart too. Without a connection nothing is waited for: the changes are lost with the process,
   * and the engine, whose calls have not resolved, gives them again.
   */
  async stop(): Promise<void> {
    if (this.#o.connected?.() ?? true) {
      const drained = this.#publisher.drain(this.#devices.values());
      try {
        await withTimeout(drained, this.#o.publishTimeoutMs, "publishing pending desired documents");
      } catch (err) {
        this.#o.logger.warn({ err }, "stopping with desired documents not published");
      }
    }
    this.#publisher.stop();
    for (const d of this.#devices.values()) clearTimeout(d.timer);
  }
}
