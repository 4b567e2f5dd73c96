/**
 * The devicelet engine: one process, one provider, many device nodes. Wires the Kubernetes client,
 * the node and pod controllers and the provider together and runs them until the signal aborts,
 * as a controller manager runs its runnables: `runEngine` resolves once everything is ready;
 * `engine.done` settles once everything has stopped.
 *
 *   const engine = await runEngine({ config, createProvider: (ctx) => plugin.create(cfg, ctx), ... }, signal);
 *   controller.abort();   // leases stop being renewed; nodes are left in place
 *   await engine.done;    // provider stopped, connections closed; rejects when the provider failed
 *
 * Stopping never deletes nodes: a node whose lease lapses goes Ready=Unknown, which is the truth
 * about a stopped devicelet, and its pods stay bound for when devicelet returns.
 *
 * With `sharding.enabled` the process runs one engine per shard it owns (src/shard/engines.ts,
 * `options.shard`): the engine serves only that shard's devices and nodes and shares the process's
 * client, health, metrics and kubelet API.
 */
import type { Logger } from "pino";
import type { Clock } from "./base/clock.ts";
import type { DeviceletConfig } from "./config/index.ts";
import { createKubeClient, EventRecorder, type KubeClient } from "./kube/index.ts";
import { addressChecker } from "./node/addresses.ts";
import { NodeController } from "./node/controller.ts";
import { PodController, type SharedSources } from "./pod/controller.ts";
import { withOwnContainerIds } from "./pod/status.ts";
import {
  hasDeviceInventory,
  hasDeviceNotifier,
  hasDeviceRetirement,
  hasDeviceSync,
  hasHealth,
  hasLifecycle,
  type DeviceInfo,
  type DeviceInventory,
  type PodLifecycleProvider,
  type ProviderContext,
  type ProviderEvent,
  type ProviderMetrics,
} from "./provider/types.ts";
import { NodeLabel } from "./node/build.ts";
import { engineView, type EngineView } from "./provider/deferred.ts";
import { EngineReadiness, startHealthServer, type HealthServer } from "./health/index.ts";
import { DeviceletMetrics, startMetricsServer, type MetricsServer } from "./metrics/index.ts";
import {
  createKubeletApi,
  resolveKubeletAddress,
  type KubeletApi,
  type KubeletBackend,
} from "./kubelet/index.ts";
import { runElected, type ElectedTerm } from "./leader/index.ts";
import { ConfigMapStore } from "./state/configmap-store.ts";
import { checkStateNamespace, stateNamespace } from "./state/namespace-check.ts";

export interface EngineOptions {
  readonly config: DeviceletConfig;
  /** Builds the provider with the context the engine gives it (store, event sink, logger). */
  readonly createProvider: (context: ProviderContext) => PodLifecycleProvider;
  readonly logger: Logger;
  readonly version: string;
  /** Use this client instead of building one from the config. */
  readonly kube?: KubeClient;
  /** The time source of both controllers (tests pass a FakeClock); default the system clock. */
  readonly clock?: Clock;
  /**
   * With `leaderElection.enabled`: called with true when this replica starts leading, false when
   * it stops (src/leader/run.ts). Not called without leader election (the one replica leads).
   */
  readonly onLeadingChange?: (leading: boolean) => void;
  /**
   * Set by leader election for the leader's term only (src/leader/run.ts): the `engine` readiness
   * check to drive and the metrics registry, both served by the replica (the engine starts no
   * health or metrics server of its own).
   */
  readonly leadership?: ElectedTerm;
  /**
   * Set by the shard runner (src/shard/engines.ts) for the engine of one shard it owns, together
   * with `leadership` (the process's client, registry and this engine's readiness check).
   */
  readonly shard?: EngineShard;
}

/** What an engine serving one shard shares with the process, and what makes it the shard's. */
export interface EngineShard {
  /** The shard served, 0 .. shards - 1: its nodes carry `devicelet.dev/shard=<index>`. */
  readonly index: number;
  /** Whether a device is this shard's (`shardOf(id, shards) === index`): the provider's `owns`. */
  readonly owns: (deviceId: string) => boolean;
  /** The provider's metrics for this shard (gauges summed over shards by the runner). */
  readonly providerMetrics: ProviderMetrics;
  /** The process's kubelet API, when served: its ports, and where this engine registers its nodes' backend. */
  readonly kubelet?: SharedKubelet;
  /**
   * The process's pod informer and ConfigMap/Secret cache, started by the runner: the engine's pod
   * controller opens a view of them rather than a list and watch of its own. Without, it has its own.
   */
  readonly sources?: SharedSources;
}

