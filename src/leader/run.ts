/**
 * Running devicelet as one of several replicas (`leaderElection.enabled`): every replica connects
 * to the API server, checks its state namespace, serves `/healthz` and `/readyz` and campaigns for
 * the Lease `leaderElection.leaseName` in the state namespace ({@link LeaderElector}); only the
 * one that holds it runs the engine (`lead`). What this guarantees:
 *
 * - Every replica serves `/metrics` (`metrics.*`) from one registry whose `devicelet_leader` says
 *   which one leads; the leader's engine adds its series to that same registry.
 * - A standby does nothing anyone can see: its only write is its attempt at the leader Lease. It
 *   keeps a metadata-only cache of devicelet's nodes (cheap; it proves the API server answers and
 *   makes `/readyz` mean "could take over") and never builds the provider, so it never connects
 *   to a broker (no MQTT client id clash), never serves the kubelet API, records no Event.
 * - On becoming leader it runs `lead` (the engine, as without leader election) on a signal that
 *   aborts the moment the lease is lost.
 * - On losing the lease it stops at once (that signal aborts), does not campaign again, and the
 *   term's `done` rejects with {@link LeadershipLostError}: the process exits non-zero and its
 *   container restarts as a standby, as kube-controller-manager does. Writes already sent when the
 *   lease is lost are fenced by the state's compare-and-swap (providers/mqtt/generations.ts).
 * - On `signal` (SIGTERM) as leader: the engine stops first, then the lease is released (with
 *   `releaseOnCancel`) so a standby takes over at its next retry instead of a lease duration
 *   later; the release waits at most {@link RELEASE_AFTER_MS} for the engine, so the whole stop
 *   fits a pod's default 30 s grace period.
 *
 *   const engine = await runElected({ config, logger, createKube, lead: (term, signal) => start(term, signal) }, signal);
 *   // resolves once this replica leads and `lead` resolved; rejects with signal.reason if stopped before
 *   await engine.done;   // rejects with LeadershipLostError when the lease was lost
 *
 * Does not import the engine (the engine calls this), so `lead` is passed in.
 */
import { hostname } from "node:os";
import type { Logger } from "pino";
import { sleepOn, systemClock, type Clock } from "../base/clock.ts";
import type { DeviceletConfig } from "../config/index.ts";
import {
  EngineReadiness,
  startHealthServer,
  type HealthServer,
  type ReadinessCheck,
} from "../health/index.ts";
import { Informer, type KubeClient, type Node } from "../kube/index.ts";
import { DeviceletMetrics, startMetricsServer, type MetricsServer } from "../metrics/index.ts";
import { NodeLabel } from "../node/build.ts";
import { nodeIdentity } from "../node/trim.ts";
import { checkStateNamespace, stateNamespace } from "../state/namespace-check.ts";
import { LeaderElector } from "./election.ts";
import { LeaderReadiness } from "./readiness.ts";

/** The leader's `done` rejects with this when the lease was lost (not given up on SIGTERM). */
export class LeadershipLostError extends Error {
  override readonly name = "LeadershipLostError";
}

/** What the leader runs: settles `done` once everything it started has stopped. */
export interface LeaderTerm {
  readonly done: Promise<void>;
}

export interface ElectedOptions<E extends LeaderTerm> {
  readonly config: DeviceletConfig;
  readonly logger: Logger;
  /** A client to use and leave open; without it one is built with `createKube` and closed at the end. */
  readonly kube?: KubeClient;
  /** Builds the client; `identity` (safe for an HTTP header) goes into its user agent. */
  readonly createKube: (identity: string) => KubeClient;
  /**
   * Starts the leader's work with the shared client and the `engine` readiness check to drive;
   * resolves once started. `signal` aborts when the lease is lost or `runElected`'s signal aborts.
   */
  readonly lead: (term: ElectedTerm, signal: AbortSignal) => Promise<E>;
  /** Called with true when this replica starts leading and false when it stops (metrics). */
  readonly onLeadingChange?: (leading: boolean) => void;
  /** The elector's time source; default the system clock. */
  readonly clock?: Clock;
  /** Where $POD_NAME is read for the identity; default process.env. */
  readonly env?: NodeJS.ProcessEnv;
}

/** What a replica hands the engine it runs once it leads. */
export interface ElectedTerm {
  readonly kube: KubeClient;
  /** The `engine` readiness check the engine drives. */
  readonly readiness: EngineReadiness;
  /** The replica's registry, already served and observing `kube`: the engine adds its series. */
  readonly metrics: DeviceletMetrics;
}

/** How long after SIGTERM the lease is released even if the engine has not finished stopping. */
export const RELEASE_AFTER_MS = 20_000;

/** `leaderElection.identity`, else $POD_NAME, else `<hostname>_<pid>` (unique per process). */
export function leaderIdentity(
  configured: string,
  env: NodeJS.ProcessEnv = process.env,
  host: string = hostname(),
  pid: number = process.pid,
): string {
  return configured || env.POD_NAME || `${host}_${pid}`;
}

/** The identity as it may appear in a User-Agent header (printable ASCII, no parentheses). */
const headerSafe = (identity: string) => identity.replace(/[^\x21-\x27\x2a-\x7e]/g, "_");

/**
 * Stands by until this replica leads, then runs `lead`; see the module doc. Resolves with `lead`'s
 * result, whose `done` also covers giving the lease up and closing what this opened. Rejects with
 * `signal.reason` when stopped before leading, with {@link LeadershipLostError} when the lease was
 * lost while `lead` was starting, and with `lead`'s error when it failed to start.
 */
