/**
 * `runShardedEngines`: one devicelet replica of several, serving the devices of the shards it owns
 * (`sharding.enabled`, docs/configuration.md). It joins the shard members (coordinator.ts) and runs
 * one engine (src/engine.ts) per shard it owns, on that shard's signal. What it guarantees:
 *
 * - A shard's engine serves only its devices: its provider gets `owns` (`shardOf(id, shards) ===
 *   shard`) and the shard index, its inventory is filtered by `owns`, and its nodes carry
 *   `devicelet.dev/shard=<shard>`, which its node informer selects on.
 * - When a shard is lost or handed over, its signal aborts: the engine stops at once, without
 *   deleting nodes (as a leader losing its lease does), and the coordinator releases the Lease
 *   only once the engine has stopped (up to the renew deadline). The next owner adopts the nodes.
 * - What the process has once stays single: the API client, `/healthz` and `/readyz` (ready once
 *   every running shard engine is ready; a replica that owns no shard is ready), the metrics
 *   registry (nodes, pods and provider gauges summed over shards), the kubelet API, whose
 *   requests go to the engine serving the node (kubelet-router.ts), and the pod and ConfigMap
 *   watches: one pod informer (src/pod/shared-pods.ts) and one ConfigMap/Secret cache
 *   (src/pod/references.ts), started before any shard, of which each engine gets a view.
 * - A shard engine that fails (its provider reported a fatal error) stops the whole replica: every
 *   shard stops, its Leases are released, and `done` rejects with the error, so the process exits
 *   non-zero and restarts, as a single devicelet does.
 *
 * Identity and Lease timings are `leaderElection`'s keys (identity `""`: $POD_NAME, else
 * `<hostname>_<pid>`).
 *
 *   const sharded = await runShardedEngines({ config, logger, version, createProvider }, signal);
 *   sharded.engines();    // the engines running now, by shard
 *   await sharded.done;   // after `signal` aborted: every shard stopped and released
 */
import type { Logger } from "pino";
import type { Clock } from "../base/clock.ts";
import {
  engineKubeClient,
  runEngine,
  type Engine,
  type EngineOptions,
  type SharedKubelet,
} from "../engine.ts";
import {
  EngineReadiness,
  startHealthServer,
  type HealthServer,
  type ReadinessCheck,
} from "../health/index.ts";
import { EventRecorder, type KubeClient } from "../kube/index.ts";
import { createKubeletApi, resolveKubeletAddress, type KubeletApi } from "../kubelet/index.ts";
import { leaderIdentity } from "../leader/run.ts";
import { DeviceletMetrics, startMetricsServer, type MetricsServer } from "../metrics/index.ts";
import { ReferenceCache } from "../pod/references.ts";
import { SharedPods } from "../pod/shared-pods.ts";
import type { ProviderGauges, ProviderMetrics } from "../provider/types.ts";
import { checkStateNamespace, stateNamespace } from "../state/namespace-check.ts";
import { ShardCoordinator } from "./coordinator.ts";
import { shardOf } from "./hash.ts";
import { KubeletRouter } from "./kubelet-router.ts";
import { relabelShardNodes } from "./relabel.ts";

export interface ShardedOptions {
  readonly config: EngineOptions["config"];
  readonly createProvider: EngineOptions["createProvider"];
  readonly logger: Logger;
  readonly version: string;
  /** Use this client and leave it open; default one built from the config. */
  readonly kube?: KubeClient;
  /** The coordinator's and the engines' time source; default the system clock. */
  readonly clock?: Clock;
  /** Where $POD_NAME is read for the identity; default process.env. */
  readonly env?: NodeJS.ProcessEnv;
}

export interface ShardedEngines {
  readonly kube: KubeClient;
  readonly coordinator: ShardCoordinator;
  /** The engines that have started and not stopped, by shard. */
  engines(): ReadonlyMap<number, Engine>;
  /**
   * Settles once `signal` aborted (or a shard engine failed), every shard engine stopped, the
   * Leases were given up and the servers closed. Rejects with a shard engine's fatal error.
   */
  readonly done: Promise<void>;
}

/** One owned shard: its readiness check, its engine once started, and when it has stopped. */
interface ShardRun {
  readonly readiness: EngineReadiness;
  engine?: Engine;
  /** Resolves once the engine stopped, or failed to start; never rejects. */
  readonly stopped: Promise<void>;
}

