/**
 * PodController: runs the pods the scheduler binds to devicelet's nodes, for every node at once.
 *
 * One pod watch for all nodes (`spec.nodeName!=`; with sharding, one per process, whose view of
 * it each shard's controller gets: shared-pods.ts) feeds a keyed {@link WorkQueue}; each reconcile
 * re-reads the pod and what the provider holds and acts on the difference, whatever woke it
 * (STYLE.md: level-triggered). The cache holds only pods bound to devicelet's node names
 * (`NodeController.hasNodeName`) or whose work the provider holds, trimmed to what is read
 * (trim.ts); pods bound elsewhere are dropped on arrival. A name devicelet starts serving gets its
 * pods listed (a pod may be bound to it before its device is known; pick-ups.ts batches them when
 * many names come at once); one it stops serving has its pods dropped, except those whose work
 * the provider still holds (deleted as their objects go). It:
 * - refuses pods using fields the provider does not declare (phase Failed, reason `Unsupported`),
 *   but only before the first create: a field added later to a pod the device already runs (an
 *   ephemeral container from `kubectl debug`) is ignored with one Warning Event per change;
 * - resolves env and files from the {@link ReferenceCache} (ConfigMaps watched, Secrets re-read
 *   on a TTL, `secretRefreshSeconds`); a missing mandatory ConfigMap or Secret
 *   leaves the containers Waiting with `CreateContainerConfigError` (never started on the
 *   provider) until it appears. As with a kubelet, env is resolved once, at the first create, and
 *   kept; mounted ConfigMaps and Secrets follow edits (a new workload → `updatePod`);
 * - creates or updates the workload on the provider only when its hash changed, so a restart that
 *   adopts what the provider already runs re-applies nothing;
 * - writes status through the `status` subresource only when it changed, debounced per pod;
 * - deletes like a kubelet (`deletion.ts`): the pod object is removed only once the provider
 *   confirms the apps stopped;
 * - resyncs every managed pod periodically (cheap when nothing changed), and records one Warning
 *   Event when the API server refuses a request for good (the queue then waits for a change).
 */
import type { Logger } from "pino";
import { sleepOn, systemClock, type Clock } from "../base/clock.ts";
import { ValueTable } from "../base/intern.ts";
import {
  EventRecorder,
  Informer,
  isPermanentKubeError,
  objectKey,
  retryAfterMs,
  type KubeClient,
  type Pod,
  type PodStatus,
} from "../kube/index.ts";
import { isTerminal } from "../provider/errors.ts";
import {
  hasDeletionNotifier,
  hasStatusNotifier,
  podKey,
  type PodLifecycleProvider,
  type PodRef,
} from "../provider/types.ts";
import { WorkQueue, type ReconcileResult } from "../reconcile/queue.ts";
import { checkSupported, referencedObjects, translatePod, type FrozenEnv } from "../workload/index.ts";
import type { NodeController } from "../node/controller.ts";
import { PodDeletion, type Held } from "./deletion.ts";
import { PodIpAllocator } from "./ip.ts";
import { NodePickUps } from "./pick-ups.ts";
import { ReferenceCache, type PodReferences } from "./references.ts";
import { startResync } from "./resync.ts";
import type { PodSource, SharedPods } from "./shared-pods.ts";
import { PodStartTrace, type PodStartStage } from "./start-trace.ts";
import { StatusWriter } from "./status-writer.ts";
import { buildFailedStatus, buildPodStatus } from "./status.ts";
import { trimPod } from "./trim.ts";

export interface PodControllerConfig {
  readonly baseRetryDelayMs: number;
  readonly maxRetryDelayMs: number;
  readonly statusDebounceMs: number;
  /**
   * With a provider that pushes statuses: a pod handed to it is not written Pending (container
   * creating) before this long has passed, unless it was written before, so a device that reports
   * it Running within this costs one status write, not two. The API server made it Pending
   * already. Default 1 s; 0 writes Pending after the debounce.
   */
  readonly firstStatusWaitMs?: number;
  readonly ipRange: string;
  readonly kubeletAddress: string;
  /** Parallel reconciles (different pods); one pod is never reconciled twice at once. */
  readonly concurrency?: number;
  /** Every managed pod is reconciled again about this often (±10 %); 0 turns it off. Default 5 min. */
  readonly resyncIntervalMs?: number;
  /** A referenced Secret is read again at most this long after its last read. Default 60 s. */
  readonly secretRefreshSeconds?: number;
}