export async function runElected<E extends LeaderTerm>(
  o: ElectedOptions<E>,
  signal: AbortSignal,
): Promise<E> {
  const { config, logger } = o;
  const settings = config.leaderElection;
  const identity = leaderIdentity(settings.identity, o.env);
  const namespace = stateNamespace(config);
  const lease = `${namespace.name}/${settings.leaseName}`;
  const log = logger.child({ component: "leader", lease, identity });
  const kube = o.kube ?? o.createKube(headerSafe(identity));
  const closeKube = () => (o.kube ? Promise.resolve() : kube.close());
  const leader = new LeaderReadiness();
  // This replica's term as leader: the engine's own check once leading (a standby has nothing of
  // its own to start), and whether the lease was lost (rather than given up on `signal`).
  const term: { readiness?: EngineReadiness; lost: boolean } = { lost: false };
  const engineCheck: ReadinessCheck = {
    name: "engine",
    notReadyReason: () => term.readiness?.notReadyReason(),
  };
  let health: HealthServer | undefined;
  let metricsServer: MetricsServer | undefined;
  const metrics = new DeviceletMetrics();
  metrics.setLeader(false);
  const metricsStop = new AbortController();
  metrics.observeKube(kube, metricsStop.signal);
  try {
    await checkStateNamespace({ kube, namespace, logger, signal });
    if (config.health.serve) {
      health = await startHealthServer({
        port: config.health.port,
        bindAddress: config.health.bindAddress,
        checks: [engineCheck, leader],
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
    metricsStop.abort();
    await health?.close();
    await closeKube();
    throw err;
  }

  // The standby's cache: devicelet's own nodes, metadata only.
  const cacheStop = new AbortController();
  const nodeCache = new Informer<Node>({
    client: kube,
    logger: log,
    path: "/api/v1/nodes",
    labelSelector: ownNodesSelector(config),
    metadataOnly: true,
    // It only counts them.
    trim: nodeIdentity,
  });
  void nodeCache.start(AbortSignal.any([signal, cacheStop.signal]));
  nodeCache.ready.then(
    () => {
      leader.synced();
      if (!leader.isLeading) log.info({ nodes: nodeCache.size }, "standing by: caches synced");
    },
    () => undefined,
  );

  const electorStop = new AbortController();
  let started: Promise<E> | undefined;
  const leading = Promise.withResolvers<undefined>();
  const elector = new LeaderElector({
    kube,
    namespace: namespace.name,
    name: settings.leaseName,
    identity,
    logger: log,
    leaseDurationMs: settings.leaseDurationSeconds * 1000,
    renewDeadlineMs: settings.renewDeadlineSeconds * 1000,
    retryPeriodMs: settings.retryPeriodSeconds * 1000,
    releaseOnCancel: settings.releaseOnCancel,
    ...(o.clock ? { clock: o.clock } : {}),
    onStartedLeading: (lostSignal) => {
      leader.leading();
      // The engine keeps caches of its own.
      cacheStop.abort();
      metrics.setLeader(true);
      o.onLeadingChange?.(true);
      const readiness = new EngineReadiness();
      term.readiness = readiness;
      started = o.lead({ kube, readiness, metrics }, AbortSignal.any([signal, lostSignal]));
      leading.resolve(undefined);
    },
    onStoppedLeading: () => {
      metrics.setLeader(false);
      o.onLeadingChange?.(false);
      if (signal.aborted) return;
      term.lost = true;
      leader.lost();
      log.error("leader election lost: stopping at once");
      // No new campaign: the process exits and comes back as a standby.
      electorStop.abort();
    },
  });
  const electing = elector.run(electorStop.signal);
  const stopped = new Promise<void>((resolve) => {
    const onStop = () => {
      leader.stopping();
      // A leader gives the lease up only once its engine has stopped (below).
      if (!started) electorStop.abort();
      resolve();
    };
    if (signal.aborted) onStop();
    else signal.addEventListener("abort", onStop, { once: true });
  });
  const finish = async (settled: Promise<unknown>) => {
    electorStop.abort();
    await electing;
    await settled;
    cacheStop.abort();
    await nodeCache.done;
    metricsStop.abort();
    await health?.close();
    await metricsServer?.close();
    await closeKube();
  };

  await Promise.race([leading.promise, stopped, electing]);
  if (!started) {
    await finish(Promise.resolve());
    throw signal.reason ?? new Error("leader election stopped before this replica led");
  }
  let engine: E;
  try {
    engine = await started;
  } catch (err) {
    await finish(Promise.resolve());
    throw term.lost ? new LeadershipLostError(`lost the leader lease ${lease} while starting`) : err;
  }
  const done = (async () => {
    let failure: { err: unknown } | undefined;
    const settled = engine.done.then(
      () => undefined,
      (err: unknown) => {
        failure = { err };
      },
    );
    const releaseAnyway = stopped.then(() =>
      sleepOn(o.clock ?? systemClock, RELEASE_AFTER_MS, new AbortController().signal),
    );
    await Promise.race([settled, releaseAnyway]);
    await finish(settled);
    if (term.lost) throw new LeadershipLostError(`lost the leader lease ${lease}`);
    if (failure) throw failure.err;
  })();
  // A caller that never awaits `done` must not see an unhandled rejection.
  done.catch(() => undefined);
  return { ...engine, done };
}

/** The labels every node devicelet registers carries (build.ts), whatever the provider. */
function ownNodesSelector(config: DeviceletConfig): string {
  const own = { [NodeLabel.Type]: "virtual-kubelet", ...config.nodes.extraLabels };
  return Object.entries(own)
    .map(([k, v]) => `${k}=${v}`)
    .join(",");
}
