/**
 * The node Lease heartbeat, as the kubelet keeps it: one Lease per node in `kube-node-lease`, named
 * after the node and owned by it, renewed about every 10 s with a 40 s duration. Renewals are
 * optimistic (replace with the cached resourceVersion); a conflict re-reads and retries a bounded
 * number of times; a lease that vanished (its node was deleted and garbage-collected) is created
 * again. The first renewal of each node is spread across the whole interval, and every interval is
 * jittered, so a thousand nodes renew as a steady trickle, never as a burst.
 */
import type { Logger } from "pino";
import {
  isConflict,
  isNotFound,
  NODE_LEASE_NAMESPACE,
  toMicroTime,
  type KubeClient,
  type Lease,
} from "../kube/index.ts";

export interface LeaseOptions {
  readonly kube: Pick<KubeClient, "getLease" | "createLease" | "replaceLease">;
  readonly nodeName: string;
  /** The Node's uid, for the owner reference that lets the garbage collector remove the Lease. */
  readonly nodeUid: () => string | undefined;
  readonly durationSeconds: number;
  readonly renewIntervalSeconds: number;
  readonly logger: Logger;
  /** When false the renewal is skipped: devicelet itself (or its transport) is unhealthy. */
  readonly healthy: () => boolean;
  /** Called after every renewal attempt, successful or not. */
  readonly onTick?: () => void;
}

const maxConflictRetries = 3;

export class NodeLease {
  readonly #o: LeaseOptions;
  #lease: Lease | undefined;
  #timer: NodeJS.Timeout | undefined;
  #renewals = 0;

  constructor(options: LeaseOptions) {
    this.#o = options;
  }

  get renewals(): number {
    return this.#renewals;
  }

  /** Starts renewing: the first renewal at a random point of the first interval, then every interval ±10 %. */
  start(signal: AbortSignal): void {
    const intervalMs = this.#o.renewIntervalSeconds * 1000;
    const schedule = (delayMs: number) => {
      this.#timer = setTimeout(() => {
        void this.#tick(signal).finally(() => {
          if (!signal.aborted) schedule(intervalMs * (0.9 + Math.random() * 0.2));
        });
      }, delayMs);
    };
    signal.addEventListener("abort", () => clearTimeout(this.#timer), { once: true });
    schedule(Math.random() * intervalMs);
  }

  /** Renews now (also used to create the lease right after the node is registered). */
  async renew(): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        this.#lease = await this.#write();
        this.#renewals++;
        return;
      } catch (err) {
        if (isConflict(err) && attempt < maxConflictRetries) {
          this.#lease = await this.#o.kube.getLease(this.#o.nodeName, NODE_LEASE_NAMESPACE);
          continue;
        }
        if (isNotFound(err) && attempt < maxConflictRetries) {
          this.#lease = undefined;
          continue;
        }
        throw err;
      }
    }
  }

  async #tick(signal: AbortSignal): Promise<void> {
    if (signal.aborted) return;
    try {
      if (this.#o.healthy()) await this.renew();
      else
        this.#o.logger.warn(
          { node: this.#o.nodeName },
          "not renewing the node lease: devicelet is unhealthy",
        );
    } catch (err) {
      this.#o.logger.warn({ err, node: this.#o.nodeName }, "node lease renewal failed");
    } finally {
      this.#o.onTick?.();
    }
  }

  async #write(): Promise<Lease> {
    const { kube, nodeName, durationSeconds } = this.#o;
    this.#lease ??= await kube.getLease(nodeName, NODE_LEASE_NAMESPACE);
    const now = toMicroTime(new Date());
    if (this.#lease) {
      return kube.replaceLease({
        ...this.#lease,
        spec: {
          ...this.#lease.spec,
          holderIdentity: nodeName,
          leaseDurationSeconds: durationSeconds,
          renewTime: now,
        },
      });
    }
    const uid = this.#o.nodeUid();
    return kube.createLease({
      apiVersion: "coordination.k8s.io/v1",
      kind: "Lease",
      metadata: {
        name: nodeName,
        namespace: NODE_LEASE_NAMESPACE,
        ownerReferences: uid ? [{ apiVersion: "v1", kind: "Node", name: nodeName, uid }] : undefined,
      },
      spec: { holderIdentity: nodeName, leaseDurationSeconds: durationSeconds, renewTime: now },
    });
  }
}