/** Joins the shard members and runs an engine per owned shard; see the module doc. */
export async function runShardedEngines(o: ShardedOptions, signal: AbortSignal): Promise<ShardedEngines> {
  const { config, logger } = o;
  const identity = leaderIdentity(config.leaderElection.identity, o.env);
  const namespace = stateNamespace(config, o.env);
  const log = logger.child({ component: "shards", identity });
  const kube = o.kube ?? engineKubeClient(o, identity.replace(/[^\x21-\x27\x2a-\x7e]/g, "_"));
  const closeKube = () => (o.kube ? Promise.resolve() : kube.close());
  const runs = new Map<number, ShardRun>();
  // The replica's own signal: the caller's, or a shard engine that failed.
  const running = new AbortController();
  const stopRunning = () => running.abort(signal.reason);
  if (signal.aborted) stopRunning();
  else signal.addEventListener("abort", stopRunning, { once: true });
  let fatal: { err: unknown } | undefined;

  const metrics = new DeviceletMetrics();
  metrics.setLeader(true);
  metrics.observeKube(kube, running.signal);
  const engines = () =>
    new Map([...runs].flatMap(([shard, run]) => (run.engine ? [[shard, run.engine] as const] : [])));
  metrics.watchNodes(() => [...engines().values()].flatMap((engine) => [...engine.nodes.servedNodes()]));
  metrics.watchPods(() => [...engines().values()].flatMap((engine) => [...engine.pods.managedPods()]));
  const gauges = new ShardGauges(metrics.provider);

  const readiness: ReadinessCheck = {
    name: "engine",
    notReadyReason: () => {
      if (running.signal.aborted) return "stopping";
      for (const [shard, run] of runs) {
        const reason = run.readiness.notReadyReason();
        if (reason !== undefined) return `shard ${shard}: ${reason}`;
      }
      return undefined;
    },
  };

  let health: HealthServer | undefined;
  let metricsServer: MetricsServer | undefined;
  let kubelet: KubeletApi | undefined;
  const router = new KubeletRouter();
  try {
    await checkStateNamespace({ kube, namespace, logger, signal });
    if (config.kubelet.serve) {
      kubelet = createKubeletApi({
        config: config.kubelet,
        address: resolveKubeletAddress(config.kubelet, process.env, logger),
        kube,
        backend: router,
        events: new EventRecorder({
          client: kube,
          logger: logger.child({ component: "events" }),
          qps: config.api.eventQps,
          burst: config.api.eventBurst,
        }),
        stateNamespace: namespace.name,
        kubeconfigPath: config.kubeconfig,
        logger,
        ...(o.clock ? { clock: o.clock } : {}),
      });
    }
    if (config.health.serve) {
      health = await startHealthServer({
        port: config.health.port,
        bindAddress: config.health.bindAddress,
        checks: [readiness],
        logger: logger.child({ component: "health" }),
      });
    }
    if (config.metrics.serve) {
      metricsServer = await startMetricsServer({
        port: config.metrics.port,
        bindAddress: config.metrics.bindAddress,
        registry: metrics.registry,
        logger: logger.child({ component: "metrics" }),
      });
    }
  } catch (err) {
    running.abort(err);
    await health?.close();
    await closeKube();
    throw err;
  }
  kubelet?.start(running.signal);
  const shared: SharedKubelet | undefined = kubelet
    ? { ports: kubelet.ports, serve: (backend) => router.serve(backend) }
    : undefined;

  // One pod watch and one ConfigMap watch for every shard engine of the process; each engine's
  // pod controller opens a view of them (and waits for their first lists).
  const pods = new SharedPods({ client: kube, logger, ...(o.clock ? { clock: o.clock } : {}) });
  const references = new ReferenceCache({
    kube,
    logger: logger.child({ component: "references" }),
    secretTtlMs: config.pods.secretRefreshSeconds * 1000,
    ...(o.clock ? { clock: o.clock } : {}),
  });
  const podsDone = pods.start(running.signal);
  // Rejects only when stopped before ConfigMaps were listed: the engines see that themselves.
  references.start(running.signal).catch(() => undefined);
  const sources = { pods, references };

  const { shards } = config.sharding;
  // Once per process, as soon as an engine tells the provider's name: nodes registered before
  // sharding (or under another shard count) get the shard label their device hashes to, so the
  // engine of that shard sees them (relabel.ts).
  let relabeling: Promise<void> | undefined;
  const relabelOnce = (providerName: string) => {
    relabeling ??= relabelShardNodes({
      kube,
      providerName,
      shards,
      extraLabels: config.nodes.extraLabels,
      logger: log,
      signal: running.signal,
      ...(o.clock ? { clock: o.clock } : {}),
    }).then(
      (r) => {
        if (r.relabeled.length > 0 || r.failed.length > 0)
          log.info(
            { relabeled: r.relabeled.length, failed: r.failed.length, skipped: r.skipped.length },
            "labelled nodes with their shard",
          );
      },
      (err: unknown) => {
        if (!running.signal.aborted) log.warn({ err }, "labelling nodes with their shard failed");
      },
    );
  };
  const startShard = (shard: number, shardSignal: AbortSignal) => {
    const shardLog = logger.child({ shard });
    const engineReadiness = new EngineReadiness();
    const run: { readiness: EngineReadiness; engine?: Engine; stopped?: Promise<void> } = {
      readiness: engineReadiness,
    };
    const providerMetrics = gauges.forShard(shard);
    const started = runEngine(
      {
        config,
        logger: shardLog,
        version: o.version,
        createProvider: o.createProvider,
        kube,
        ...(o.clock ? { clock: o.clock } : {}),
        leadership: { kube, readiness: engineReadiness, metrics },
        shard: {
          index: shard,
          owns: (deviceId) => shardOf(deviceId, shards) === shard,
          providerMetrics,
          sources,
          ...(shared ? { kubelet: shared } : {}),
        },
      },
      shardSignal,
    );
    const failed = (err: unknown) => {
      // Stopped because the shard moved (or the replica stops): not a failure.
      if (shardSignal.aborted || running.signal.aborted) return;
      fatal = { err };
      log.error({ err, shard }, "a shard engine failed: stopping every shard");
      running.abort(err);
    };
    run.stopped = started
      .then(async (engine) => {
        run.engine = engine;
        shardLog.info({ nodes: engine.nodes.nodeNames().length }, "shard engine running");
        relabelOnce(engine.provider.name);
        await engine.done;
      })
      .catch(failed)
      .finally(() => gauges.drop(shard));
    runs.set(shard, run as ShardRun);
  };

  const coordinator = new ShardCoordinator({
    kube,
    namespace: namespace.name,
    prefix: config.sharding.leasePrefix,
    identity,
    shards,
    leaseDurationMs: config.leaderElection.leaseDurationSeconds * 1000,
    renewDeadlineMs: config.leaderElection.renewDeadlineSeconds * 1000,
    retryPeriodMs: config.leaderElection.retryPeriodSeconds * 1000,
    releaseOnCancel: config.leaderElection.releaseOnCancel,
    logger: log,
    ...(o.clock ? { clock: o.clock } : {}),
    onShardStarted: startShard,
    onShardStopped: async (shard) => {
      const run = runs.get(shard);
      await run?.stopped;
      // A newer run of the same shard may have started meanwhile: remove only this one.
      if (runs.get(shard) === run) runs.delete(shard);
    },
  });
  const coordinating = coordinator.run(running.signal);
  const done = (async () => {
    await coordinating;
    await Promise.all([...runs.values()].map((run) => run.stopped));
    await podsDone;
    await relabeling;
    await kubelet?.close();
    await health?.close();
    await metricsServer?.close();
    await closeKube();
    if (fatal) throw fatal.err;
  })();
  // A caller that never awaits `done` must not see an unhandled rejection.
  done.catch(() => undefined);
  log.info({ shards, lease: config.sharding.leasePrefix }, "serving the shards this replica owns");
  return { kube, coordinator, engines, done };
}

