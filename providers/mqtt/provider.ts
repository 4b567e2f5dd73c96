/**
 * MqttProvider: devices reached over any MQTT 3.1.1 or 5 broker, speaking the devicelet protocol
 * (docs/protocol.md). It wires the parts of this folder together and implements the provider
 * contract: lifecycle (one retained desired document per device), push status, deletion notices,
 * the device inventory (nodes from births), transport health, and one-shot commands. The pod side
 * is Workloads (workloads.ts), devices as a whole DeviceLifecycle (device-lifecycle.ts), the
 * broker connection and start-up read-back BrokerSession (session.ts). See index.ts for usage.
 */
import type { Logger } from "pino";
import { topics } from "../../src/protocol/topics.ts";
import { DEFAULT_MAX_MESSAGE_BYTES } from "../../src/protocol/types.ts";
import { notFound } from "../../src/provider/errors.ts";
import type {
  DeletePodOptions,
  DeletionNotifier,
  DeviceInfo,
  DeviceInventory,
  DeviceNotice,
  DeviceNotifier,
  HealthReporter,
  PodFeature,
  PodLifecycleProvider,
  PodRef,
  ProviderContext,
  ProviderPod,
  Startable,
  StatusNotifier,
  Workload,
  WorkloadStatus,
} from "../../src/provider/types.ts";
import { commandEvent, type CommandRequest, type CommandResult } from "./command-types.ts";
import { CommandQueue } from "./commands.ts";
import { MqttConnection, type BrokerConnection } from "./connection.ts";
import { DesiredStore } from "./desired.ts";
import { DeviceLifecycle } from "./device-lifecycle.ts";
import { DeviceRegistry } from "./devices.ts";
import { GenerationAllocator } from "./generations.ts";
import { Inbound } from "./inbound.ts";
import { logMetricsEvery, MqttMetrics, type MqttMetricsSnapshot } from "./metrics.ts";
import { Observations } from "./observations.ts";
import { Orphans } from "./orphans.ts";
import { StatusCoalescer } from "./pod-status.ts";
import { RestartRequests } from "./restart.ts";
import { allowListMatcher, MQTT_DEFAULT_SUPPORTS, type MqttConfig } from "./schema.ts";
import { documentLimit, inboundPacketLimit } from "./fit.ts";
import { SecretGate } from "./secret-gate.ts";
import { BrokerSession, bridgePayload } from "./session.ts";
import { Workloads } from "./workloads.ts";

const STATUS_COALESCE_MS = 10;

