/**
 * {@link PodDeletion}: deleting a device pod the way a kubelet deletes a pod.
 *
 * - A pod object marked for deletion (`deletionTimestamp`) is stopped on the provider with its
 *   `deletionGracePeriodSeconds`; a later delete with a shorter grace period is forwarded.
 * - The pod object is removed (the final delete with grace 0 and a UID precondition) only once the
 *   provider confirms the apps stopped: `notifyDeleted`, or `getPodStatus` resolving undefined for
 *   a provider without notices. Until then the pod stays Terminating, whatever its grace period
 *   says, with the `devicelet.dev/StopConfirmed` condition False (`WaitingForDevice`) once the
 *   device is offline or the grace period is over. This keeps a StatefulSet at one instance: its
 *   controller creates the replacement only when the old object is gone.
 * - The grace period is over when it is over both by the pod's `deletionTimestamp` and counted from
 *   when this process asked the provider to stop the pod, as a kubelet counts it from when it starts
 *   killing: a pod whose deletion waited in the queue past its deadline (a burst of deletes, a
 *   restart) still gives the device the whole grace period before it is said to be waiting.
 * - A pod object removed by someone else (a force delete, `--grace-period=0 --force`, or while
 *   devicelet was down) still gets its provider work deleted, with the last deletion grace period
 *   seen or else the pod spec's `terminationGracePeriodSeconds` (30 when unknown), not 0.
 * - After the final delete, a pod with finalizers lingers until they are removed: nothing more is
 *   done for it, and nothing is created again.
 *
 * Every path that forgets a pod calls `release`, which frees its IP and per-pod memory.
 */
import type { Logger } from "pino";
import { systemClock, type Clock } from "../base/clock.ts";
import { parseKubeTime, type KubeClient, type Pod } from "../kube/index.ts";
import { isNotFound as isGoneFromProvider } from "../provider/errors.ts";
import { hasDeletionNotifier, podKey, type PodLifecycleProvider, type PodRef } from "../provider/types.ts";
import type { ReconcileResult } from "../reconcile/queue.ts";
import type { FrozenEnv } from "../workload/index.ts";
import type { ManagedNode } from "../node/controller.ts";
import { waitingForDeviceStatus } from "./status.ts";

/** What the provider holds for a pod key, as far as this process knows. */
export interface Held {
  /**
   * The uid of the pod the work is for; with the key, the pod's {@link PodRef} ({@link heldRef}).
   * Not a ref of its own: 48 bytes a pod that the key already says.
   */
  uid: string;
  hash: string;
  /** The grace period the provider was last asked to stop the pod with; undefined until asked. */
  requestedGrace: number | undefined;
  /** The grace to stop it with if the object goes without our delete: the spec's, or a deletion's. */
  gracePeriodSeconds: number;
  /** Env given to the device, by container (set at the first create; undefined for adopted work). */
  env: ReadonlyMap<string, FrozenEnv> | undefined;
  /** The unsupported fields last warned about ("" when none), so each change is recorded once. */
  ignored: string;
}

/** The ref of held work under `key` (`namespace/name`, as {@link podKey} makes it). */
export function heldRef(key: string, held: Pick<Held, "uid">): PodRef {
  const slash = key.indexOf("/");
  return { namespace: key.slice(0, slash), name: key.slice(slash + 1), uid: held.uid };
}

export interface PodDeletionOptions {
  readonly kube: Pick<KubeClient, "deletePod">;
  readonly provider: PodLifecycleProvider;
  /** The controller's map of held work, by pod key: entries are removed here when done. */
  readonly held: Map<string, Held>;
  readonly counters: { deletes: number; podDeletes: number };
  readonly logger: Logger;
  readonly deviceOf: (nodeName: string) => Pick<ManagedNode, "deviceId" | "device"> | undefined;
  readonly writeStatus: (pod: Pod, ref: PodRef, status: object) => Promise<void>;
  /** Frees what the controller keeps for the pod (key: also its reference tracking). */
  readonly release: (key: string, uid: string) => void;
  /** Measures what is left of a grace period and stamps conditions; default {@link systemClock}. */
  readonly clock?: Clock;
}

/** Poll period for providers without deletion notices. */
const pollMs = 2_000;

export class PodDeletion {
  readonly #o: PodDeletionOptions;
  readonly #clock: Clock;
  /** Uids whose deletion the provider confirmed, until the controller forgets them. */
  readonly #confirmed = new Set<string>();
  /**
   * By uid, when the provider was last asked to stop the pod (epoch ms) plus the grace period it
   * was asked with: kept while the pod is Terminating, until the controller forgets it.
   */
  readonly #stopDeadlines = new Map<string, number>();
  /**
   * Uids of the pods this process removed (sent its final delete for), until the watch shows the
   * object gone. A reconcile meanwhile finds the pod in the cache as it was, or as the API server's
   * first phase of that delete left it (grace 0 stored, a MODIFIED event before the DELETED one),
   * and sending the delete again would only get a NotFound.
   */
  readonly #removed = new Set<string>();

  constructor(options: PodDeletionOptions) {
    this.#o = options;
    this.#clock = options.clock ?? systemClock;
  }

