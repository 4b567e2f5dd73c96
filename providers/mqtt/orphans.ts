/**
 * Pods adopted from a desired document that arrived late — after the engine listed the provider's
 * pods at start — and that the engine may never ask about.
 *
 * The engine learns what a provider holds from one `listPods()` call at start: work listed there
 * whose pod object is gone is deleted by the engine's pod controller. A pod adopted after that call
 * is invisible to it. If its pod object still exists, the engine calls createPod (or updatePod, or
 * deletePod) for it as soon as it reconciles that pod — the provider marks the device's status
 * changed right after adopting, which makes the engine look at those pods at once. If it does not
 * within `graceMs`, there is no pod object any more (deleted while devicelet was down) and
 * `onOrphan` is called: the provider tombstones the pod, as the engine would have done.
 *
 * Why in the provider: the engine has no way (in the provider contract) to be told of work found
 * after start other than its status callback, which only looks up pods that exist; a tombstone
 * after a grace period is what the engine would have done for the same pod listed at start.
 *
 *   const orphans = new Orphans({ graceMs: 60_000, desired, claimed, markStatus, ... });
 *   orphans.listed();                       // from listPods()
 *   orphans.adoptLate(doc);                 // a document the read-back got late
 *   orphans.claim(uid);                     // createPod/updatePod/deletePod
 */
import type { Logger } from "pino";
import type { DesiredDocument } from "../../src/protocol/types.ts";
import type { PodRef, ProviderEvent } from "../../src/provider/types.ts";
import type { DesiredStore } from "./desired.ts";

export interface OrphansOptions {
  readonly graceMs: number;
  readonly desired: Pick<DesiredStore, "adopt" | "device" | "tombstone">;
  /** Whether the engine gave this process a workload for the pod. */
  readonly claimed: (uid: string) => boolean;
  /** Push the device's pod statuses to the engine (which then reconciles those pods). */
  readonly markStatus: (deviceId: string) => void;
  /** Make sure the device has a node (its birth from the store, when it is away). */
  readonly restoreBirth: (deviceId: string) => Promise<void>;
  readonly recordEvent: (event: ProviderEvent) => void;
  /** The pod is gone from the device's document (notifyDeleted). */
  readonly deleted: (ref: PodRef) => void;
  readonly logger: Logger;
}

export class Orphans {
  readonly #o: OrphansOptions;
  /** uid → device of late-adopted pods the engine has not claimed yet. */
  readonly #unclaimed = new Map<string, { deviceId: string; ref: PodRef }>();
  readonly #timers = new Set<NodeJS.Timeout>();
  #listed = false;
  #stopped = false;

  constructor(options: OrphansOptions) {
    this.#o = options;
  }

  /** The engine listed the provider's pods: everything adopted until now is known to it. */
  listed(): void {
    this.#listed = true;
    this.#unclaimed.clear();
  }

  /** A document the read-back got after start: adopted like those read in time. */
  adoptLate(doc: DesiredDocument): void {
    const adopted = this.#o.desired.adopt(doc);
    this.#adopted(
      doc.deviceId,
      adopted.map((entry) => entry.ref),
    );
    this.#o.markStatus(doc.deviceId);
    void this.#o.restoreBirth(doc.deviceId);
  }

  /** Pods newly adopted for `deviceId`; only those adopted after listed() are watched. */
  #adopted(deviceId: string, refs: readonly PodRef[]): void {
    if (!this.#listed || this.#stopped || refs.length === 0) return;
    const uids = refs.map((ref) => {
      this.#unclaimed.set(ref.uid, { deviceId, ref });
      return ref.uid;
    });
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      for (const uid of uids) {
        const orphan = this.#unclaimed.get(uid);
        if (!orphan) continue;
        this.#unclaimed.delete(uid);
        this.#tombstone(orphan.deviceId, orphan.ref);
      }
    }, this.#o.graceMs);
    timer.unref();
    this.#timers.add(timer);
  }

  /** The engine asked about this pod: it has a pod object (or deletes it itself). */
  claim(uid: string): void {
    this.#unclaimed.delete(uid);
  }

  /** How many adopted pods wait for a claim. */
  get size(): number {
    return this.#unclaimed.size;
  }

  /** A late-adopted pod the engine never claimed: its pod object is gone, so stop it. */
  #tombstone(deviceId: string, ref: PodRef): void {
    const entry = this.#o.desired.device(deviceId)?.pods.get(ref.uid);
    if (!entry || this.#o.claimed(ref.uid)) return;
    const grace = entry.desired.terminationGracePeriodSeconds;
    const pod = `${ref.namespace}/${ref.name}`;
    this.#o.logger.warn(
      { device: deviceId, pod, uid: ref.uid, graceSeconds: grace },
      "a pod found in a late read-back document has no pod object; tombstoning it",
    );
    this.#o.recordEvent({
      involved: { kind: "Device", deviceId },
      type: "Normal",
      reason: "OrphanRemoved",
      message: `pod ${pod} (${ref.uid}) no longer exists; stopping its apps`,
    });
    this.#o.desired.tombstone(deviceId, ref, grace).then(
      (outcome) => {
        if (outcome === "dropped") this.#o.deleted(ref);
      },
      (err: unknown) =>
        this.#o.logger.warn(
          { err, device: deviceId, uid: ref.uid },
          "the orphan's tombstone is not out yet; it goes with the next document",
        ),
    );
  }

  stop(): void {
    this.#stopped = true;
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
  }
}
