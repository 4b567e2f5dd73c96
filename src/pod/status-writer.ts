/**
 * {@link StatusWriter}: pod status written through the `status` subresource only when it changed,
 * compared with what this process last wrote until the pod watch has caught up with that write
 * (so a status is never written twice because the cache was stale).
 *
 * A write is kept only until the cache shows it: the first {@link StatusWriter.latest} (every
 * reconcile and write goes through it) that sees the cached pod at or past the write's
 * resourceVersion forgets it, and from then on the cache is the reference. So in steady state
 * nothing is held per pod; only writes the watch has not delivered yet are.
 *
 *   const pod = writer.latest(cached);   // build the next status from this
 *   await writer.write(pod, ref, buildPodStatus({ pod, ... }));
 */
import type { Logger } from "pino";
import { includesWrite, toWire, type KubeClient, type Pod, type PodStatus } from "../kube/index.ts";
import { podKey, type PodRef } from "../provider/types.ts";
import { statusChanged, withOwnContainerIds } from "./status.ts";

/** The last status this process wrote, to avoid writing it again before the watch catches up. */
interface Written {
  /** resourceVersion the API server gave the pod for this write. */
  resourceVersion: string;
  status: PodStatus;
}

export interface StatusWriterOptions {
  readonly kube: Pick<KubeClient, "patchPodStatus">;
  readonly logger: Logger;
  readonly counters: { statusWrites: number };
  /** Called after a write that took the pod from any other phase to Running (metrics). */
  readonly onRunning?: (pod: Pod, status: PodStatus) => void;
}

export class StatusWriter {
  readonly #o: StatusWriterOptions;
  readonly #written = new Map<string, Written>();

  constructor(options: StatusWriterOptions) {
    this.#o = options;
  }

  /** Writes the pod watch has not shown yet. */
  get size(): number {
    return this.#written.size;
  }

  release(uid: string): void {
    this.#written.delete(uid);
  }

  /**
   * The pod as the API server has it as far as this process knows: the cached pod, with the status
   * this process last wrote while the watch has not caught up with that write. Build the next
   * status from this, not from the cache: a condition that changed in our last write would
   * otherwise look new again, get a new `lastTransitionTime`, and be written once more. Once the
   * cached pod includes the last write, that write is forgotten and the pod is returned as is.
   */
  latest(pod: Pod): Pod {
    const uid = pod.metadata?.uid ?? "";
    const written = this.#written.get(uid);
    if (!written) return pod;
    if (!includesWrite(pod.metadata?.resourceVersion ?? "", written.resourceVersion))
      return { ...pod, status: written.status };
    this.#written.delete(uid);
    return pod;
  }

  /** Writes `built` (a status as `status.ts` builds it) unless it would change nothing. */
  async write(pod: Pod, ref: PodRef, built: object): Promise<void> {
    // Until the watch shows our last write, compare with what we wrote, not the stale cache. The
    // comparison takes the status as built (Dates and all): most reconciles find nothing to write.
    const current = this.latest(pod).status;
    if (!statusChanged(current, built, pod)) return;
    // A status made from the cached one (a Terminating pod's, which keeps its containers as they
    // were) holds the cache's marker for the pod's own container IDs: the API server gets the IDs.
    const wire = toWire(built) as PodStatus;
    const next = withOwnContainerIds({ ...pod, status: wire }).status;
    // The summary is built only when it is logged: this runs once per pod start.
    if (this.#o.logger.isLevelEnabled("debug"))
      this.#o.logger.debug(
        {
          pod: podKey(ref),
          phase: next.phase,
          conditions: next.conditions?.map((c) => `${c.type}=${c.status}`).join(","),
          containers: next.containerStatuses?.map((c) => Object.keys(c.state ?? {}).join("")).join(","),
        },
        "writing pod status",
      );
    const updated = await this.#o.kube.patchPodStatus({
      namespace: ref.namespace,
      name: ref.name,
      uid: ref.uid,
      status: next,
    });
    this.#o.counters.statusWrites++;
    this.#written.set(ref.uid, { resourceVersion: updated.metadata?.resourceVersion ?? "", status: next });
    if (next.phase === "Running" && current?.phase !== "Running") this.#o.onRunning?.(pod, next);
  }
}