  /** The provider's notice that `ref` stopped; true when it is held work (reconcile the key). */
  confirmed(ref: PodRef): boolean {
    if (this.#o.held.get(podKey(ref))?.uid !== ref.uid) return false;
    this.#confirmed.add(ref.uid);
    return true;
  }

  /** The pod object was deleted from the API: keep a shorter deletion grace it carried. */
  objectGone(held: Held, last: Pod): void {
    const grace = last.metadata?.deletionGracePeriodSeconds;
    if (grace !== undefined && grace >= 0) held.gracePeriodSeconds = Math.min(held.gracePeriodSeconds, grace);
  }

  /** Pods whose removal waits for their watch's DELETED event (tests). */
  get removing(): number {
    return this.#removed.size;
  }

  release(uid: string): void {
    this.#confirmed.delete(uid);
    this.#stopDeadlines.delete(uid);
    this.#removed.delete(uid);
  }

  /** A Terminating pod: stop it on the provider, then remove the object once that is confirmed. */
  async reconcile(pod: Pod, ref: PodRef, held: Held | undefined): Promise<ReconcileResult> {
    const { provider, kube, counters } = this.#o;
    const key = podKey(ref);
    const meta = pod.metadata ?? {};
    if (!held && this.#removed.has(ref.uid)) return undefined;
    const grace = meta.deletionGracePeriodSeconds ?? held?.gracePeriodSeconds ?? 30;
    if (held) {
      held.gracePeriodSeconds = Math.min(held.gracePeriodSeconds, grace);
      if (held.requestedGrace === undefined || grace < held.requestedGrace) {
        // NotFound: the provider has nothing of it any more, which is the confirmation itself.
        this.#stopDeadlines.set(ref.uid, this.#clock.now() + grace * 1000);
        if ((await this.#stop(ref, grace)) === "gone") this.#confirmed.add(ref.uid);
        held.requestedGrace = grace;
      }
    }
    let confirmed = held === undefined || this.#confirmed.has(ref.uid);
    if (held && !confirmed && !hasDeletionNotifier(provider)) {
      confirmed = (await provider.getPodStatus(ref)) === undefined;
    }
    if (!confirmed) return this.#waitForDevice(pod, ref);

    this.#o.held.delete(key);
    this.#o.release(key, ref.uid);
    // Grace 0 already and finalizers pending: our final delete went through, or the user forced
    // it; the object goes once they are removed, and there is nothing left to do. Without
    // finalizers the object would be gone already, unless the final delete was cut off half-way
    // (its sender, an earlier devicelet process, killed after grace 0 was stored): delete it
    // again, as a kubelet's status manager does for every terminated pod it still sees.
    if (meta.deletionGracePeriodSeconds === 0 && (meta.finalizers?.length ?? 0) > 0) return undefined;
    // Marked before the request: the watch may show the object gone before the answer arrives.
    this.#removed.add(ref.uid);
    // A failed request, or a pod already gone (removed by someone else while the provider was
    // asked: its watch event may have come and gone during this reconcile), leaves no mark.
    let removed = false;
    try {
      removed = await kube.deletePod({
        namespace: ref.namespace,
        name: ref.name,
        uid: ref.uid,
        gracePeriodSeconds: 0,
      });
    } finally {
      if (!removed) this.#removed.delete(ref.uid);
    }
    counters.podDeletes++;
    return undefined;
  }

  /** Provider work whose pod object is gone: stop it there too, and forget it. */
  async forget(key: string, held: Held): Promise<void> {
    const grace = held.gracePeriodSeconds;
    // A provider that no longer has it (NotFound) is done with it too: forgotten, not retried.
    if (held.requestedGrace === undefined || grace < held.requestedGrace)
      await this.#stop(heldRef(key, held), grace);
    this.#o.held.delete(key);
    this.#o.release(key, held.uid);
    this.#o.logger.info(
      { pod: key, uid: held.uid, gracePeriodSeconds: grace },
      "removed provider work of a pod that no longer exists",
    );
  }

  /** Asks the provider to stop the pod; "gone" when it has no such pod (nothing left to stop). */
  async #stop(ref: PodRef, gracePeriodSeconds: number): Promise<"stopping" | "gone"> {
    try {
      await this.#o.provider.deletePod(ref, { gracePeriodSeconds });
    } catch (err) {
      if (!isGoneFromProvider(err)) throw err;
      this.#o.logger.info({ pod: podKey(ref), uid: ref.uid }, "the provider no longer has the pod");
      return "gone";
    }
    this.#o.counters.deletes++;
    return "stopping";
  }

  async #waitForDevice(pod: Pod, ref: PodRef): Promise<ReconcileResult> {
    const nodeName = pod.spec?.nodeName ?? "";
    const node = this.#o.deviceOf(nodeName);
    const deadline = Math.max(
      pod.metadata?.deletionTimestamp ? parseKubeTime(pod.metadata.deletionTimestamp) : 0,
      this.#stopDeadlines.get(ref.uid) ?? 0,
    );
    const remaining = deadline - this.#clock.now();
    const notified = hasDeletionNotifier(this.#o.provider);
    // A connected device normally confirms within the grace period: say nothing before it is over.
    if (node?.device.connected !== false && remaining > 0)
      return { requeueAfterMs: notified ? remaining + 50 : Math.min(remaining + 50, pollMs) };
    const device = node ? `device ${node.deviceId} (node ${nodeName})` : `node ${nodeName}`;
    await this.#o.writeStatus(
      pod,
      ref,
      waitingForDeviceStatus(pod, {
        message: `waiting for ${device} to confirm that the pod's apps stopped`,
        now: new Date(this.#clock.now()),
      }),
    );
    // With notices, the confirmation (or a change of the device) wakes the pod up.
    return notified ? undefined : { requeueAfterMs: pollMs };
  }
}
