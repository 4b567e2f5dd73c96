/**
 * PodController: runs the pods the scheduler binds to devicelet's nodes, for every node at once.
 *
 * One pod watch for all nodes (`spec.nodeName!=`, filtered to managed nodes) feeds a keyed
 * {@link WorkQueue}; each reconcile re-reads the pod and what the provider holds and acts on the
 * difference, whatever woke it (STYLE.md: level-triggered). It:
 * - refuses pods using fields the provider does not declare (phase Failed, reason `Unsupported`);
 * - resolves env and files; a missing mandatory ConfigMap or Secret leaves the containers Waiting
 *   with `CreateContainerConfigError` (never started on the provider) and is retried until it appears;
 * - creates or updates the workload on the provider only when its hash changed, so a restart that
 *   adopts what the provider already runs re-applies nothing;
 * - writes status through the `status` subresource only when it changed, debounced per pod;
 * - on delete, asks the provider to stop the pod and removes the pod object once the provider
 *   confirms or the grace period ends; a pod object gone for good (force delete) is removed from the
 *   provider, as is provider work whose pod no longer exists.
 */
import type { Logger } from "pino";
import {
  EventRecorder,
  Informer,
  objectKey,
  parseKubeTime,
  toWire,
  type ConfigMap,
  type KubeClient,
  type Pod,
  type PodStatus,
  type Secret,
} from "../kube/index.ts";
import { isTerminal } from "../provider/errors.ts";
import {
  hasDeletionNotifier,
  hasStatusNotifier,
  podKey,
  type PodLifecycleProvider,
  type PodRef,
  type WorkloadStatus,
} from "../provider/types.ts";
import { WorkQueue, type ReconcileResult } from "../reconcile/queue.ts";
import { checkSupported, referencedObjects, translatePod } from "../workload/index.ts";
import type { NodeController } from "../node/controller.ts";
import { PodIpAllocator } from "./ip.ts";
import { buildFailedStatus, buildPodStatus, statusChanged } from "./status.ts";

export interface PodControllerConfig {
  readonly maxRetries: number;
  readonly baseRetryDelayMs: number;
  readonly maxRetryDelayMs: number;
  readonly statusDebounceMs: number;
  readonly ipRange: string;
  readonly kubeletAddress: string;
  /** Parallel reconciles (different pods); one pod is never reconciled twice at once. */
  readonly concurrency?: number;
}

export interface PodControllerOptions {
  readonly kube: KubeClient;
  readonly provider: PodLifecycleProvider;
  readonly nodes: Pick<NodeController, "byNodeName" | "onDeviceChange">;
  readonly events: EventRecorder;
  readonly config: PodControllerConfig;
  readonly logger: Logger;
}

/** What the provider holds for a pod key, as far as this process knows. */
interface Held {
  ref: PodRef;
  hash: string;
  deleteRequested: boolean;
}

/** The last status this process wrote, to avoid writing it again before the watch catches up. */
interface Written {
  /** resourceVersion the API server gave the pod for this write. */
  resourceVersion: string;
  status: PodStatus;
}

/**
 * Whether the cached pod at `cached` already includes our write at `written`. resourceVersions are
 * opaque to clients, but every API server backed by etcd issues increasing integers; when either
 * is not one, only equality counts.
 */
const includesWrite = (cached: string, written: string) =>
  /^\d+$/.test(cached) && /^\d+$/.test(written) ? BigInt(cached) >= BigInt(written) : cached === written;

const configErrorRetryMs = 5_000;

export class PodController {
  readonly #o: PodControllerOptions;
  readonly #log: Logger;
  readonly #informer: Informer<Pod>;
  readonly #queue: WorkQueue;
  readonly #held = new Map<string, Held>();
  readonly #statuses = new Map<string, WorkloadStatus>();
  readonly #deleted = new Set<string>();
  readonly #written = new Map<string, Written>();
  readonly #ips: PodIpAllocator;
  readonly #counters = { creates: 0, updates: 0, deletes: 0, statusWrites: 0, podDeletes: 0 };

