/**
 * MqttProvider: devices reached over any MQTT 3.1.1 or 5 broker, speaking the devicelet protocol
 * (docs/protocol.md). It wires the parts of this folder together and implements the provider
 * contract: lifecycle (one retained desired document per device), push status, deletion notices,
 * the device inventory (nodes from births), transport health, and one-shot commands. See index.ts
 * for usage.
 */
import type { Logger } from "pino";
import { encodeMessage } from "../../src/protocol/codec.ts";
import { topics } from "../../src/protocol/topics.ts";
import { DEFAULT_MAX_MESSAGE_BYTES, type BridgeMessage } from "../../src/protocol/types.ts";
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
import { CommandQueue, commandEvent, type CommandRequest, type CommandResult } from "./commands.ts";
import { MqttConnection, type BrokerConnection } from "./connection.ts";
import { DesiredStore } from "./desired.ts";
import { DeviceRegistry } from "./devices.ts";
import { GenerationAllocator } from "./generations.ts";
import { Inbound } from "./inbound.ts";
import { MqttMetrics, type MqttMetricsSnapshot } from "./metrics.ts";
import { Observations } from "./observations.ts";
import { Orphans } from "./orphans.ts";
import { podStatus, StatusCoalescer } from "./pod-status.ts";
import { withUsablePodIP } from "./status-map.ts";
import { Readback, restoreBirths } from "./readback.ts";
import { RestartRequests } from "./restart.ts";
import { retireDevice } from "./retire.ts";
import { SilenceWatch } from "./silence.ts";
import { allowListMatcher, MQTT_DEFAULT_SUPPORTS, type MqttConfig } from "./schema.ts";
import { documentLimit, inboundPacketLimit } from "./fit.ts";
import { SecretGate } from "./secret-gate.ts";
import { holdBack, toDesiredPod } from "./translate.ts";

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
  readonly #readback: Readback;
  readonly #orphans: Orphans;
  readonly #secrets: SecretGate;
  /** Device messages that arrive during the read-back, handled once it is done. */
  #held: [string, Buffer, boolean][] | undefined = [];
  /** The engine's workload hash per pod uid, as last given (unknown for pods read back). */
  readonly #workloadHashes = new Map<string, string>();
  readonly #restarts: RestartRequests;
  readonly #silence: SilenceWatch;
  /** When the current broker connection began; undefined while disconnected. */
  #connectedSince: number | undefined;
  readonly #onStatus: ((s: WorkloadStatus) => void)[] = [];
  readonly #onDeleted: ((p: PodRef) => void)[] = [];
  readonly #onDevice: ((d: DeviceInfo) => void)[] = [];
  /** Per device, the reported address last refused as a pod IP (one Event per distinct address). */
  readonly #refusedAddress = new Map<string, string>();
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
    const bridge = (state: "online" | "offline") => {
      const message: BridgeMessage = {
        protocol: 1,
        kind: "bridge",
        state,
        instance: this.#instance,
        sentAt: new Date().toISOString(),
      };
      return encodeMessage(message);
    };
    this.#connection = new MqttConnection({
      config: config.broker,
      graceSeconds: config.health.disconnectedGraceSeconds,
      bridge: { topic: topics.bridge(), payload: bridge },
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
      statusesOf: (deviceId) => this.#statusesOf(deviceId),
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
    this.#silence = new SilenceWatch({
      registry: this.#registry,
      silentAfterMs: config.devices.silentAfterSeconds * 1000,
      wakeToleranceMs: config.devices.wakeToleranceSeconds * 1000,
      connectedSince: () => this.#connectedSince,
      onSilent: (id, why) => {
        this.#log.warn({ deviceId: id, why }, "device silent: marking it lost");
        this.#ctx.recordEvent({
          involved: { kind: "Device", deviceId: id },
          type: "Warning",
          reason: "DeviceSilent",
          message: `marked lost: ${why}`,
        });
        for (const d of [id, ...this.#registry.children(id)]) this.#statuses.mark(d);
      },
    });
    this.#readback = new Readback({
      connection,
      logger: this.#log,
      timeoutMs: config.desired.readbackTimeoutMs,
      onLate: (doc) => this.#orphans.adoptLate(doc),
    });
    this.#orphans = new Orphans({
      graceMs: config.desired.orphanGraceSeconds * 1000,
      desired: this.#desired,
      claimed: (uid) => this.#workloadHashes.has(uid),
      markStatus: (id) => this.#statuses.mark(id),
      restoreBirth: (id) => this.#restoreBirths([id]),
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
    this.#connection.onMessage((topic, payload, retained) => {
      if (this.#readback.take(topic, payload)) return;
      if (this.#held) this.#held.push([topic, payload, retained]);
      else this.#inbound.handle(topic, payload, retained);
    });
    let first = true;
    this.#connection.onConnect(({ sessionPresent }) => {
      this.#metrics.inc("connects");
      this.#connectedSince = Date.now();
      if (first) return; // the read-back below subscribes
      if (sessionPresent) return;
      // The broker lost our session — and perhaps its retained messages: subscribe again and
      // publish every device's document again (a new generation each; devices apply it once).
      this.#log.warn(
        "broker did not keep devicelet's session; subscribing and publishing desired state again",
      );
      this.#connection.subscribe(topics.fromDevices()).catch((err: unknown) => {
        this.#log.error({ err }, "subscribing after reconnect failed");
      });
      this.#desired.republishAll();
    });
    this.#connection.onDisconnect(() => {
      this.#metrics.inc("disconnects");
      this.#connectedSince = undefined;
    });
    signal.addEventListener("abort", () => void this.stop(), { once: true });
    await this.#connection.start(signal);
    const documents = await this.#readback.run(topics.fromDevices());
    first = false;
    for (const doc of documents.values()) this.#desired.adopt(doc);
    const held = this.#held ?? [];
    this.#held = undefined;
    for (const [topic, payload, retained] of held) this.#inbound.handle(topic, payload, retained);
    this.#commands.restoreInBackground(signal);
    await this.#restoreBirths([...new Set([...documents.keys(), ...this.#registry.ids()])]);
    this.#silence.start();
    const interval = this.config.metricsLogIntervalSeconds;
    if (interval > 0) {
      let last = "";
      this.#metricsTimer = setInterval(() => {
        const now = JSON.stringify(this.metrics());
        if (now !== last) this.#log.info({ metrics: this.metrics() }, "mqtt provider metrics");
        last = now;
      }, interval * 1000);
      this.#metricsTimer.unref();
    }
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
      this.#readback.stop();
      this.#silence.stop();
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
    this.#apply(workload);
    return Promise.resolve();
  }

  updatePod(workload: Workload): Promise<void> {
    this.#apply(workload);
    return Promise.resolve();
  }

  /**
   * Puts a tombstone in the device's document and resolves once the broker holds it (retained).
   * The pod is reported deleted (notifyDeleted) when the device's report, at or after that
   * generation, no longer lists it — at once if the device never got the pod.
   * @throws ProviderError Transient when the broker does not take the document in time.
   */
  async deletePod(pod: PodRef, options: DeletePodOptions): Promise<void> {
    const deviceId = this.#desired.deviceOf(pod.uid);
    this.#orphans.claim(pod.uid);
    this.#restarts.forget(pod.uid);
    this.#workloadHashes.delete(pod.uid);
    if (deviceId === undefined) {
      this.#deleted(pod);
      return;
    }
    const outcome = await this.#desired.tombstone(deviceId, pod, options.gracePeriodSeconds);
    this.#statuses.forget(pod.uid);
    if (outcome === "dropped") this.#deleted(pod);
  }

  getPodStatus(pod: PodRef): Promise<WorkloadStatus | undefined> {
    const deviceId = this.#desired.deviceOf(pod.uid);
    const entry = deviceId === undefined ? undefined : this.#desired.device(deviceId)?.pods.get(pod.uid);
    return Promise.resolve(deviceId === undefined || !entry ? undefined : this.#status(deviceId, entry));
  }

  /**
   * Pods in the devices' documents; tombstoned ones first (a live pod of the same name wins).
   * `nodeName` is the device id. `hash` is the engine's workload hash when this process was given
   * it; for pods read back from the broker it is the device-facing hash, so the engine calls
   * updatePod once for each, which publishes nothing when the device already has that content.
   */
  listPods(): Promise<readonly ProviderPod[]> {
    this.#orphans.listed();
    const out: ProviderPod[] = [];
    const devices = [...this.#desired.devices()];
    const hash = (uid: string, fallback: string) => this.#workloadHashes.get(uid) ?? fallback;
    for (const d of devices)
      for (const t of d.tombstones.values())
        out.push({
          pod: t.ref,
          nodeName: d.deviceId,
          hash: hash(t.ref.uid, t.hash),
          terminationGracePeriodSeconds: t.tombstone.gracePeriodSeconds,
        });
    for (const d of devices)
      for (const p of d.pods.values())
        out.push({
          pod: p.ref,
          nodeName: d.deviceId,
          hash: hash(p.ref.uid, p.desired.hash),
          // A pod deleted while devicelet was down is stopped with the grace its spec gave it.
          terminationGracePeriodSeconds: p.desired.terminationGracePeriodSeconds,
        });
    return Promise.resolve(out);
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
    const payload = encodeMessage({
      protocol: 1,
      kind: "notice",
      deviceId,
      type: notice.type,
      reason: notice.reason,
      message: notice.message.slice(0, 1024),
      at: new Date().toISOString(),
    });
    this.#connection
      .publish(topics.notice(deviceId), payload, { qos: 1, retain: false })
      .catch((err: unknown) => {
        this.#log.debug({ err, deviceId, reason: notice.reason }, "notice not published");
      });
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
    return retireDevice(
      {
        registry: this.#registry,
        desired: this.#desired,
        commands: this.#commands,
        allocator: this.#allocator,
        connection: this.#connection,
        forgetPod: (ref) => {
          this.#statuses.forget(ref.uid);
          this.#restarts.forget(ref.uid);
          this.#workloadHashes.delete(ref.uid);
        },
        deleted: (ref) => this.#deleted(ref),
        logger: this.#log,
      },
      deviceId,
    );
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

  #apply(workload: Workload): void {
    const { deviceId, pod } = workload;
    this.#orphans.claim(pod.uid);
    if (this.#workloadHashes.get(pod.uid) !== workload.hash) {
      const ref: PodRef = { namespace: pod.namespace, name: pod.name, uid: pod.uid };
      const desired = toDesiredPod(workload);
      // Judged again even when the content is unchanged: a pod adopted from an earlier run's
      // retained document was never checked under this run's config.
      const blocked = holdBack(workload, desired, { secrets: this.#secrets });
      if (this.#desired.upsertPod(deviceId, ref, desired, blocked)) this.#statuses.mark(deviceId);
      this.#workloadHashes.set(pod.uid, workload.hash);
    }
    this.#restarts.observe(workload);
  }

  #restoreBirths(deviceIds: readonly string[]): Promise<void> {
    return restoreBirths({
      deviceIds,
      allowed: allowListMatcher(this.config.devices.allow),
      allocator: this.#allocator,
      registry: this.#registry,
      logger: this.#log,
    });
  }

  #deleted(ref: PodRef): void {
    // After the caller's current step: the engine may be in the middle of asking us to delete.
    setImmediate(() => {
      for (const l of this.#onDeleted) l(ref);
    });
  }

  #status(deviceId: string, entry: Parameters<typeof podStatus>[0]["entry"]): WorkloadStatus {
    const device = this.#registry.get(deviceId);
    const { status, refused } = withUsablePodIP(
      podStatus({
        entry,
        device: this.#desired.device(deviceId),
        presence: this.#registry.effectivePresence(deviceId),
        wakeAt: device?.wakeAt,
        observation: this.#observations.get(deviceId),
        now: new Date(),
      }),
      this.#ctx.checkPodAddress,
    );
    const address = this.#observations.get(deviceId)?.report?.address;
    if (refused !== undefined && address !== undefined && this.#refusedAddress.get(deviceId) !== address) {
      this.#refusedAddress.set(deviceId, address);
      this.#log.warn({ deviceId, reason: refused }, "reported address ignored as pod IP");
      this.#ctx.recordEvent({
        involved: { kind: "Device", deviceId },
        type: "Warning",
        reason: "InvalidAddress",
        message: `reported address ignored: ${refused}; its pods get an address from pods.ipRange`,
      });
    }
    return status;
  }

  #statusesOf(deviceId: string): WorkloadStatus[] {
    const d = this.#desired.device(deviceId);
    return d ? [...d.pods.values()].map((entry) => this.#status(deviceId, entry)) : [];
  }
}