export interface PodControllerOptions {
  readonly kube: KubeClient;
  readonly provider: PodLifecycleProvider;
  readonly nodes: Pick<
    NodeController,
    "byNodeName" | "hasNodeName" | "onNodeNames" | "onDeviceChange" | "transport"
  >;
  readonly events: Pick<EventRecorder, "record">;
  readonly config: PodControllerConfig;
  readonly logger: Logger;
  /** Times retries, debounces, polls and resyncs and stamps status; default the system clock. */
  readonly clock?: Clock;
  /**
   * Told when a status write first takes a pod to Running, with the status written (its
   * PodScheduled condition says when the pod was bound) and the controller's time (src/metrics).
   */
  readonly onPodRunning?: (pod: Pod, status: PodStatus, now: Date) => void;
  /** Told, once a pod started here is written Running, how long each stage took (start-trace.ts). */
  readonly onStartStage?: (stage: PodStartStage, seconds: number) => void;
  /**
   * A shard's engine (src/shard/engines.ts): the process's pod informer and ConfigMap/Secret
   * cache, started by the shard runner and shared by every shard's controller. Without it, the
   * controller lists and watches for itself.
   */
  readonly shared?: SharedSources;
}

/** What the shard engines of one process share: one pod watch, one ConfigMap watch. */
export interface SharedSources {
  readonly pods: Pick<SharedPods, "view">;
  readonly references: Pick<ReferenceCache, "subscribe">;
}

const configErrorRetryMs = 5_000;

/** When the pod was bound: its PodScheduled condition's time, else its creation (bound at create). */
function boundAt(pod: Pod): number | undefined {
  const scheduled = pod.status?.conditions?.find((c) => c.type === "PodScheduled" && c.status === "True");
  const at = Date.parse(scheduled?.lastTransitionTime ?? pod.metadata?.creationTimestamp ?? "");
  return Number.isFinite(at) ? at : undefined;
}
const defaultResyncMs = 5 * 60_000;

const sharedEnvs = new ValueTable({ generationSize: 1_024 });

/**
 * Held's record of the env given to each app. Replicas given the same env share one map (only
 * translate.ts reads it); env with values from a Secret is never shared, so the table never keeps
 * a Secret's value after the pods that had it.
 */
const frozenEnvOf = (apps: readonly (FrozenEnv & { name: string })[]): ReadonlyMap<string, FrozenEnv> => {
  const entries = apps.map((a): [string, FrozenEnv] => [a.name, { env: a.env, secretEnv: a.secretEnv }]);
  if (apps.some((a) => a.secretEnv.length > 0)) return new Map(entries);
  return sharedEnvs.shareAs(JSON.stringify(entries), () => new Map(entries));
};

export class PodController {
  readonly #o: PodControllerOptions;
  readonly #log: Logger;
  readonly #informer: PodSource;
  readonly #queue: WorkQueue;
  readonly #refs: PodReferences;
  readonly #held = new Map<string, Held>();
  /** Pods just handed to the provider: until when their first status waits for a report. */
  readonly #firstStatusAt = new Map<string, number>();
  readonly #status: StatusWriter;
  /** Per pod uid: the last refusal recorded as an Event, so each is recorded once. */
  readonly #refusals = new Map<string, string>();
  readonly #ips: PodIpAllocator;
  readonly #deletion: PodDeletion;
  readonly #counters = { creates: 0, updates: 0, deletes: 0, statusWrites: 0, podDeletes: 0 };
  readonly #clock: Clock;
  readonly #trace: PodStartTrace;

