/**
 * Applying desired documents at most once (docs/protocol.md § 4), for one device session: keeps the
 * (epoch, generation) seen and applied, takes one document at a time (a newer one that arrives
 * meanwhile replaces any queued one: latest wins), acks each in stages, and repeats the final ack
 * when the same document comes again (a retained redelivery).
 *
 *   const applier = new DesiredApplier({ runtime, ack, persist, report, canApply, logger });
 *   applier.offer(doc);    // from the desired topic; applied now or once canApply() turns true
 *   applier.kick();        // when canApply() may have turned true (after a birth)
 *
 * Durability (write-ahead): before the runtime acts on a document, that document becomes the
 * {@link DesiredApplier.durable} state and `persist()` must succeed, so `applied` is never acked
 * for state that is not on disk, and an agent killed mid-apply restarts into the document it was
 * applying (it re-runs its pods and cleans up whatever the earlier run left). When persisting
 * fails the runtime is not touched and the document is acked `rejected` with reason
 * `PersistFailed` (§ 4: "cannot use the document at all … keeps running what it ran"); the
 * device then forgets having seen it, so the next delivery of the same document (the retained
 * copy on reconnect, or after a restart) is tried again.
 *
 * Rejections (docs/protocol.md § 4): a document the runtime refuses, or one that failed validation
 * with a readable (epoch, generation) ({@link DesiredApplier.offerInvalid}), is the device's final
 * answer for that version: `observedGeneration` moves to it, what runs stays, and
 * {@link DesiredApplier.rejection} holds the reason for the report until a later document is seen.
 * A redelivered rejected version is not evaluated again; its `rejected` ack is repeated. Invalid
 * documents queue with valid ones, so the newest of either kind wins. The rejection is stored with
 * the durable state ({@link DesiredApplier.keptRejection}, persisted once it is set) and restored
 * by {@link DesiredApplier.restore}, so an agent restart keeps that answer too; a `PersistFailed`
 * rejection is never kept (it is retried).
 */
import type { Logger } from "pino";
import type { DesiredDocument, DesiredPod } from "../protocol/types.ts";
import type { DesiredAck } from "./outbox.ts";
import { RuntimeRefusal, type Runtime } from "./runtime.ts";

/** A document that failed validation but whose version is readable: acked `rejected` in turn. */
export interface InvalidDesired {
  readonly kind: "invalid";
  readonly epoch: string;
  readonly generation: number;
  readonly reason: string;
  readonly message: string;
}

/** `reported.rejection`: the newest document seen was rejected (docs/protocol.md § 3.3). */
export interface Rejection {
  readonly generation: number;
  readonly reason: string;
  readonly message: string;
}

/** A rejection as the device stores it: with its epoch, without the document's content. */
export interface KeptRejection extends Rejection {
  readonly epoch: string;
}

/** What {@link DesiredApplier.restore} takes: the stored state, as the session's store loads it. */
export interface RestoredDesired extends DurableDesired {
  readonly rejection?: KeptRejection | undefined;
}

export interface AppliedGeneration {
  readonly epoch: string;
  readonly generation: number;
}

/** What the device keeps in storage: the document it is committed to and that document's pods. */
export interface DurableDesired {
  readonly epoch: string | null;
  readonly appliedGeneration: number;
  readonly pods: readonly DesiredPod[];
}

const PERSIST_FAILED = "PersistFailed";

const NOTHING_KEPT: DurableDesired = { epoch: null, appliedGeneration: 0, pods: [] };

export interface ApplierHooks {
  readonly runtime: Runtime;
  readonly ack: (ack: DesiredAck) => void;
  /**
   * Makes {@link DesiredApplier.durable} durable (when the device has storage); rejects when that
   * failed. Awaited before the runtime applies a document, so before `applied`.
   */
  readonly persist: () => Promise<void>;
  readonly report: () => void;
  /** Documents are applied only while this holds (online, not stopping). */
  readonly canApply: () => boolean;
  readonly logger: Logger;
}

