/**
 * MqttProvider: devices reached over any MQTT 3.1.1 or 5 broker, speaking the devicelet protocol
 * (docs/protocol.md). It wires the parts of this folder together and implements the provider
 * contract: lifecycle (one retained desired document per device), push status, deletion notices,
 * the device inventory (nodes from births), transport health, one-shot commands, and logs, exec
 * and stats over the device protocol's sessions and stats topics (device-io.ts). The parts
 * are built by wiring.ts; the pod side is Workloads (workloads.ts) and PodStatusView
 * (status-view.ts), devices as a whole DeviceLifecycle (device-lifecycle.ts), the broker
 * connection and start-up read-back BrokerSession (session.ts). See index.ts for usage.
 */
import type { Logger } from "pino";
import { notFound } from "../../src/provider/errors.ts";
import type {
  DeletePodOptions,
  DeletionNotifier,
  DeviceInfo,
  DeviceWatcher,
  DeviceInventory,
  DeviceNotice,
  DeviceNotifier,
  DeviceStats,
  DeviceSync,
  DeviceSyncReporter,
  ExecCapability,
  ExecIO,
  HealthReporter,
  LogOptions,
  LogsCapability,
  LogStream,
  PodFeature,
  PodLifecycleProvider,
  PodRef,
  ProviderContext,
  ProviderPod,
  Lifecycle,
  StatsCapability,
  StatusNotifier,
  Workload,
  WorkloadStatus,
} from "../../src/provider/types.ts";
import type { BlobStore } from "./blobs.ts";
import type { CommandRequest, CommandResult } from "./command-types.ts";
import type { CommandQueue } from "./commands.ts";
import type { TransportConnection } from "./connection.ts";
import type { DesiredStore } from "./desired.ts";
import type { DeviceIo } from "./device-io.ts";
import type { Births } from "./births.ts";
import type { DeviceLifecycle } from "./device-lifecycle.ts";
import type { DeviceRegistry } from "./devices.ts";
import type { IoSessions } from "./io-sessions.ts";
import { logMetricsEvery, MqttMetrics, type MqttMetricsSnapshot } from "./metrics.ts";
import type { Orphans } from "./orphans.ts";
import type { StatusCoalescer } from "./pod-status.ts";
import { MQTT_DEFAULT_SUPPORTS, type MqttConfig } from "./schema.ts";
import type { SecretGate } from "./secret-gate.ts";
import type { Stages } from "./stages.ts";
import type { BrokerSession } from "./session.ts";
import type { PodStatusView } from "./status-view.ts";
import { wireMqtt, type Transport } from "./wiring.ts";
import type { Workloads } from "./workloads.ts";

