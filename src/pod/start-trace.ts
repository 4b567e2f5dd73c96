/**
 * {@link PodStartTrace}: where a pod's start spends its time inside devicelet, stage by stage, for
 * `devicelet_pod_start_stage_seconds{stage}` (docs/metrics.md). A pod is followed from the moment
 * this process first sees it bound to a served node until its Running status is written:
 *
 * - `watch`: bound (the PodScheduled condition's time, else creation; one-second resolution) → seen
 *   by this process's pod watch (the scheduler's write, the API server's watch delivery, this
 *   process's event loop);
 * - `queue`: seen → its reconcile hands it to the provider (work queue, API budget, config lookups);
 * - `provider`: the provider's `createPod` call;
 * - `device`: handed to the provider → the provider pushes a Running status (the provider's
 *   debounce, delivery, the device's apply, the app's start and its report). This overlaps
 *   `provider` when `createPod` waits for the transport (the MQTT provider returns once the broker
 *   holds the document, and a fast device may report Running before that);
 * - `status`: the later of `createPod` returning and that push → the Running status written (status
 *   debounce, coalescing, the API write).
 *
 * So a start takes `queue` + the longer of `provider` and `device` + `status`.
 *
 * Only pods whose whole start this process saw are measured (not pods adopted Running after a
 * restart), each once. What is followed is forgotten when the pod is released, so memory is bounded
 * by the pods being started; at most {@link MAX_FOLLOWED} are followed at once.
 *
 *   const trace = new PodStartTrace((stage, seconds) => metrics.podStartStage(stage, seconds), now);
 *   trace.seen(uid, boundMs); trace.creating(uid); trace.created(uid); trace.reported(uid);
 *   const start = trace.written(uid); // the whole timeline, for a debug log line
 */

export type PodStartStage = "watch" | "queue" | "provider" | "device" | "status";

/** Beyond this many pods being started at once, new ones are not followed. */
export const MAX_FOLLOWED = 100_000;

interface Followed {
  readonly boundMs: number | undefined;
  readonly seenMs: number;
  creatingMs?: number;
  createdMs?: number;
  reportedMs?: number;
}

/** One measured start: when each stage ended, in ms since the epoch (`boundMs` when known). */
export interface PodStartTimeline {
  readonly boundMs: number | undefined;
  readonly seenMs: number;
  readonly creatingMs: number;
  readonly createdMs: number;
  readonly reportedMs: number;
  readonly writtenMs: number;
}

export class PodStartTrace {
  readonly #observe: (stage: PodStartStage, seconds: number) => void;
  readonly #now: () => number;
  readonly #pods = new Map<string, Followed>();

  constructor(observe: (stage: PodStartStage, seconds: number) => void, now: () => number) {
    this.#observe = observe;
    this.#now = now;
  }

  /** How many pods are followed now. */
  get size(): number {
    return this.#pods.size;
  }

  /**
   * The pod, not yet handed to the provider, is seen bound to a served node; it was bound at
   * `boundMs` when that is known.
   */
  seen(uid: string, boundMs?: number): void {
    if (this.#pods.has(uid) || this.#pods.size >= MAX_FOLLOWED) return;
    this.#pods.set(uid, { boundMs, seenMs: this.#now() });
  }

  /** Its reconcile calls the provider's `createPod` now. */
  creating(uid: string): void {
    const p = this.#pods.get(uid);
    if (p && p.creatingMs === undefined) p.creatingMs = this.#now();
  }

  /** `createPod` returned. */
  created(uid: string): void {
    const p = this.#pods.get(uid);
    if (p?.creatingMs !== undefined && p.createdMs === undefined) p.createdMs = this.#now();
  }

  /** The provider pushed a status with the pod Running (possibly before `createPod` returned). */
  reported(uid: string): void {
    const p = this.#pods.get(uid);
    if (p?.creatingMs !== undefined && p.reportedMs === undefined) p.reportedMs = this.#now();
  }

  /**
   * The Running status was written: every stage is observed, and the pod is no longer followed.
   * Returns the start's timeline when it was measured.
   */
  written(uid: string): PodStartTimeline | undefined {
    const p = this.#pods.get(uid);
    if (!p) return undefined;
    this.#pods.delete(uid);
    // A pod that ran without a pushed report (a polled provider) has no device/status split.
    const { creatingMs, createdMs, reportedMs } = p;
    if (creatingMs === undefined || createdMs === undefined || reportedMs === undefined) return undefined;
    const now = this.#now();
    // A clock behind the API server's, or the one-second resolution, may put bound after seen.
    if (p.boundMs !== undefined) this.#observe("watch", Math.max(0, p.seenMs - p.boundMs) / 1000);
    this.#observe("queue", (creatingMs - p.seenMs) / 1000);
    this.#observe("provider", (createdMs - creatingMs) / 1000);
    this.#observe("device", (reportedMs - creatingMs) / 1000);
    this.#observe("status", (now - Math.max(createdMs, reportedMs)) / 1000);
    return { boundMs: p.boundMs, seenMs: p.seenMs, creatingMs, createdMs, reportedMs, writtenMs: now };
  }

  /** The pod is gone or will not start here: stop following it. */
  forget(uid: string): void {
    this.#pods.delete(uid);
  }
}