/** One kubelet API for every shard engine of a process (src/shard/kubelet-router.ts). */
export interface SharedKubelet {
  readonly ports: KubeletApi["ports"];
  /** Routes requests for the nodes `backend` serves to it until the returned function is called. */
  serve(backend: KubeletBackend & { nodeNames(): readonly string[] }): () => void;
}

export interface Engine {
  readonly kube: KubeClient;
  readonly provider: PodLifecycleProvider;
  readonly nodes: NodeController;
  readonly pods: PodController;
  /** The engine's Prometheus registry and hooks, served on `metrics.port` (src/metrics). */
  readonly metrics: DeviceletMetrics;
  /**
   * Settles once the engine has stopped: the signal aborted (or the provider failed), controllers
   * stopped, the provider's `stop` returned and the client it built closed. Rejects with the
   * provider's fatal error when it reported one (ProviderContext.fail).
   */
  readonly done: Promise<void>;
}

/** How long stopping waits for provider calls already made (a hung one must not block the exit). */
const STOP_DRAIN_MS = 10_000;

/** A provider without an inventory has no devices, so no nodes. */
const emptyInventory: DeviceInventory = {
  listDevices: () => Promise.resolve([] as DeviceInfo[]),
  watchDevices: () => undefined,
};

/**
 * With `leaderElection.enabled`, stands by until this replica holds the leader Lease, then starts
 * as below; `done` then rejects with LeadershipLostError when the lease is lost (src/leader/run.ts).
 */
