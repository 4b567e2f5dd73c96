/**
 * The readiness check `leader` of `/readyz` (src/health): a replica is ready when it leads, or
 * when it stands by with its caches synced (so a rolling update moves on only once the new pod
 * could take over), and never again once it lost the lease or began stopping.
 *
 *   const leader = new LeaderReadiness();
 *   informer.ready.then(() => leader.synced());   // standby: ready
 *   leader.leading();                              // ready (the engine's own check says when it has started)
 *   leader.lost();                                 // not ready, for good
 */
import type { ReadinessCheck } from "../health/index.ts";

type State = "syncing" | "standby" | "leading" | "lost" | "stopping";

export class LeaderReadiness implements ReadinessCheck {
  readonly name = "leader";
  #state: State = "syncing";

  /** The standby's caches are synced; ignored unless still syncing. */
  synced(): void {
    if (this.#state === "syncing") this.#state = "standby";
  }

  /** This replica holds the lease; ignored once lost or stopping. */
  leading(): void {
    if (this.#state !== "lost" && this.#state !== "stopping") this.#state = "leading";
  }

  /** The lease was lost: the process is on its way out. */
  lost(): void {
    if (this.#state !== "stopping") this.#state = "lost";
  }

  /** Stopping has begun (SIGTERM): readiness never comes back in this process. */
  stopping(): void {
    if (this.#state !== "lost") this.#state = "stopping";
  }

  /** Whether this replica leads now. */
  get isLeading(): boolean {
    return this.#state === "leading";
  }

  notReadyReason(): string | undefined {
    switch (this.#state) {
      case "syncing":
        return "standby: caches not synced yet";
      case "standby":
      case "leading":
        return undefined;
      case "lost":
        return "leader election lost: stopping";
      case "stopping":
        return "stopping";
    }
  }
}