  constructor(options: PodControllerOptions) {
    this.#o = options;
    this.#clock = options.clock ?? systemClock;
    const clock = this.#clock;
    this.#trace = new PodStartTrace(options.onStartStage ?? (() => undefined), () => clock.now());
    this.#log = options.logger.child({ component: "pod" });
    this.#ips = new PodIpAllocator(options.config.ipRange);
    this.#status = new StatusWriter({
      kube: options.kube,
      logger: this.#log,
      counters: this.#counters,
      onRunning: (pod, status) => {
        const start = this.#trace.written(pod.metadata?.uid ?? "");
        // Per pod, for following one slow start through the API server's audit log by time.
        if (start && this.#log.isLevelEnabled("debug"))
          this.#log.debug({ pod: objectKey(pod), ...start }, "pod start timeline (ms since the epoch)");
        options.onPodRunning?.(pod, status, new Date(clock.now()));
      },
    });
    const keep = (pod: Pod) => this.#caches(pod);
    const onReferenceChange = (keys: readonly string[]) => {
      for (const key of keys) this.#queue.add(key);
    };
    if (options.shared) {
      this.#informer = options.shared.pods.view(keep);
      this.#refs = options.shared.references.subscribe(onReferenceChange);
    } else {
      const informer = new Informer<Pod>({
        client: options.kube,
        logger: this.#log,
        path: "/api/v1/pods",
        fieldSelector: "spec.nodeName!=",
        trim: trimPod,
        keep,
        now: () => clock.now(),
        sleep: (ms, signal) => sleepOn(clock, ms, signal),
      });
      informer.addIndex("node", (pod) => pod.spec?.nodeName);
      this.#informer = informer;
      this.#refs = new ReferenceCache({
        kube: options.kube,
        logger: this.#log,
        clock,
        ...(options.config.secretRefreshSeconds === undefined
          ? {}
          : { secretTtlMs: options.config.secretRefreshSeconds * 1000 }),
        onChange: onReferenceChange,
      });
    }
    this.#queue = new WorkQueue({
      name: "pod",
      keyField: "pod",
      // A pod's turn holds its status write: with an API server answering in 300 ms (1,000
      // nodes renewing Leases on two cores), 16 turns started 23 pods a second, 64 turns 86.
      concurrency: options.config.concurrency ?? options.provider.concurrentPods ?? 64,
      reconcile: (key) => this.#reconcile(key),
      logger: this.#log,
      retryAfterMs,
      baseDelayMs: options.config.baseRetryDelayMs,
      maxDelayMs: options.config.maxRetryDelayMs,
      isTerminal: (err) => isTerminal(err) || isPermanentKubeError(err),
      onTerminal: (key, err) => this.#recordRefusal(key, err),
      clock,
    });
    this.#deletion = new PodDeletion({
      kube: options.kube,
      provider: options.provider,
      held: this.#held,
      counters: this.#counters,
      logger: this.#log,
      deviceOf: (nodeName) => this.#o.nodes.byNodeName(nodeName),
      writeStatus: (pod, ref, status) => this.#status.write(pod, ref, status),
      release: (key, uid) => this.#release(key, uid),
      clock,
    });
  }

  /**
   * Adopts what the provider already holds, starts the pod watch, the ConfigMap/Secret caches and
   * the queue. Resolves once the first lists are cached and every pod on a managed node is queued.
   * With `shared` sources, opens this controller's view of them instead (closed when `signal`
   * aborts): they must have been started by their owner.
   */
  async start(signal: AbortSignal): Promise<void> {
    const { provider } = this.#o;
    if (hasStatusNotifier(provider)) {
      provider.notifyStatus((status) => {
        const key = podKey(status.pod);
        // Only for a pod this process knows: a late report of a forgotten pod would stay in memory.
        const known =
          this.#held.get(key)?.uid === status.pod.uid ||
          this.#informer.get(key)?.metadata?.uid === status.pod.uid;
        if (!known) return;
        if (status.phase === "Running") this.#trace.reported(status.pod.uid);
        // Not kept: the reconcile asks getPodStatus, which answers from what the provider holds (a
        // status kept here too was about 440 bytes a pod, in a 5,000-pod heap snapshot).
        // Ahead of deletes and re-reads: what the device reports is what kubectl waits for. The
        // report that ends a starting pod's first-status wait goes at once: the debounce folds
        // changes into one write, and before this one nothing of the pod was written to fold
        // (its Pending reports are held back by the wait). Later changes wait for the debounce.
        const starting = status.phase !== "Pending" && this.#firstStatusAt.has(status.pod.uid);
        if (starting) this.#queue.add(key, { first: true });
        else this.#queue.addAfter(key, this.#o.config.statusDebounceMs, { first: true });
      });
    }
    if (hasDeletionNotifier(provider)) {
      provider.notifyDeleted((ref) => {
        if (this.#deletion.confirmed(ref)) this.#queue.add(podKey(ref));
      });
    }
    for (const held of await provider.listPods()) {
      this.#held.set(podKey(held.pod), {
        uid: held.pod.uid,
        hash: held.hash,
        requestedGrace: undefined,
        gracePeriodSeconds: held.terminationGracePeriodSeconds ?? 30,
        env: undefined,
        ignored: "",
      });
    }
    const enqueue = (pod: Pod) => {
      if (!this.#manages(pod)) return;
      const key = objectKey(pod);
      // A pod this process will start: follow its stages (start-trace.ts).
      if (!this.#held.has(key) && pod.status?.phase !== "Running" && !pod.metadata?.deletionTimestamp)
        this.#trace.seen(pod.metadata?.uid ?? "", boundAt(pod));
      this.#queue.add(key);
    };
    this.#informer.onAdd((pod) => {
      // The address a pod already has (an earlier run gave it) is never handed to another.
      if (pod.status?.podIP && pod.metadata?.uid) this.#ips.reserve(pod.metadata.uid, pod.status.podIP);
      enqueue(pod);
    });
    this.#informer.onUpdate(enqueue);
    this.#informer.onDelete((pod) => {
      const key = objectKey(pod);
      const uid = pod.metadata?.uid ?? "";
      const held = this.#held.get(key);
      if (held?.uid === uid) {
        this.#deletion.objectGone(held, pod);
        this.#queue.add(key);
      } else {
        // Nothing on the provider: what this process kept for the pod goes with it.
        this.#release(this.#informer.get(key) ? undefined : key, uid);
      }
    });
    this.#o.nodes.onDeviceChange((nodeName) => {
      for (const pod of this.#informer.byIndex("node", nodeName)) this.#queue.add(objectKey(pod));
    });
    // Pods bound to a name before devicelet served it were dropped: listed once it is served.
    const pickUps = new NodePickUps({ pickUp: (selectors) => this.#informer.pickUp(selectors) });
    this.#o.nodes.onNodeNames((nodeName, change) => {
      if (change === "added") {
        pickUps.add(nodeName);
      } else {
        this.#informer.refilter(this.#informer.byIndex("node", nodeName).map(objectKey));
      }
    });
    void this.#informer.start(signal);
    await Promise.all([this.#informer.ready, this.#refs.start(signal)]);
    this.#queue.start(signal);
    // Provider work whose pod object is gone (deleted while devicelet was down) gets cleaned up.
    for (const key of this.#held.keys()) this.#queue.add(key);
    for (const pod of this.#informer.list()) enqueue(pod);
    startResync(
      {
        intervalMs: this.#o.config.resyncIntervalMs ?? defaultResyncMs,
        keys: () => this.#resyncKeys(),
        enqueue: (key, delayMs) => this.#queue.addAfter(key, delayMs),
        clock: this.#clock,
      },
      signal,
    );
    this.#log.info({ adopted: this.#held.size, pods: this.#informer.size }, "pod controller started");
  }

  /** Counters of provider calls and API writes, for tests and benchmarks. */
  stats() {
    return {
      ...this.#counters,
      held: this.#held.size,
      removing: this.#deletion.removing,
      written: this.#status.size,
      references: this.#refs.stats(),
      queue: this.#queue.stats(),
    };
  }

  /** The pods on this devicelet's nodes, as the API server has them (the watch cache); for metrics. */
  managedPods(): Pod[] {
    return this.#informer.list().filter((pod) => this.#manages(pod));
  }

  /** The pods bound to `nodeName` as the API server has them (the watch cache); for the kubelet API. */
  podsOn(nodeName: string): Pod[] {
    return this.#informer.byIndex("node", nodeName);
  }

  /**
   * A pod as the API server has it (the watch cache, trimmed), if it is bound to one of devicelet's
   * node names or its work is on the provider; for the kubelet API and Events.
   */
  cachedPod(namespace: string, name: string): Pod | undefined {
    return this.#informer.get(`${namespace}/${name}`);
  }

  /**
   * What the pod cache keeps: pods bound to devicelet's node names, and any pod whose work the
   * provider holds (so that work is never taken for orphaned while its pod object exists).
   */
  #caches(pod: Pod): boolean {
    const node = pod.spec?.nodeName;
    if (node !== undefined && this.#o.nodes.hasNodeName(node)) return true;
    const uid = pod.metadata?.uid;
    return uid !== undefined && this.#held.get(objectKey(pod))?.uid === uid;
  }

  #manages(pod: Pod): boolean {
    const node = pod.spec?.nodeName;
    return node !== undefined && this.#o.nodes.byNodeName(node) !== undefined;
  }

  *#resyncKeys(): Iterable<string> {
    for (const pod of this.#informer.list()) if (this.#manages(pod)) yield objectKey(pod);
    for (const key of this.#held.keys()) if (!this.#informer.get(key)) yield key;
  }

  async #reconcile(key: string): Promise<ReconcileResult> {
    const cached = this.#informer.get(key);
    // With the status this process last wrote, until the watch shows that write (status-writer.ts).
    const pod = cached && this.#status.latest(cached);
    let held = this.#held.get(key);
    if (held && (!pod || pod.metadata?.uid !== held.uid)) {
      // The pod object this work belonged to is gone (or was replaced by a new pod of the same name).
      await this.#deletion.forget(key, held);
      held = undefined;
    }
    if (!pod || !this.#manages(pod)) return undefined;
    const meta = pod.metadata ?? {};
    const ref: PodRef = { namespace: meta.namespace ?? "", name: meta.name ?? "", uid: meta.uid ?? "" };
    if (meta.deletionTimestamp) return this.#deletion.reconcile(pod, ref, held);
    if (pod.status?.phase === "Succeeded" || pod.status?.phase === "Failed") return undefined;

    const nodeName = pod.spec?.nodeName ?? "";
    const node = this.#o.nodes.byNodeName(nodeName);
    if (!node) return undefined;
    const now = new Date(this.#clock.now());
    const refused = checkSupported(pod, this.#o.provider.supports, this.#o.provider.name);
    if (refused && !held) {
      this.#log.info({ pod: key, field: refused.field }, "refusing pod: unsupported field");
      await this.#status.write(
        pod,
        ref,
        buildFailedStatus(pod, { reason: "Unsupported", message: refused.message, now }),
      );
      return undefined;
    }
    if (held && held.ignored !== (refused?.message ?? "")) {
      // The device already runs this pod: a field added since (an ephemeral container) is ignored.
      if (refused) {
        this.#log.info(
          { pod: key, field: refused.field },
          "ignoring an unsupported field added to a running pod",
        );
        this.#warn(
          ref,
          "UnsupportedFieldIgnored",
          `ignored; the device keeps running the pod: ${refused.message}`,
        );
      }
      held.ignored = refused?.message ?? "";
    }

    // What the provider holds for the pod now: from memory, never waiting for a device (its contract).
    let status = await this.#o.provider.getPodStatus(ref);
    const podIP = status?.podIP ?? this.#ips.allocate(ref.uid);
    const hostIP =
      node.device.addresses.find((a) => a.type === "InternalIP")?.address ?? this.#o.config.kubeletAddress;
    // Once env is frozen, only what the volumes refer to matters.
    const names = referencedObjects(pod, { env: held?.env === undefined });
    const lookups = await this.#refs.lookups(key, ref.namespace, names);
    const result = translatePod(pod, {
      deviceId: node.deviceId,
      nodeName,
      lookups,
      podIP,
      hostIP,
      frozenEnv: held?.env,
    });
    for (const event of result.events) this.#warn(ref, event.reason, event.message, event.type);
    if (result.kind === "configError" && !held) {
      await this.#status.write(
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

    if (result.kind === "configError") {
      // As a kubelet whose volume can no longer be refreshed: the running apps keep what they have.
      this.#log.info({ pod: key, reason: result.message }, "keeping the running workload: config error");
    } else if (!held) {
      const { workload } = result;
      this.#trace.creating(ref.uid);
      await this.#o.provider.createPod(workload);
      this.#trace.created(ref.uid);
      this.#counters.creates++;
      held = {
        uid: ref.uid,
        hash: workload.hash,
        requestedGrace: undefined,
        gracePeriodSeconds: workload.terminationGracePeriodSeconds,
        env: frozenEnvOf(workload.apps),
        ignored: "",
      };
      this.#held.set(key, held);
      if (hasStatusNotifier(this.#o.provider)) {
        // A device that starts the app soon reports Running: wait for it before writing Pending,
        // so a fast start costs one status write, not two.
        const waitMs = Math.max(this.#o.config.statusDebounceMs, this.#o.config.firstStatusWaitMs ?? 1_000);
        this.#firstStatusAt.set(ref.uid, now.getTime() + waitMs);
        return { requeueAfterMs: waitMs };
      }
      status = await this.#o.provider.getPodStatus(ref);
    } else {
      const { workload } = result;
      if (held.hash !== workload.hash) {
        await this.#o.provider.updatePod(workload);
        this.#counters.updates++;
        held.hash = workload.hash;
        status = await this.#o.provider.getPodStatus(ref);
      }
      held.env ??= frozenEnvOf(workload.apps);
      held.gracePeriodSeconds = workload.terminationGracePeriodSeconds;
    }

    // Still waiting for a just-started pod's first report: the API server's Pending stands.
    const firstAt = this.#firstStatusAt.get(ref.uid);
    if (firstAt !== undefined) {
      const left = firstAt - this.#clock.now();
      if (left > 0 && (status === undefined || status.phase === "Pending")) return { requeueAfterMs: left };
      this.#firstStatusAt.delete(ref.uid);
    }
    await this.#status.write(
      pod,
      ref,
      buildPodStatus({
        pod: pod,
        workload: status,
        podIP,
        hostIP,
        deviceConnected: node.device.connected,
        transport: this.#o.nodes.transport(),
        now,
      }),
    );
    // Without push status, poll.
    return hasStatusNotifier(this.#o.provider) ? undefined : { requeueAfterMs: 5_000 };
  }

  /** Releases what this process keeps for a pod uid (and for its key, when given). */
  #release(key: string | undefined, uid: string): void {
    this.#trace.forget(uid);
    this.#firstStatusAt.delete(uid);
    this.#status.release(uid);
    this.#refusals.delete(uid);
    this.#deletion.release(uid);
    this.#ips.release(uid);
    if (key !== undefined) this.#refs.untrack(key);
  }

  #warn(ref: PodRef, reason: string, message: string, type: "Normal" | "Warning" = "Warning"): void {
    this.#o.events.record({
      object: { apiVersion: "v1", kind: "Pod", namespace: ref.namespace, name: ref.name, uid: ref.uid },
      type,
      reason,
      message,
    });
  }

  /** One Warning Event per refusal (the queue does not retry it; the pod's next change will). */
  #recordRefusal(key: string, err: unknown): void {
    const pod = this.#informer.get(key);
    const uid = pod?.metadata?.uid;
    if (!pod || !uid) return;
    const message = err instanceof Error ? err.message : String(err);
    if (this.#refusals.get(uid) === message) return;
    this.#refusals.set(uid, message);
    const ref = { namespace: pod.metadata?.namespace ?? "", name: pod.metadata?.name ?? "", uid };
    this.#warn(ref, "RequestRefused", `not retried until the pod changes: ${message}`);
  }
}