export async function runEngine(options: EngineOptions, signal: AbortSignal): Promise<Engine> {
  const { config, logger, version } = options;
  if (config.sharding.enabled && !options.shard)
    throw new Error("with sharding.enabled, run the engines with runShardedEngines (src/shard/engines.ts)");
  if (config.leaderElection.enabled && !options.leadership) {
    return runElected(
      {
        config,
        logger,
        ...(options.kube ? { kube: options.kube } : {}),
        ...(options.clock ? { clock: options.clock } : {}),
        ...(options.onLeadingChange ? { onLeadingChange: options.onLeadingChange } : {}),
        createKube: (identity) => engineKubeClient(options, identity),
        lead: (elected, term) => runEngine({ ...options, kube: elected.kube, leadership: elected }, term),
      },
      signal,
    );
  }
  const kube = options.kube ?? engineKubeClient(options);
  // A state namespace that does not exist is a configuration error: refuse to start (ConfigError).
  const namespace = stateNamespace(config);
  try {
    await checkStateNamespace({ kube, namespace, logger, signal });
  } catch (err) {
    if (!options.kube) await kube.close();
    throw err;
  }
  const events = new EventRecorder({
    client: kube,
    logger: logger.child({ component: "events" }),
    qps: config.api.eventQps,
    burst: config.api.eventBurst,
  });
  // The provider is built before the node controller (which reads its inventory) but may record
  // device events at any time; those name the device's node once it has one.
  const nodeRef: { current?: NodeController; pods?: PodController } = {};
  const recordEvent = (event: ProviderEvent) => {
    const { involved } = event;
    // A pod event that names its device goes on the device's node once the pod object is gone
    // (a tombstone confirmed after the pod was force-deleted).
    const podGone =
      involved.kind === "Pod" &&
      involved.deviceId !== undefined &&
      nodeRef.pods !== undefined &&
      nodeRef.pods.cachedPod(involved.pod.namespace, involved.pod.name)?.metadata?.uid !== involved.pod.uid;
    const deviceId = involved.kind === "Device" ? involved.deviceId : podGone ? involved.deviceId : undefined;
    // A device refused for a taken node name gets nothing recorded on that Node, which is not its own.
    if (deviceId !== undefined && nodeRef.current?.isRefused(deviceId)) return;
    const object =
      involved.kind === "Pod" && deviceId === undefined
        ? {
            apiVersion: "v1",
            kind: "Pod",
            namespace: involved.pod.namespace,
            name: involved.pod.name,
            uid: involved.pod.uid,
          }
        : {
            apiVersion: "v1",
            kind: "Node",
            name: nodeRef.current?.nodeNameOf(deviceId ?? "") ?? deviceId ?? "",
          };
    const message =
      involved.kind === "Pod" && deviceId !== undefined
        ? `pod ${involved.pod.namespace}/${involved.pod.name}: ${event.message}`
        : event.message;
    events.record({
      object,
      type: event.type,
      reason: event.reason,
      message,
      ...(event.series === undefined ? {} : { series: event.series }),
    });
  };
  // Every node advertises this address (docs/kubelet-api.md): the pod IP in a cluster.
  const kubeletAddress = resolveKubeletAddress(config.kubelet, process.env, logger);
  // Built before the node controller, which gives each node its port at registration; the routes
  // read the controllers through `serving` once they exist.
  const serving: { provider?: PodLifecycleProvider; nodes?: NodeController; pods?: PodController } = {};
  let kubelet: KubeletApi | undefined;
  try {
    // A shard's engine uses its process's kubelet API (options.shard.kubelet) instead.
    kubelet =
      config.kubelet.serve && !options.shard
        ? createKubeletApi({
            config: config.kubelet,
            address: kubeletAddress,
            kube,
            backend: kubeletBackend(serving),
            events,
            stateNamespace: namespace.name,
            kubeconfigPath: config.kubeconfig,
            logger,
            ...(options.clock ? { clock: options.clock } : {}),
          })
        : undefined;
  } catch (err) {
    // A client CA that cannot be found: refuse to start, as for any configuration error.
    if (!options.kube) await kube.close();
    throw err;
  }
  const addresses = addressChecker(config.nodes.addressRanges);
  // The engine's own signal: the caller's, or a fatal error the provider reports.
  const running = new AbortController();
  // `/readyz` (docs/configuration.md, `health`): ready once everything has started, never again
  // once stopping begins, so the pod leaves its Service before anything shuts down.
  const readiness = options.leadership?.readiness ?? new EngineReadiness();
  running.signal.addEventListener("abort", () => readiness.stopping(), { once: true });
  let health: HealthServer | undefined;
  // An elected leader's registry is its replica's, already served, with `devicelet_leader` set.
  const metrics = options.leadership?.metrics ?? new DeviceletMetrics();
  if (!options.leadership) {
    metrics.setLeader(true);
    metrics.observeKube(kube, running.signal);
  }
  let metricsServer: MetricsServer | undefined;
  const stopRunning = () => running.abort(signal.reason);
  if (signal.aborted) stopRunning();
  else signal.addEventListener("abort", stopRunning, { once: true });
  let fatal: Error | undefined;
  const fail = (error: Error) => {
    if (running.signal.aborted) return;
    fatal = error;
    logger.error({ err: error }, "the provider reported a fatal error; stopping");
    running.abort(error);
  };
  let view: EngineView<PodLifecycleProvider>;
  try {
    // Callbacks the controllers register are queued, never run inside the provider's own call;
    // pod calls stop reaching the provider before it is stopped.
    view = engineView(
      options.createProvider({
        logger: logger.child({ component: "provider" }),
        store: new ConfigMapStore(kube, namespace.name),
        recordEvent,
        checkPodAddress: (address) => addresses.ip(address),
        fail,
        metrics: options.shard?.providerMetrics ?? metrics.provider,
        ...(options.shard ? { owns: options.shard.owns, shard: options.shard.index } : {}),
      }),
      logger,
    );
  } catch (err) {
    if (!options.kube) await kube.close();
    throw err;
  }
  const provider = view.provider;
  serving.provider = provider;
  const inventory = hasDeviceInventory(provider) ? provider : emptyInventory;
  const kubeletPorts = kubelet?.ports ?? options.shard?.kubelet?.ports;
  const nodes = new NodeController({
    kube,
    // A shard's engine never asks its provider about devices another shard owns.
    inventory: options.shard ? ownedInventory(inventory, options.shard.owns) : inventory,
    providerName: provider.name,
    version,
    logger,
    ...(hasHealth(provider) ? { transport: () => provider.health() } : {}),
    ...(hasDeviceNotifier(provider) ? { notifier: provider } : {}),
    // Deleting the Node of a device that is away decommissions it (docs/protocol.md § 5).
    ...(hasDeviceRetirement(provider) ? { retirement: provider } : {}),
    // The DeviceInSync condition and devicelet.dev/in-sync label, when the provider reports sync.
    ...(hasDeviceSync(provider) ? { sync: provider } : {}),
    ...(options.clock ? { clock: options.clock } : {}),
    ...(kubeletPorts ? { kubeletPorts } : {}),
    onLeaseRenewed: (seconds) => metrics.leaseRenewed(seconds),
    events,
    config: {
      namePrefix: config.nodes.namePrefix,
      taintKey: config.nodes.taintKey,
      // With sharding, the shard label is also in the node informer's selector: an engine sees
      // only its shard's nodes, and adopts them when its shard moves here.
      extraLabels: options.shard
        ? { ...config.nodes.extraLabels, [NodeLabel.Shard]: String(options.shard.index) }
        : config.nodes.extraLabels,
      leaseDurationSeconds: config.lease.durationSeconds,
      leaseRenewIntervalSeconds: config.lease.renewIntervalSeconds,
      statusMaxIntervalSeconds: config.nodeStatus.maxIntervalSeconds,
      kubeletPort: config.kubelet.port,
      kubeletAddress,
      heartbeatQps: config.api.heartbeatQps,
      deviceLabels: config.nodes.deviceLabels,
      addressRanges: config.nodes.addressRanges,
    },
  });
  nodeRef.current = nodes;
  const pods = new PodController({
    kube,
    provider,
    nodes,
    events,
    logger,
    ...(options.clock ? { clock: options.clock } : {}),
    config: { ...config.pods, kubeletAddress },
    onPodRunning: (pod, status, now) => metrics.podRunning(pod, status, now),
    onStartStage: (stage, seconds) => metrics.podStartStage(stage, seconds),
    ...(options.shard?.sources ? { shared: options.shard.sources } : {}),
  });
  // A shard's engine: the runner counts the nodes and pods of every shard.
  if (!options.shard) {
    metrics.watchNodes(() => nodes.servedNodes());
    metrics.watchPods(() => pods.managedPods());
  }
  serving.nodes = nodes;
  serving.pods = pods;
  nodeRef.pods = pods;
  const shared = options.shard?.kubelet;
  const unroute = shared?.serve({ ...kubeletBackend(serving), nodeNames: () => nodes.nodeNames() });
  const shutdown = async () => {
    // No new logs or exec once stopping; open streams end (their provider calls see the abort).
    await kubelet?.close();
    if (shared && unroute) {
      // The shard's next owner (here or elsewhere) binds its nodes' ports again.
      unroute();
      await Promise.all(nodes.nodeNames().map((name) => shared.ports.release(name)));
    }
    // Reconciles still running finish their provider calls first; none starts after `stop`.
    await view.close(STOP_DRAIN_MS);
    if (hasLifecycle(provider)) await provider.stop();
    if (!options.kube) await kube.close();
    // Last: liveness keeps answering while the provider drains.
    await health?.close();
    await metricsServer?.close();
  };
  try {
    // Before anything slow (nodes, the provider's broker), so liveness answers throughout.
    if (config.health.serve && !options.leadership) {
      health = await startHealthServer({
        port: config.health.port,
        bindAddress: config.health.bindAddress,
        checks: [readiness],
        logger: logger.child({ component: "health" }),
      });
    }
    if (config.metrics.serve && !options.leadership) {
      metricsServer = await startMetricsServer({
        port: config.metrics.port,
        bindAddress: config.metrics.bindAddress,
        registry: metrics.registry,
        logger: logger.child({ component: "metrics" }),
      });
    }
    // Nodes first: the ones an earlier run registered are heartbeated (and stay Ready) even while
    // the provider waits for an unreachable broker. Pods only once the provider can say what runs.
    // The kubelet API's certificate is obtained in the background (a CSR may wait for a human).
    kubelet?.start(running.signal);
    await nodes.start(running.signal);
    if (hasLifecycle(provider)) {
      logger.info({ nodes: nodes.nodeNames().length }, "nodes are heartbeating; waiting for the provider");
      await provider.start(running.signal);
    }
    await nodes.syncInventory();
    await pods.start(running.signal);
    if (fatal) throw fatal;
    readiness.ready();
  } catch (err) {
    running.abort(err);
    await shutdown();
    throw err;
  }
  logEngineMetrics({ kube, nodes, pods, logger }, running.signal);
  const done = new Promise<void>((resolve) => {
    running.signal.addEventListener("abort", () => resolve(), { once: true });
  }).then(async () => {
    await shutdown();
    if (fatal) throw fatal;
  });
  // A caller that never awaits `done` must not see an unhandled rejection: the fatal error is logged.
  done.catch(() => undefined);
  return { kube, provider, nodes, pods, metrics, done };
}