export class MqttProvider
  implements
    PodLifecycleProvider,
    StatusNotifier,
    DeletionNotifier,
    DeviceInventory,
    DeviceNotifier,
    HealthReporter,
    Lifecycle,
    LogsCapability,
    ExecCapability,
    StatsCapability,
    DeviceSyncReporter
{
  /** "mqtt", or the transport's name (the nodes' `devicelet.dev/transport` label). */
  readonly name: string;
  readonly supports: readonly PodFeature[];
  readonly concurrentPods?: number;
  readonly config: MqttConfig;
  readonly #log: Logger;
  readonly #metrics: MqttMetrics;
  readonly #instance = `${process.pid}-${Date.now().toString(36)}`;
  readonly #connection: TransportConnection;
  /** The store of large file contents (`desired.blobs`), closed once the connection is. */
  readonly #blobs: BlobStore | undefined;
  readonly #registry: DeviceRegistry;
  readonly #desired: DesiredStore;
  readonly #commands: CommandQueue;
  readonly #statuses: StatusCoalescer;
  readonly #orphans: Orphans;
  readonly #secrets: SecretGate;
  readonly #lifecycle: DeviceLifecycle;
  readonly #births: Births;
  readonly #session: BrokerSession;
  readonly #workloads: Workloads;
  readonly #statusView: PodStatusView;
  readonly #sessions: IoSessions;
  readonly #io: DeviceIo;
  readonly #onStatus: ((s: WorkloadStatus) => void)[] = [];
  readonly #onDeleted: ((p: PodRef) => void)[] = [];
  readonly #onDevice: DeviceWatcher[] = [];
  readonly #onSync: ((deviceId: string) => void)[] = [];
  readonly #stages: Stages;
  #metricsTimer: NodeJS.Timeout | undefined;
  #stopping: Promise<void> | undefined;
  #stopped = false;

  /**
   * Use {@link createMqttProvider}, which validates the config and fills its defaults. With
   * `transport`, the same parts run over another transport than `config.broker` (providers/iothub).
   */
  constructor(
    config: MqttConfig,
    context: ProviderContext,
    transport?: Transport & { readonly name: string },
  ) {
    this.config = config;
    this.name = transport?.name ?? "mqtt";
    this.supports = config.supports ?? MQTT_DEFAULT_SUPPORTS;
    if (transport?.concurrentPods !== undefined) this.concurrentPods = transport.concurrentPods;
    this.#log = context.logger.child({ provider: this.name });
    this.#metrics = new MqttMetrics(context.metrics);
    const parts = wireMqtt({
      config,
      context,
      logger: this.#log,
      metrics: this.#metrics,
      instance: this.#instance,
      ...(transport ? { transport } : {}),
      events: {
        status: (status) => {
          if (this.#onStatus.length === 0) return false;
          for (const l of this.#onStatus) l(status);
          return true;
        },
        deleted: (ref) => this.#deleted(ref),
        deviceChanged: (info) => {
          for (const watcher of this.#onDevice) watcher.changed(info);
        },
        syncChanged: (deviceId) => {
          for (const l of this.#onSync) l(deviceId);
        },
      },
    });
    this.#secrets = parts.secrets;
    this.#connection = parts.connection;
    this.#blobs = parts.blobs;
    this.#registry = parts.registry;
    this.#desired = parts.desired;
    this.#statusView = parts.statusView;
    this.#statuses = parts.statuses;
    this.#commands = parts.commands;
    this.#workloads = parts.workloads;
    this.#orphans = parts.orphans;
    this.#session = parts.session;
    this.#lifecycle = parts.lifecycle;
    this.#births = parts.births;
    this.#sessions = parts.sessions;
    this.#io = parts.io;
    this.#stages = parts.stages;
  }

  /**
   * Connects, reads back the retained desired documents and device states, restores the births of
   * devices that are away from the durable store, and only then resolves: `listPods()` and
   * `listDevices()` then tell what an earlier devicelet left behind. Waits for the broker as long
   * as it takes (or until the signal aborts).
   */
  async start(signal: AbortSignal): Promise<void> {
    for (const note of this.#secrets.startupNotes()) this.#log[note.level](note.message);
    signal.addEventListener("abort", () => void this.stop(), { once: true });
    const documents = await this.#session.start(signal);
    await this.#workloads.restoreHashes();
    this.#commands.restoreInBackground(signal);
    await this.#lifecycle.restoreBirths([...new Set([...documents.keys(), ...this.#registry.ids()])]);
    this.#lifecycle.start();
    this.#metricsTimer = logMetricsEvery({
      intervalSeconds: this.config.metricsLogIntervalSeconds,
      snapshot: () => this.metrics(),
      logger: this.#log,
    });
    this.#log.info(
      {
        devices: this.#registry.list().length,
        documents: documents.size,
        pods: [...this.#desired.devices()].reduce((n, d) => n + d.pods.size + d.tombstones.size, 0),
      },
      "mqtt provider started",
    );
  }

  /**
   * Publishes desired documents still waiting for their debounce (when connected), the bridge's
   * `offline`, closes the connection, logs the final metrics. Idempotent.
   */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      clearInterval(this.#metricsTimer);
      this.#sessions.endAll("devicelet is stopping");
      this.#session.stop();
      this.#lifecycle.stop();
      this.#births.stop();
      this.#orphans.stop();
      this.#statuses.stop();
      this.#stages.stop();
      this.#commands.stop();
      await this.#desired.stop();
      await this.#flushHashes();
      await this.#connection.stop();
      this.#blobs?.close();
      this.#stopped = true;
      this.#log.info({ metrics: this.metrics() }, "mqtt provider stopped");
    })();
    return this.#stopping;
  }

  /**
   * The workload hashes not yet stored (workload-hashes.ts), within 10 s: a record not written
   * costs the next process one updatePod per pod (which publishes nothing), never a change.
   */
  async #flushHashes(): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<"timeout">(
      (resolve) => (timer = setTimeout(() => resolve("timeout"), 10_000)),
    );
    const outcome = await Promise.race([this.#workloads.flushHashes(), timedOut]);
    clearTimeout(timer);
    if (outcome === "timeout") this.#log.warn("stopping with workload hashes not stored");
  }

  /**
   * Puts the pod into its device's desired document and resolves once the broker holds a
   * document carrying it (retained) — at once for a pod held back
   * with a reason (see {@link Workloads.apply}).
   * @throws ProviderError Transient when the broker does not take the document in time.
   */
  createPod(workload: Workload): Promise<void> {
    return this.#workloads.apply(workload);
  }

  /** As {@link createPod}. */
  updatePod(workload: Workload): Promise<void> {
    return this.#workloads.apply(workload);
  }

  /**
   * Puts a tombstone in the device's document and resolves once the broker holds it (retained).
   * The pod is reported deleted (notifyDeleted) when the device's report, at or after that
   * generation, no longer lists it — at once if the device never got the pod.
   * @throws ProviderError Transient when the broker does not take the document in time.
   */
  deletePod(pod: PodRef, options: DeletePodOptions): Promise<void> {
    return this.#workloads.delete(pod, options.gracePeriodSeconds);
  }

  getPodStatus(pod: PodRef): Promise<WorkloadStatus | undefined> {
    return Promise.resolve(this.#statusView.status(pod));
  }

  /** Pods in the devices' documents (see {@link Workloads.list}); `nodeName` is the device id. */
  listPods(): Promise<readonly ProviderPod[]> {
    return Promise.resolve(this.#workloads.list());
  }

  notifyStatus(callback: (status: WorkloadStatus) => void): void {
    this.#onStatus.push(callback);
  }

  notifyDeleted(callback: (pod: PodRef) => void): void {
    this.#onDeleted.push(callback);
  }

  listDevices(): Promise<readonly DeviceInfo[]> {
    return Promise.resolve(this.#registry.list());
  }

  watchDevices(watcher: DeviceWatcher): void {
    this.#onDevice.push(watcher);
  }

  /**
   * Publishes a notice on `{id}/notice` (QoS 1, not retained; docs/protocol.md § 3.8). Best
   * effort: a failed publish is logged, never thrown.
   */
  notifyDevice(deviceId: string, notice: DeviceNotice): void {
    this.#lifecycle.notify(deviceId, notice);
  }

  /**
   * The generation of the desired document the broker holds for the device against the newest
   * it applied in that epoch (stages.ts); undefined while nothing was published and it never
   * reported. From memory, never a round trip.
   */
  deviceSync(deviceId: string): DeviceSync | undefined {
    return this.#stages.sync(deviceId);
  }

  notifyDeviceSync(callback: (deviceId: string) => void): void {
    this.#onSync.push(callback);
  }

  health(): { readonly ready: boolean; readonly message: string } {
    return this.#connection.health();
  }

  /** Counters since start; a fresh snapshot on each call. */
  metrics(): MqttMetricsSnapshot {
    return this.#metrics.snapshot();
  }

  /**
   * Decommissions a device that is not online (retire.ts): clears its retained `desired`, `state`
   * and `reported`, drops its durable state and command queue, and forgets it until a live birth
   * of it arrives. Resolves "online" (and does nothing) for a device that is online.
   * @throws when the broker or the durable store does not take the clearing (safe to retry).
   */
  retireDevice(deviceId: string): Promise<"retired" | "online"> {
    return this.#lifecycle.retire(deviceId);
  }

  /**
   * Sends a one-shot command and resolves with how it ended (done, failed, or expired — held while
   * the device is away, expired after `ttlSeconds`).
   * @throws ProviderError NotFound for a device never seen; Transient when its queue is full.
   */
  sendCommand(
    deviceId: string,
    request: CommandRequest,
    options: { ttlSeconds?: number } = {},
  ): Promise<CommandResult> {
    if (!this.#registry.get(deviceId)) return Promise.reject(notFound(`mqtt: no device ${deviceId}`));
    const pod =
      request.podUid === undefined
        ? undefined
        : this.#desired.device(deviceId)?.pods.get(request.podUid)?.ref;
    return this.#commands.send(deviceId, request, {
      ttlSeconds: options.ttlSeconds ?? this.config.commands.ttlSeconds,
      ...(pod ? { pod } : {}),
    });
  }

  /**
   * A container's log from its device over a session (docs/protocol.md § 3.9); while the device is
   * offline, the last text received for it, with a notice. Resolves once the device answered.
   * @throws ProviderError NotFound (pod or container unknown, or the device says so), Unsupported
   * (the device keeps no logs, or no previous instance), Transient (offline with nothing cached,
   * no answer, too many sessions).
   */
  getContainerLogs(pod: PodRef, container: string, options: LogOptions): Promise<LogStream> {
    return this.#io.logs(pod, container, options);
  }

  /**
   * Runs a command in a container over a session and resolves with its exit code.
   * @throws ProviderError NotFound, Unsupported (no exec, or no terminal), Transient (offline).
   */
  execInContainer(
    pod: PodRef,
    container: string,
    command: readonly string[],
    io: ExecIO,
  ): Promise<{ readonly exitCode: number }> {
    return this.#io.exec(pod, container, command, io);
  }

  /**
   * The device's latest stats sample (docs/protocol.md § 3.10), with pods mapped from their uids.
   * @throws ProviderError NotFound for a device never seen.
   */
  getStats(deviceId: string): Promise<DeviceStats> {
    // A throw in the executor becomes the rejection.
    return new Promise((resolve) => resolve(this.#io.stats(deviceId)));
  }

  #deleted(ref: PodRef): void {
    // After the caller's current step: the engine may be in the middle of asking us to delete.
    setImmediate(() => {
      // Noticed while stopping (a report that came in while pending documents went out): after
      // stop resolved nothing is told; the next instance learns it from the device's report.
      if (this.#stopped) return;
      for (const l of this.#onDeleted) l(ref);
    });
  }
}
