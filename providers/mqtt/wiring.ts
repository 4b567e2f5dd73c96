/**
 * The MQTT provider's parts, built and wired in one place. Each part gets the narrow callbacks or
 * `Pick`s it uses, never the provider; what has to reach the engine leaves through
 * {@link MqttEvents}, which the provider fans out to its listeners. Nothing starts here: the
 * provider starts and stops the parts (`start`/`stop`).
 *
 *   const parts = wireMqtt({ config, context, logger, metrics, instance, events });
 *   await parts.session.start(signal);
 *
 * Data flows one way, in the order the parts are built below, except for six loops that are the
 * protocol's own, each a closure read only after construction:
 * - the desired store tells the status coalescer a device changed; the coalescer reads the
 *   statuses back through the status view, which reads the store;
 * - stages, looked at by the coalescer, have it look at a device again when a pod's time to be
 *   Running is up (a stuck device may send nothing more);
 * - once a device's document is retained, the desired store hands workloads the device, whose
 *   engine workload hashes are stored a while later (workload-hashes.ts);
 * - a late read-back document (session) is adopted by orphans, which restores the device's birth
 *   (lifecycle), and the lifecycle's silence watch reads when the session connected;
 * - orphans ask whether the engine claimed a pod (workloads), which tells orphans of its claims;
 * - the lifecycle forgets the pods of a decommissioned device (workloads);
 * - the registry ends the sessions and drops the stats of a device that is no longer connected,
 *   and the connection ends every session when it drops (io-sessions.ts).
 */
import type { Logger } from "pino";
import { canonicalJson, sha256Hex } from "../../src/base/canonical.ts";
import { topics } from "../../src/protocol/topics.ts";
import { DEFAULT_MAX_MESSAGE_BYTES } from "../../src/protocol/types.ts";
import type {
  DeviceInfo,
  PodRef,
  ProviderContext,
  ProviderEvent,
  WorkloadStatus,
} from "../../src/provider/types.ts";
import { containerOf, FileReferences, type BlobStore } from "./blobs.ts";
import { commandEvent } from "./command-types.ts";
import { CommandQueue } from "./commands.ts";
import { MqttConnection, type TransportConnection } from "./connection.ts";
import { DesiredStore, type DocumentSize } from "./desired.ts";
import { DeviceLifecycle } from "./device-lifecycle.ts";
import { DeviceRegistry } from "./devices.ts";
import { documentLimit, inboundPacketLimit } from "./fit.ts";
import { GenerationAllocator } from "./generations.ts";
import { DeviceIo } from "./device-io.ts";
import { Inbound } from "./inbound.ts";
import { IoSessions } from "./io-sessions.ts";
import { LogCache } from "./log-cache.ts";
import type { MqttMetrics } from "./metrics.ts";
import { Observations, reportBehindAck } from "./observations.ts";
import { DesiredLatency, deviceGauges } from "./provider-metrics.ts";
import { Orphans } from "./orphans.ts";
import { StatusCoalescer } from "./pod-status.ts";
import { RestartRequests } from "./restart.ts";
import { allowListMatcher, type MqttConfig } from "./schema.ts";
import { connectionInsecurity, SecretGate } from "./secret-gate.ts";
import { Stages } from "./stages.ts";
import { DeviceStatsStore } from "./stats.ts";
import { BrokerSession, bridgePayload } from "./session.ts";
import { Births } from "./births.ts";
import { DeviceSubscriptions } from "./subscriptions.ts";
import { PodStatusView } from "./status-view.ts";
import { WorkloadHashes } from "./workload-hashes.ts";
import { Workloads } from "./workloads.ts";

const STATUS_COALESCE_MS = 10;

/**
 * A transport in place of the MQTT broker: the connection the parts use, why it cannot carry
 * Secrets (undefined when it can), and how a desired document counts against the device's limit.
 */