/** The engine's API client, as configured; `identity` (a replica's, header-safe) goes in its user agent. */
export function engineKubeClient(options: EngineOptions, identity?: string): KubeClient {
  const { config, logger, version } = options;
  return createKubeClient({
    kubeconfigPath: config.kubeconfig,
    qps: config.api.qps,
    burst: config.api.burst,
    heartbeat: { qps: config.api.heartbeatQps, burst: config.api.heartbeatBurst },
    requestTimeoutMs: config.api.requestTimeoutSeconds * 1000,
    // A heartbeat request that takes half an interval is as good as lost (a Lease write takes
    // milliseconds): try again. Half, so that three hung writes in a row (each followed by at most
    // half an interval of backoff) still fit in the default 40 s lease after a 10 s interval.
    heartbeatTimeoutMs: (config.lease.renewIntervalSeconds * 1000) / 2,
    logger: logger.child({ component: "kube" }),
    userAgent: identity === undefined ? `devicelet/${version}` : `devicelet/${version} (${identity})`,
  });
}

/**
 * What the kubelet API reads from the engine: the controllers once they exist (a request that
 * comes before sees no pods), the provider through the engine's view.
 */
function kubeletBackend(serving: {
  readonly provider?: PodLifecycleProvider;
  readonly nodes?: NodeController;
  readonly pods?: PodController;
}): KubeletBackend {
  const firstServed = new Map<string, Date>();
  return {
    // Set before any node has a port, so before any request can come.
    providerOf: () => {
      if (!serving.provider) throw new Error("the kubelet API was asked before the provider exists");
      return serving.provider;
    },
    deviceOf: (nodeName) => serving.nodes?.byNodeName(nodeName)?.deviceId,
    // As the API server has them: the cache keeps devicelet's own container IDs as one marker.
    podsOn: (nodeName) => (serving.pods?.podsOn(nodeName) ?? []).map(withOwnContainerIds),
    pod: (namespace, name) => {
      const pod = serving.pods?.cachedPod(namespace, name);
      return pod && withOwnContainerIds(pod);
    },
    nodeStartTime: (nodeName) => {
      let since = firstServed.get(nodeName);
      if (!since) {
        since = new Date();
        // Bounded by the nodes this devicelet serves; a name no longer served is dropped.
        const served = new Set(serving.nodes?.nodeNames());
        for (const name of firstServed.keys()) if (!served.has(name)) firstServed.delete(name);
        firstServed.set(nodeName, since);
      }
      return since;
    },
  };
}