export class DesiredApplier {
  epoch: string | null = null;
  observedGeneration = 0;
  appliedGeneration = 0;
  /** The pods of the last applied document (what a device with storage keeps). */
  appliedPods: readonly DesiredPod[] = [];
  /** Documents applied by this object (not restores). */
  applies = 0;
  /**
   * Applied documents that changed what the device runs (a pod added, replaced or removed). A
   * document that only drops a tombstone the device already carried out applies, but changes
   * nothing; this is the count that must be exactly one per queued change.
   */
  changes = 0;
  readonly applied: AppliedGeneration[] = [];
  /** What to persist; may be ahead of `appliedGeneration` while a document is being applied. */
  durable: DurableDesired = NOTHING_KEPT;
  /** Set while the newest document seen (`observedGeneration`) is one this device rejected. */
  rejection: Rejection | undefined;
  readonly #h: ApplierHooks;
  #pending: DesiredDocument | InvalidDesired | undefined;
  #draining: Promise<void> | undefined;
  #lastFinal: DesiredAck | undefined;
  /** Bumped by reset(): an apply of an earlier boot drops its result. */
  #era = 0;

  constructor(hooks: ApplierHooks) {
    this.#h = hooks;
  }

  /**
   * State kept in storage across a restart or reboot: that document is not applied again, and a
   * kept rejection newer than it is reported again and only has its `rejected` ack repeated.
   */
  restore(saved: RestoredDesired): void {
    this.epoch = saved.epoch;
    this.observedGeneration = this.appliedGeneration = saved.appliedGeneration;
    this.appliedPods = saved.pods;
    this.durable = { epoch: saved.epoch, appliedGeneration: saved.appliedGeneration, pods: saved.pods };
    if (saved.epoch !== null && saved.appliedGeneration > 0) {
      this.#lastFinal = { epoch: saved.epoch, generation: saved.appliedGeneration, stage: "applied" };
    }
    const kept = saved.rejection;
    if (!kept || kept.reason === PERSIST_FAILED || this.#isDone(kept)) return;
    const { epoch, generation, reason, message } = kept;
    if (epoch !== this.epoch) {
      this.epoch = epoch;
      this.appliedGeneration = 0;
    }
    this.observedGeneration = generation;
    this.rejection = { generation, reason, message };
    this.#lastFinal = { epoch, generation, stage: "rejected", reason, message };
  }

  /**
   * The rejection to store with {@link durable}, or undefined: the one in the report, with its
   * epoch (that of the newest document seen). Never a `PersistFailed` one, which is retried.
   */
  get keptRejection(): KeptRejection | undefined {
    const rejection = this.rejection;
    if (!rejection || this.epoch === null || rejection.reason === PERSIST_FAILED) return undefined;
    return { epoch: this.epoch, ...rejection };
  }

  /** Forgets everything (a reboot); waits for an apply in progress to finish first. */
  async reset(): Promise<void> {
    this.#era++;
    this.#pending = undefined;
    await this.#draining;
    this.epoch = null;
    this.observedGeneration = this.appliedGeneration = 0;
    this.appliedPods = [];
    this.durable = NOTHING_KEPT;
    this.rejection = undefined;
    this.#lastFinal = undefined;
  }

  /** No more applying; resolves once an apply in progress is done. */
  async settle(): Promise<void> {
    this.#pending = undefined;
    await this.#draining;
  }

  /** An invalid document with a readable version: rejected in turn, like a refused one. */
  offerInvalid(doc: InvalidDesired): void {
    this.offer(doc);
  }

  offer(doc: DesiredDocument | InvalidDesired): void {
    if (this.#isDone(doc)) {
      const final = this.#lastFinal;
      if (final?.epoch === doc.epoch && final.generation === doc.generation && !this.#pending)
        this.#h.ack(final);
      return;
    }
    const queued = this.#pending;
    if (!queued || queued.epoch !== doc.epoch || doc.generation > queued.generation) this.#pending = doc;
    this.kick();
  }

  /** Starts applying what is pending, if allowed; one document at a time. */
  kick(): void {
    if (this.#draining || !this.#pending || !this.#h.canApply()) return;
    this.#draining = this.#drain().finally(() => {
      this.#draining = undefined;
      this.kick();
    });
  }

  #isDone(doc: { epoch: string; generation: number }): boolean {
    return (
      doc.epoch === this.epoch && doc.generation <= Math.max(this.observedGeneration, this.appliedGeneration)
    );
  }

