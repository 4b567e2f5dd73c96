/**
 * Keeping managed nodes heartbeating (controller.ts): each node's {@link NodeLease}, started once
 * and stoppable alone, and the fleet's demand on the heartbeat lane, with one warning when it
 * crosses 80% of `api.heartbeatQps` (said again only after it fell below).
 *
 *   startNodeLease({ entry, kube, config, logger, signal, nodeUid, onTick, onRecovered });
 *   const load = new HeartbeatLoad({ config, logger });
 *   load.check(nodeCount);    // warns once while above the threshold
 */
import type { Logger } from "pino";
import type { Clock } from "../base/clock.ts";
import type { KubeClient } from "../kube/index.ts";
import type { NodeControllerConfig, NodeEntry } from "./controller-types.ts";
import { NodeLease, type LeaseLog } from "./lease.ts";
import { STATUS_MEAN_INTERVAL_SHARE } from "./status-writer.ts";

/** Share of the heartbeat lane's QPS above which devicelet warns that leases may starve. */
const HEARTBEAT_LOAD_WARNING = 0.8;

type LoadConfig = Pick<
  NodeControllerConfig,
  "leaseRenewIntervalSeconds" | "statusMaxIntervalSeconds" | "heartbeatQps"
>;

export class HeartbeatLoad {
  readonly #config: LoadConfig;
  readonly #log: Logger;
  #warned = false;

  constructor(o: { readonly config: LoadConfig; readonly logger: Logger }) {
    this.#config = o.config;
    this.#log = o.logger;
  }

  /**
   * What `nodes` heartbeats ask of the heartbeat lane, as a share of its QPS:
   * `nodes × (1/renewInterval + 1/statusInterval) / heartbeatQps`, with the status written at a
   * mean of seven eighths of its maximum interval (status-writer.ts). Above 0.8, leases may starve.
   */
  load(nodes: number): number {
    const { leaseRenewIntervalSeconds, statusMaxIntervalSeconds, heartbeatQps } = this.#config;
    const perNode =
      1 / leaseRenewIntervalSeconds + 1 / (statusMaxIntervalSeconds * STATUS_MEAN_INTERVAL_SHARE);
    return (nodes * perNode) / heartbeatQps;
  }

  /** Warns when the load crosses the threshold; once, until it falls below again. */
  check(nodes: number): void {
    const load = this.load(nodes);
    if (load > HEARTBEAT_LOAD_WARNING && !this.#warned) {
      this.#warned = true;
      this.#log.warn(
        { nodes, heartbeatLoad: Number(load.toFixed(2)), qps: this.#config.heartbeatQps },
        "node heartbeats need more than 80% of api.heartbeatQps; raise it or leases may expire",
      );
    } else if (load <= HEARTBEAT_LOAD_WARNING) this.#warned = false;
  }
}

export interface NodeLeaseStart {
  /** Gets `lease` and `leaseStop` (abort it to stop this node's lease alone). */
  readonly entry: NodeEntry;
  readonly kube: KubeClient;
  readonly config: NodeControllerConfig;
  readonly logger: Logger;
  /** Shared by the fleet's leases; default one per lease. */
  readonly leaseLog?: LeaseLog;
  /** devicelet's lifetime: the lease stops with it. */
  readonly signal: AbortSignal;
  readonly nodeUid: () => string | undefined;
  readonly onTick: () => void;
  readonly onRecovered: () => void;
  /** Each successful renewal's duration in seconds (metrics). */
  readonly onRenewed?: (seconds: number) => void;
  /** The lease's time source; default the system clock. */
  readonly clock?: Clock;
  /** The Node was just created, so its Lease is not there yet: create it first. */
  readonly leaseMissing?: boolean;
}

/** Starts the entry's lease; renewals go on until `signal` or `entry.leaseStop` aborts. */
export function startNodeLease(o: NodeLeaseStart): void {
  const { entry, config } = o;
  entry.leaseStop = new AbortController();
  entry.lease = new NodeLease({
    kube: o.kube,
    nodeName: entry.name,
    nodeUid: o.nodeUid,
    durationSeconds: config.leaseDurationSeconds,
    renewIntervalSeconds: config.leaseRenewIntervalSeconds,
    logger: o.logger,
    ...(o.leaseLog ? { log: o.leaseLog } : {}),
    onTick: o.onTick,
    // At once: a new node needs its Lease, and one an earlier run left may be nearly stale
    // (devicelet was down meanwhile). The heartbeat lane's budget spreads a large fleet.
    firstDelayMs: 0,
    onRecovered: o.onRecovered,
    onRenewed: o.onRenewed,
    ...(o.clock ? { clock: o.clock } : {}),
    ...(o.leaseMissing ? { missing: true } : {}),
  });
  // Renewals start now and can never stop, whatever the first one meets (the queue retries
  // the rest of the reconcile on its own).
  entry.lease.start(AbortSignal.any([o.signal, entry.leaseStop.signal]));
}