/** `inventory` seen through `owns`: only the devices of one shard, listed and watched. */
function ownedInventory(inventory: DeviceInventory, owns: (deviceId: string) => boolean): DeviceInventory {
  return {
    listDevices: async () => (await inventory.listDevices()).filter((device) => owns(device.id)),
    watchDevices: (watcher) => {
      inventory.watchDevices({
        changed: (device) => {
          if (owns(device.id)) watcher.changed(device);
        },
        gone: (deviceId) => {
          if (owns(deviceId)) watcher.gone(deviceId);
        },
      });
    },
  };
}

/** Every minute, when anything changed: heartbeat load, request queues and reconcile queues. */
function logEngineMetrics(
  parts: { kube: KubeClient; nodes: NodeController; pods: PodController; logger: Logger },
  signal: AbortSignal,
): void {
  let last = "";
  const timer = setInterval(() => {
    const metrics = {
      nodes: parts.nodes.nodeNames().length,
      heartbeatLoad: Number(parts.nodes.heartbeatLoad().toFixed(3)),
      apiWaiting: parts.kube.budget.waiting,
      heartbeatWaiting: parts.kube.heartbeatBudget.waiting,
      pods: parts.pods.stats(),
    };
    const text = JSON.stringify(metrics);
    if (text !== last) parts.logger.info({ metrics }, "engine metrics");
    last = text;
  }, 60_000);
  timer.unref();
  signal.addEventListener("abort", () => clearInterval(timer), { once: true });
}