export class MqttProvider
  implements
    PodLifecycleProvider,
    StatusNotifier,
    DeletionNotifier,
    DeviceInventory,
    DeviceNotifier,
    HealthReporter,
    Startable
{
  readonly name = "mqtt";
  readonly supports: readonly PodFeature[];
  readonly config: MqttConfig;
  readonly #ctx: ProviderContext;
  readonly #log: Logger;
  readonly #metrics = new MqttMetrics();
  readonly #instance = `${process.pid}-${Date.now().toString(36)}`;
  readonly #connection: MqttConnection;
  readonly #registry: DeviceRegistry;
  readonly #allocator: GenerationAllocator;
  readonly #desired: DesiredStore;
  readonly #observations = new Observations();
  readonly #commands: CommandQueue;
  readonly #statuses: StatusCoalescer;
  readonly #inbound: Inbound;
  readonly #orphans: Orphans;
  readonly #secrets: SecretGate;
  readonly #restarts: RestartRequests;
  readonly #lifecycle: DeviceLifecycle;
  readonly #session: BrokerSession;
  readonly #workloads: Workloads;
  readonly #onStatus: ((s: WorkloadStatus) => void)[] = [];
  readonly #onDeleted: ((p: PodRef) => void)[] = [];
  readonly #onDevice: ((d: DeviceInfo) => void)[] = [];
  #metricsTimer: NodeJS.Timeout | undefined;
  #stopping: Promise<void> | undefined;

  /** Use {@link createMqttProvider}, which validates the config and fills its defaults. */
  constructor(config: MqttConfig, context: ProviderContext) {
    this.config = config;
    this.supports = config.supports ?? MQTT_DEFAULT_SUPPORTS;
    this.#ctx = context;
    this.#log = context.logger.child({ provider: "mqtt" });
    this.#secrets = new SecretGate({
      broker: config.broker,
      devices: config.devices,
      allowSecretsWithoutTls: config.allowSecretsWithoutTls,
    });
    this.#connection = new MqttConnection({
      config: config.broker,
      graceSeconds: config.health.disconnectedGraceSeconds,
      bridge: { topic: topics.bridge(), payload: bridgePayload(this.#instance) },
      logger: this.#log,
      // Devices' messages, and devicelet's own retained documents read back at start.
      maximumPacketSize: inboundPacketLimit(
        Math.max(config.devices.maxMessageBytes, config.desired.maxDocumentBytes),
      ),
    });
    const connection: BrokerConnection = this.#connection;
    this.#registry = new DeviceRegistry({
      onChange: (info) => {
        for (const l of this.#onDevice) l(info);
      },
    });
    this.#allocator = new GenerationAllocator({
      store: context.store,
      blockSize: config.desired.generationBlock,
      onWrite: () => this.#metrics.inc("storeWrites"),
    });
    this.#statuses = new StatusCoalescer({
      delayMs: STATUS_COALESCE_MS,
      statusesOf: (deviceId) => this.#workloads.statusesOf(deviceId),
      emit: (status) => {
        if (this.#onStatus.length === 0) return false;
        this.#metrics.inc("statusUpdates");
        for (const l of this.#onStatus) l(status);
        return true;
      },
    });
    this.#desired = new DesiredStore({
      allocator: this.#allocator,
      publish: (topic, payload) => connection.publish(topic, payload, { qos: 1, retain: true }),
      maxBytes: (id) =>
        documentLimit({
          announced: this.#registry.get(id)?.birth?.capabilities.maxMessageBytes,
          ceiling: config.desired.maxDocumentBytes,
          fallback: DEFAULT_MAX_MESSAGE_BYTES,
        }),
      debounceMs: config.desired.debounceMs,
      publishTimeoutMs: config.desired.publishTimeoutMs,
      onChange: (id) => this.#statuses.mark(id),
      metrics: this.#metrics,
      logger: this.#log,
    });
    this.#commands = new CommandQueue({
      limit: config.commands.queueLimit,
      store: context.store,
      publish: (topic, payload, expiry) =>
        connection.publish(topic, payload, { qos: 1, retain: false, messageExpirySeconds: expiry }),
      isOnline: (id) => this.#registry.effectivePresence(id) === "online",
      understandsTtl: (id) => this.#registry.get(id)?.birth?.capabilities.commandTtl === true,
      onExpired: (command, why) => context.recordEvent(commandEvent(command, "CommandExpired", why)),
      onFailed: (command, ack) =>
        context.recordEvent(
          commandEvent(command, "CommandFailed", ack.message ?? `exit code ${ack.exitCode ?? "?"}`),
        ),
      metrics: this.#metrics,
      logger: this.#log,
    });
    this.#restarts = new RestartRequests({
      commands: this.#commands,
      logger: this.#log,
      recordEvent: (event) => this.#ctx.recordEvent(event),
      defaultTtlSeconds: config.commands.ttlSeconds,
    });
    this.#inbound = new Inbound({
      allowed: allowListMatcher(config.devices.allow),
      maxMessageBytes: config.devices.maxMessageBytes,
      registry: this.#registry,
      desired: this.#desired,
      observations: this.#observations,
      commands: this.#commands,
      statuses: this.#statuses,
      allocator: this.#allocator,
      metrics: this.#metrics,
      logger: this.#log,
      recordEvent: (event) => this.#ctx.recordEvent(event),
      deleted: (ref) => this.#deleted(ref),
    });
    this.#orphans = new Orphans({
      graceMs: config.desired.orphanGraceSeconds * 1000,
      desired: this.#desired,
      claimed: (uid) => this.#workloads.claimed(uid),
      markStatus: (id) => this.#statuses.mark(id),
      restoreBirth: (id) => this.#lifecycle.restoreBirths([id]),
      recordEvent: (event) => this.#ctx.recordEvent(event),
      deleted: (ref) => this.#deleted(ref),
      logger: this.#log,
    });
    this.#session = new BrokerSession({
      connection: this.#connection,
      readbackTimeoutMs: config.desired.readbackTimeoutMs,
      onLate: (doc) => this.#orphans.adoptLate(doc),
      inbound: this.#inbound,
      desired: this.#desired,
      metrics: this.#metrics,
      logger: this.#log,
    });
    this.#lifecycle = new DeviceLifecycle({
      registry: this.#registry,
      desired: this.#desired,
      commands: this.#commands,
      allocator: this.#allocator,
      connection,
      allowed: allowListMatcher(config.devices.allow),
      statuses: this.#statuses,
      silentAfterMs: config.devices.silentAfterSeconds * 1000,
      wakeToleranceMs: config.devices.wakeToleranceSeconds * 1000,
      connectedSince: () => this.#session.connectedSince(),
      recordEvent: (event) => this.#ctx.recordEvent(event),
      forgetPod: (ref) => this.#workloads.forget(ref),
      deleted: (ref) => this.#deleted(ref),
      logger: this.#log,
    });
    this.#workloads = new Workloads({
      desired: this.#desired,
      registry: this.#registry,
      observations: this.#observations,
      statuses: this.#statuses,
      orphans: this.#orphans,
      restarts: this.#restarts,
      secrets: this.#secrets,
      checkPodAddress: context.checkPodAddress,
      recordEvent: (event) => this.#ctx.recordEvent(event),
      deleted: (ref) => this.#deleted(ref),
      logger: this.#log,
    });
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

  /** Publishes the bridge's `offline`, closes the connection, logs the final metrics. Idempotent. */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      clearInterval(this.#metricsTimer);
      this.#session.stop();
      this.#lifecycle.stop();
      this.#orphans.stop();
      this.#statuses.stop();
      this.#commands.stop();
      this.#desired.stop();
      await this.#connection.stop();
      this.#log.info({ metrics: this.metrics() }, "mqtt provider stopped");
    })();
    return this.#stopping;
  }

  createPod(workload: Workload): Promise<void> {
    this.#workloads.apply(workload);
    return Promise.resolve();
  }

  updatePod(workload: Workload): Promise<void> {
    this.#workloads.apply(workload);
    return Promise.resolve();
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
    return Promise.resolve(this.#workloads.status(pod));
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

  watchDevices(callback: (device: DeviceInfo) => void): void {
    this.#onDevice.push(callback);
  }

  /**
   * Publishes a notice on `{id}/notice` (QoS 1, not retained; docs/protocol.md § 3.8). Best
   * effort: a failed publish is logged, never thrown.
   */
  notifyDevice(deviceId: string, notice: DeviceNotice): void {
    this.#lifecycle.notify(deviceId, notice);
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

  #deleted(ref: PodRef): void {
    // After the caller's current step: the engine may be in the middle of asking us to delete.
    setImmediate(() => {
      for (const l of this.#onDeleted) l(ref);
    });
  }
}