export interface Transport {
  readonly connection: TransportConnection;
  readonly insecurity: string | undefined;
  readonly documentSize?: DocumentSize;
  /** The provider's `concurrentPods` (engine default when not given). */
  readonly concurrentPods?: number;
}

/** What the parts tell the engine, through the provider. */
export interface MqttEvents {
  /** A pod's status may have changed; false when nobody listens yet (it is pushed again later). */
  readonly status: (status: WorkloadStatus) => boolean;
  /** A pod is gone from its device's document (notifyDeleted). */
  readonly deleted: (ref: PodRef) => void;
  /** A device appeared or changed (watchDevices). */
  readonly deviceChanged: (info: DeviceInfo) => void;
  /** A device's sync with its desired state may have changed (notifyDeviceSync). */
  readonly syncChanged: (deviceId: string) => void;
}

export interface MqttParts {
  readonly secrets: SecretGate;
  readonly connection: TransportConnection;
  readonly registry: DeviceRegistry;
  readonly desired: DesiredStore;
  readonly statusView: PodStatusView;
  readonly statuses: StatusCoalescer;
  readonly commands: CommandQueue;
  readonly workloads: Workloads;
  readonly orphans: Orphans;
  readonly session: BrokerSession;
  readonly lifecycle: DeviceLifecycle;
  /** Births waiting to be stored again; stop it with the parts. */
  readonly births: Births;
  readonly sessions: IoSessions;
  readonly io: DeviceIo;
  readonly stages: Stages;
  /** The store of large file contents (`desired.blobs`); close it after stopping the parts. */
  readonly blobs: BlobStore | undefined;
}