  async #drain(): Promise<void> {
    const era = this.#era;
    while (this.#pending && era === this.#era && this.#h.canApply()) {
      const doc = this.#pending;
      this.#pending = undefined;
      if (this.#isDone(doc)) continue;
      if (doc.kind === "invalid") this.#rejectInvalid(doc);
      else await this.#apply(doc, era);
    }
  }

  #rejectInvalid(doc: InvalidDesired): void {
    const { epoch, generation, reason, message } = doc;
    if (epoch !== this.epoch) {
      this.epoch = epoch;
      this.appliedGeneration = 0;
    }
    this.observedGeneration = generation;
    this.rejection = { generation, reason, message };
    this.#keepRejection();
    this.#final({ epoch, generation, stage: "rejected", reason, message });
  }

  /** Best effort: a rejection lost to a failed save is only evaluated again on its next delivery. */
  #keepRejection(): void {
    this.#h.persist().catch(() => undefined);
  }

  async #apply(doc: DesiredDocument, era: number): Promise<void> {
    const { epoch, generation } = doc;
    const seen = [this.epoch, this.observedGeneration, this.appliedGeneration] as const;
    if (epoch !== this.epoch) {
      this.epoch = epoch;
      this.appliedGeneration = 0;
    }
    this.observedGeneration = generation;
    const rejection = this.rejection;
    this.rejection = undefined;
    this.#h.ack({ epoch, generation, stage: "received" });
    const kept = this.durable;
    this.durable = { epoch, appliedGeneration: generation, pods: doc.pods };
    try {
      await this.#h.persist();
    } catch (err) {
      if (era !== this.#era) return;
      this.durable = kept;
      // Unseen again: the next delivery of this document tries once more.
      [this.epoch, this.observedGeneration, this.appliedGeneration] = seen;
      this.rejection = rejection;
      const message = `cannot store the desired state, nothing changed: ${(err as Error).message}`;
      this.#h.logger.error({ epoch, generation, err: (err as Error).message }, "desired document rejected");
      // Best effort: the last write should hold what still runs.
      this.#h.persist().catch(() => undefined);
      this.#final({ epoch, generation, stage: "rejected", reason: PERSIST_FAILED, message });
      return;
    }
    if (era !== this.#era) return;
    try {
      await this.#h.runtime.apply(doc.pods, doc.tombstones);
    } catch (err) {
      if (era !== this.#era) return;
      this.durable = kept;
      const reason = err instanceof RuntimeRefusal ? err.reason : "ApplyFailed";
      const message = (err as Error).message;
      this.rejection = { generation, reason, message };
      this.#keepRejection();
      this.#h.logger.warn({ epoch, generation, reason, message }, "desired document rejected");
      this.#final({ epoch, generation, stage: "rejected", reason, message });
      return;
    }
    if (era !== this.#era) return;
    this.appliedGeneration = generation;
    const before = new Set(this.appliedPods.map((p) => `${p.uid}/${p.hash}`));
    const after = new Set(doc.pods.map((p) => `${p.uid}/${p.hash}`));
    if (before.size !== after.size || [...after].some((k) => !before.has(k))) this.changes++;
    this.appliedPods = doc.pods;
    this.applies++;
    this.applied.push({ epoch, generation });
    this.#h.logger.debug({ epoch, generation, pods: doc.pods.length }, "desired document applied");
    this.#final({ epoch, generation, stage: "applied" });
  }

  #final(ack: DesiredAck): void {
    this.#lastFinal = ack;
    this.#h.ack(ack);
    this.#h.report();
  }
}