  constructor(options: PodControllerOptions) {
    this.#o = options;
    this.#log = options.logger.child({ component: "pod" });
    this.#ips = new PodIpAllocator(options.config.ipRange);
    this.#informer = new Informer<Pod>({
      client: options.kube,
      logger: this.#log,
      path: "/api/v1/pods",
      fieldSelector: "spec.nodeName!=",
    });
    this.#informer.addIndex("node", (pod) => pod.spec?.nodeName);
    this.#queue = new WorkQueue({
      name: "pod",
      concurrency: options.config.concurrency ?? 16,
      reconcile: (key) => this.#reconcile(key),
      logger: this.#log,
      maxRetries: options.config.maxRetries,
      baseDelayMs: options.config.baseRetryDelayMs,
      maxDelayMs: options.config.maxRetryDelayMs,
      isTerminal,
    });
  }

  /**
   * Adopts what the provider already holds, starts the pod watch and the queue. Resolves once the
   * first list is cached and every pod on a managed node has been queued.
   */
  async start(signal: AbortSignal): Promise<void> {
    const { provider } = this.#o;
    if (hasStatusNotifier(provider)) {
      provider.notifyStatus((status) => {
        this.#statuses.set(status.pod.uid, status);
        this.#queue.addAfter(podKey(status.pod), this.#o.config.statusDebounceMs);
      });
    }
    if (hasDeletionNotifier(provider)) {
      provider.notifyDeleted((ref) => {
        // A confirmation for work already forgotten (removed after its grace period) needs nothing.
        if (this.#held.get(podKey(ref))?.ref.uid !== ref.uid) return;
        this.#deleted.add(ref.uid);
        this.#statuses.delete(ref.uid);
        this.#queue.add(podKey(ref));
      });
    }
    for (const held of await provider.listPods()) {
      this.#held.set(podKey(held.pod), { ref: held.pod, hash: held.hash, deleteRequested: false });
    }
    const enqueue = (pod: Pod) => {
      if (this.#manages(pod)) this.#queue.add(objectKey(pod));
    };
    this.#informer.onAdd(enqueue);
    this.#informer.onUpdate(enqueue);
    this.#informer.onDelete((pod) => {
      const key = objectKey(pod);
      if (this.#manages(pod) || this.#held.has(key)) this.#queue.add(key);
    });
    this.#o.nodes.onDeviceChange((nodeName) => {
      for (const pod of this.#informer.byIndex("node", nodeName)) this.#queue.add(objectKey(pod));
    });
    void this.#informer.start(signal);
    await this.#informer.ready;
    for (const pod of this.#informer.list()) {
      if (pod.status?.podIP && pod.metadata?.uid) this.#ips.reserve(pod.metadata.uid, pod.status.podIP);
    }
    this.#queue.start(signal);
    // Provider work whose pod object is gone (deleted while devicelet was down) gets cleaned up.
    for (const key of this.#held.keys()) this.#queue.add(key);
    for (const pod of this.#informer.list()) enqueue(pod);
    this.#log.info({ adopted: this.#held.size, pods: this.#informer.size }, "pod controller started");
  }

  /** Counters of provider calls and API writes, for tests and benchmarks. */
  stats() {
    return { ...this.#counters, held: this.#held.size, queue: this.#queue.stats() };
  }

  #manages(pod: Pod): boolean {
    const node = pod.spec?.nodeName;
    return node !== undefined && this.#o.nodes.byNodeName(node) !== undefined;
  }

  async #reconcile(key: string): Promise<ReconcileResult> {
    const pod = this.#informer.get(key);
    let held = this.#held.get(key);
    if (held && (!pod || pod.metadata?.uid !== held.ref.uid)) {
      // The pod object this work belonged to is gone (or was replaced by a new pod of the same name).
      await this.#forget(key, held);
      held = undefined;
    }
    if (!pod || !this.#manages(pod)) return undefined;
    const meta = pod.metadata ?? {};
    const ref: PodRef = { namespace: meta.namespace ?? "", name: meta.name ?? "", uid: meta.uid ?? "" };
    if (meta.deletionTimestamp) return this.#reconcileDeletion(pod, ref, held);
    if (pod.status?.phase === "Succeeded" || pod.status?.phase === "Failed") return undefined;

    const nodeName = pod.spec?.nodeName ?? "";
    const node = this.#o.nodes.byNodeName(nodeName);
    if (!node) return undefined;
    const now = new Date();
    const refused = checkSupported(pod, this.#o.provider.supports, this.#o.provider.name);
    if (refused) {
      this.#log.info({ pod: key, field: refused.field }, "refusing pod: unsupported field");
      await this.#writeStatus(
        pod,
        ref,
        buildFailedStatus(pod, { reason: "Unsupported", message: refused.message, now }),
      );
      return undefined;
    }

    const podIP = this.#statuses.get(ref.uid)?.podIP ?? this.#ips.allocate(ref.uid);
    const hostIP =
      node.device.addresses.find((a) => a.type === "InternalIP")?.address ?? this.#o.config.kubeletAddress;
    const lookups = await this.#fetchReferences(pod);
    const result = translatePod(pod, { deviceId: node.deviceId, nodeName, lookups, podIP, hostIP });
    for (const event of result.events) {
      this.#o.events.record({
        object: { apiVersion: "v1", kind: "Pod", namespace: ref.namespace, name: ref.name, uid: ref.uid },
        type: event.type,
        reason: event.reason,
        message: event.message,
      });
    }
    if (result.kind === "configError") {
      await this.#writeStatus(
        pod,
        ref,
        buildPodStatus({
          pod: pod,
          pending: { reason: "CreateContainerConfigError", message: result.message },
          podIP,
          hostIP,
          now,
        }),
      );
      return { requeueAfterMs: configErrorRetryMs };
    }

    const { workload } = result;
    if (!held) {
      await this.#o.provider.createPod(workload);
      this.#counters.creates++;
      held = { ref, hash: workload.hash, deleteRequested: false };
      this.#held.set(key, held);
      if (hasStatusNotifier(this.#o.provider)) {
        // A device that starts the app at once reports Running within the debounce window: wait
        // that long before writing Pending, so a fast start costs one status write, not two.
        return { requeueAfterMs: this.#o.config.statusDebounceMs };
      }
    } else if (held.hash !== workload.hash) {
      await this.#o.provider.updatePod(workload);
      this.#counters.updates++;
      held.hash = workload.hash;
    }

    // Pushed status when the provider has it; otherwise ask (after a restart this is what keeps an
    // adopted, running pod from being reported Pending while the first push is on its way).
    let status = this.#statuses.get(ref.uid);
    if (!status) {
      status = await this.#o.provider.getPodStatus(ref);
      if (status && hasStatusNotifier(this.#o.provider) && !this.#statuses.has(ref.uid))
        this.#statuses.set(ref.uid, status);
    }
    await this.#writeStatus(
      pod,
      ref,
      buildPodStatus({
        pod: pod,
        workload: status,
        podIP,
        hostIP,
        deviceConnected: node.device.connected,
        now,
      }),
    );
    // Without push status, poll.
    return hasStatusNotifier(this.#o.provider) ? undefined : { requeueAfterMs: 5_000 };
  }

  async #reconcileDeletion(pod: Pod, ref: PodRef, held: Held | undefined): Promise<ReconcileResult> {
    const key = podKey(ref);
    const grace = pod.metadata?.deletionGracePeriodSeconds ?? 30;
    let confirmed = held === undefined || this.#deleted.has(ref.uid);
    if (held && !held.deleteRequested) {
      await this.#o.provider.deletePod(ref, { gracePeriodSeconds: grace });
      this.#counters.deletes++;
      held.deleteRequested = true;
    }
    if (held && !confirmed && !hasDeletionNotifier(this.#o.provider)) {
      confirmed = (await this.#o.provider.getPodStatus(ref)) === undefined;
    }
    const deadline = pod.metadata?.deletionTimestamp ? parseKubeTime(pod.metadata.deletionTimestamp) : 0;
    const remaining = deadline - Date.now();
    if (!confirmed && remaining > 0) return { requeueAfterMs: Math.min(remaining + 50, 2_000) };
    // The provider confirmed, or the grace period is over (the provider keeps a tombstone until
    // the device acknowledges, so nothing is left running): remove the pod object for good.
    await this.#o.kube.deletePod({
      namespace: ref.namespace,
      name: ref.name,
      uid: ref.uid,
      gracePeriodSeconds: 0,
    });
    this.#counters.podDeletes++;
    this.#held.delete(key);
    this.#release(ref.uid);
    return undefined;
  }

  /** Removes provider work whose pod object is gone. */
  async #forget(key: string, held: Held): Promise<void> {
    if (!held.deleteRequested) {
      await this.#o.provider.deletePod(held.ref, { gracePeriodSeconds: 0 });
      this.#counters.deletes++;
    }
    this.#held.delete(key);
    this.#release(held.ref.uid);
    this.#log.info({ pod: key, uid: held.ref.uid }, "removed provider work of a pod that no longer exists");
  }

  #release(uid: string): void {
    this.#statuses.delete(uid);
    this.#deleted.delete(uid);
    this.#written.delete(uid);
    this.#ips.release(uid);
  }

  async #fetchReferences(pod: Pod) {
    const namespace = pod.metadata?.namespace ?? "";
    const refs = referencedObjects(pod);
    const configMaps = new Map<string, ConfigMap | undefined>();
    const secrets = new Map<string, Secret | undefined>();
    await Promise.all([
      ...refs.configMaps.map(async (name) =>
        configMaps.set(name, await this.#o.kube.getConfigMap(namespace, name)),
      ),
      ...refs.secrets.map(async (name) => secrets.set(name, await this.#o.kube.getSecret(namespace, name))),
    ]);
    return {
      configMap: (_ns: string, name: string) => configMaps.get(name) as never,
      secret: (_ns: string, name: string) => secrets.get(name) as never,
    };
  }

  async #writeStatus(pod: Pod, ref: PodRef, built: ReturnType<typeof buildPodStatus>): Promise<void> {
    const next = toWire(built);
    const written = this.#written.get(ref.uid);
    // Until the watch shows our last write, compare with what we wrote, not the stale cache.
    const current =
      written && !includesWrite(pod.metadata?.resourceVersion ?? "", written.resourceVersion)
        ? written.status
        : pod.status;
    if (!statusChanged(current, next)) return;
    this.#log.debug(
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
    this.#counters.statusWrites++;
    this.#written.set(ref.uid, { resourceVersion: updated.metadata?.resourceVersion ?? "", status: next });
  }
}