/**
 * The provider's metrics of every shard in one registry: counters and histograms add up as they
 * are; the gauges each shard's provider observes are summed over the shards (connected: all are).
 */
class ShardGauges {
  readonly #target: ProviderMetrics;
  readonly #byShard = new Map<number, ProviderGauges>();

  constructor(target: ProviderMetrics) {
    this.#target = target;
    const sum = (read: (g: ProviderGauges) => (() => number) | undefined) => () => {
      let total = 0;
      for (const g of this.#byShard.values()) total += read(g)?.() ?? 0;
      return total;
    };
    target.observe({
      pendingChanges: sum((g) => g.pendingChanges),
      devicesOutOfSync: sum((g) => g.devicesOutOfSync),
      commandsQueued: sum((g) => g.commandsQueued),
      transportConnected: () => [...this.#byShard.values()].every((g) => g.transportConnected?.() ?? true),
    });
  }

  /** The metrics one shard's provider reports to. */
  forShard(shard: number): ProviderMetrics {
    const target = this.#target;
    return {
      desiredIssued: (seconds) => target.desiredIssued(seconds),
      desiredDelivered: (seconds) => target.desiredDelivered(seconds),
      desiredApplied: (seconds) => target.desiredApplied(seconds),
      messageRejected: (reason) => target.messageRejected(reason),
      commandExpired: () => target.commandExpired(),
      reportsReread: (devices) => target.reportsReread(devices),
      observe: (gauges) => {
        this.#byShard.set(shard, gauges);
      },
    };
  }

  /** The shard's engine stopped: its gauges no longer count. */
  drop(shard: number): void {
    this.#byShard.delete(shard);
  }
}