export function wireMqtt(o: {
  readonly config: MqttConfig;
  readonly context: ProviderContext;
  readonly logger: Logger;
  readonly metrics: MqttMetrics;
  /** This process's identity in the bridge presence (`pid-start`). */
  readonly instance: string;
  readonly events: MqttEvents;
  /** Another transport than the MQTT broker in `config.broker` (providers/iothub); default MQTT. */
  readonly transport?: Transport;
}): MqttParts {
  const { config, context, logger, metrics, events } = o;
  const recordEvent = (event: ProviderEvent) => context.recordEvent(event);
  const allowed = allowListMatcher(config.devices.allow);

  const secrets = new SecretGate({
    insecurity: o.transport ? o.transport.insecurity : connectionInsecurity(config.broker),
    devices: config.devices,
    allowSecretsWithoutTls: config.allowSecretsWithoutTls,
  });
  const connection: TransportConnection =
    o.transport?.connection ??
    new MqttConnection({
      // A shard's provider has a session of its own (`<clientId>-shard-<i>`): it moves with the shard.
      config:
        context.shard === undefined
          ? config.broker
          : { ...config.broker, clientId: `${config.broker.clientId}-shard-${context.shard}` },
      graceSeconds: config.health.disconnectedGraceSeconds,
      bridge: { topic: topics.bridge(), payload: bridgePayload(o.instance) },
      logger,
      // Devices' messages, and devicelet's own retained documents read back at start.
      maximumPacketSize: inboundPacketLimit(
        Math.max(config.devices.maxMessageBytes, config.desired.maxDocumentBytes),
      ),
    });
  const registry = new DeviceRegistry({
    onChange: (info) => {
      if (!info.connected) {
        sessions.deviceAway(info.id, `device ${info.id} went offline`);
        stats.forget(info.id);
      }
      events.deviceChanged(info);
    },
  });
  const allocator = new GenerationAllocator({
    store: context.store,
    blockSize: config.desired.generationBlock,
    onWrite: () => metrics.inc("storeWrites"),
  });
  const births = new Births({ allocator, logger, metrics });
  const latency = new DesiredLatency(context.metrics);
  const observations = new Observations((id, observed) => latency.observed(id, observed));
  const desired = new DesiredStore({
    allocator,
    publish: (topic, payload) => connection.publish(topic, payload, { qos: 1, retain: true }),
    maxBytes: (id) =>
      documentLimit({
        announced: registry.get(id)?.birth?.capabilities.maxMessageBytes,
        ceiling: config.desired.maxDocumentBytes,
        fallback: DEFAULT_MAX_MESSAGE_BYTES,
      }),
    ...(o.transport?.documentSize ? { documentSize: o.transport.documentSize } : {}),
    debounceMs: config.desired.debounceMs,
    publishTimeoutMs: config.desired.publishTimeoutMs,
    waitingForTurn: (id) => connection.waitingForTurn?.(topics.desired(id)) ?? false,
    persist: (d) => workloads.persist(d),
    connected: () => connection.isConnected(),
    onChange: (id) => {
      statuses.mark(id);
      // A document's tombstones get their `since` only once the broker acknowledged it; the
      // device's report of having carried them out may have come first.
      inbound.confirmTombstones(id);
    },
    onPublished: (id, epoch, generation, issuedAtMs, changedAtMs) =>
      latency.published(id, epoch, generation, issuedAtMs, changedAtMs),
    metrics,
    logger,
  });
  const statusView = new PodStatusView({
    desired,
    registry,
    observations,
    checkPodAddress: context.checkPodAddress,
    recordEvent,
    logger,
  });
  // Pod Events per stage and each device's sync, looked at whenever its statuses are, and again
  // when a pod's time to be Running is up.
  const stages = new Stages({
    desired,
    registry,
    observations,
    recordEvent,
    syncChanged: events.syncChanged,
    podEvents: config.podEvents,
    lookAgain: (deviceId) => statuses.mark(deviceId),
    now: () => new Date(),
  });
  const statuses = new StatusCoalescer({
    delayMs: STATUS_COALESCE_MS,
    statusesOf: (deviceId) => statusView.statusesOf(deviceId),
    observe: (deviceId) => stages.observe(deviceId),
    emit: (status) => {
      if (!events.status(status)) return false;
      metrics.inc("statusUpdates");
      return true;
    },
  });
  const commands = new CommandQueue({
    limit: config.commands.queueLimit,
    store: context.store,
    publish: (topic, payload, expiry) =>
      connection.publish(topic, payload, { qos: 1, retain: false, messageExpirySeconds: expiry }),
    isOnline: (id) => registry.effectivePresence(id) === "online",
    understandsTtl: (id) => registry.get(id)?.birth?.capabilities.commandTtl === true,
    onExpired: (command, why) => recordEvent(commandEvent(command, "CommandExpired", why)),
    onFailed: (command, ack) =>
      recordEvent(commandEvent(command, "CommandFailed", ack.message ?? `exit code ${ack.exitCode ?? "?"}`)),
    metrics,
    logger,
    ...(context.owns ? { owns: context.owns } : {}),
  });
  const restarts = new RestartRequests({
    commands,
    logger,
    recordEvent,
    defaultTtlSeconds: config.commands.ttlSeconds,
  });
  const logCache = new LogCache(config.sessions.logCache);
  // A pod gone from its device: nothing serves its logs any more, so what is cached goes with it.
  const deleted = (ref: PodRef) => {
    logCache.forgetPod(ref.uid);
    events.deleted(ref);
  };
  const sessions: IoSessions = new IoSessions({
    limits: config.sessions,
    publish: (topic, payload) => connection.publish(topic, payload, { qos: 1, retain: false }),
    logCache,
    metrics,
    logger: logger.child({ part: "sessions" }),
  });
  connection.onDisconnect(() => sessions.endAll("devicelet lost its connection to the MQTT broker"));
  const stats: DeviceStatsStore = new DeviceStatsStore({
    device: (id) => {
      const entry = registry.get(id);
      if (!entry?.birth) return undefined;
      return {
        online: registry.effectivePresence(id) === "online",
        bootId: entry.bootId,
        intervalSeconds: entry.birth.capabilities.statsIntervalSeconds,
      };
    },
    podRef: (id, uid) => {
      const d = desired.device(id);
      return d?.pods.get(uid)?.ref ?? d?.tombstones.get(uid)?.ref;
    },
  });
  const io = new DeviceIo({
    desired,
    registry,
    sessions,
    stats,
    logCache,
    maxSessions: config.sessions.maxPerDevice,
    connected: () => connection.isConnected(),
  });
  const inbound = new Inbound({
    allowed,
    maxMessageBytes: config.devices.maxMessageBytes,
    registry,
    desired,
    observations,
    commands,
    statuses,
    sessions,
    stats,
    allocator,
    births,
    metrics,
    logger,
    recordEvent,
    deleted,
    stages,
  });
  const orphans: Orphans = new Orphans({
    graceMs: config.desired.orphanGraceSeconds * 1000,
    desired,
    claimed: (uid) => workloads.claimed(uid),
    markStatus: (id) => statuses.mark(id),
    restoreBirth: (id) => lifecycle.restoreBirths([id]),
    recordEvent,
    deleted,
    logger,
  });
  // Large files go by reference once a blob store is configured (blobs.ts).
  const blobs = config.desired.blobs ? containerOf(config.desired.blobs) : undefined;
  const workloads: Workloads = new Workloads({
    desired,
    statuses,
    orphans,
    restarts,
    secrets,
    hashes: new WorkloadHashes({ store: context.store, logger, config: sha256Hex(canonicalJson(config)) }),
    deleted,
    stages,
    ...(blobs && config.desired.blobs
      ? { files: new FileReferences({ store: blobs, minFileBytes: config.desired.blobs.minFileBytes }) }
      : {}),
  });
  // A shard's engine (context.owns) subscribes per owned device; otherwise to every device.
  const subscriptions = new DeviceSubscriptions({
    connection,
    owns: context.owns,
    allowed,
    metrics,
    logger: logger.child({ part: "subscriptions" }),
  });
  const session = new BrokerSession({
    connection,
    subscriptions,
    readbackTimeoutMs: config.desired.readbackTimeoutMs,
    onLate: (doc) => orphans.adoptLate(doc),
    inbound,
    desired,
    metrics,
    logger,
  });
  const lifecycle = new DeviceLifecycle({
    registry,
    births,
    desired,
    commands,
    allocator,
    connection,
    allowed,
    statuses,
    silentAfterMs: config.devices.silentAfterSeconds * 1000,
    wakeToleranceMs: config.devices.wakeToleranceSeconds * 1000,
    connectedSince: () => session.connectedSince(),
    reread: {
      sync: (deviceId) => stages.sync(deviceId),
      reportBehind: (deviceId) =>
        reportBehindAck(observations.get(deviceId), desired.device(deviceId)?.published?.epoch),
      reread: (deviceIds) => subscriptions.reread(deviceIds),
      onReread: (count) => metrics.inc("rereads", count),
      onAwayReread: (count) => metrics.inc("awayRereads", count),
      afterMs: config.devices.rereadAfterSeconds * 1000,
    },
    recordEvent,
    forgetPod: (ref) => workloads.forget(ref),
    deleted,
    forgetDevice: async (deviceId) => {
      observations.forget(deviceId);
      stats.forget(deviceId);
      latency.forget(deviceId);
      stages.observe(deviceId); // nothing published or observed any more: its stages and sync go
      await workloads.forgetDevice(deviceId);
    },
    logger,
  });
  context.metrics?.observe(deviceGauges({ desired, observations, commands, connection }));
  return {
    secrets,
    connection,
    registry,
    desired,
    statusView,
    statuses,
    commands,
    workloads,
    orphans,
    session,
    lifecycle,
    births,
    sessions,
    io,
    stages,
    blobs,
  };
}
