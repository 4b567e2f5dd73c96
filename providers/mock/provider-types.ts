/** Public types of MockProvider: what its factory takes and what `stats()` returns. */
import type { Logger } from "pino";
import type { Clock } from "../../src/base/clock.ts";

export interface MockProviderDeps {
  readonly logger: Logger;
  readonly clock?: Clock;
  /** Source of randomness for `createErrorRate`, in [0, 1). */
  readonly random?: () => number;
  /** Where `fatalErrorAfterMs` reports its error (the engine's ProviderContext.fail). */
  readonly fail?: (error: Error) => void;
  /** ProviderContext.shard: this mock serves one shard, with a state file of its own (`<stateFile>.shard-<i>`). */
  readonly shard?: number;
}

/** Counters for tests and benchmarks; a fresh snapshot on each call. */
export interface MockStats {
  /** createPod calls that created a pod. Survives restarts. */
  readonly creates: number;
  /**
   * Creates per pod uid, for the pods held and the last 1,024 removed; a value above 1 means a pod
   * was created twice. Survives restarts.
   */
  readonly createsByUid: Readonly<Record<string, number>>;
  /** Workloads that reached a device (a create or update online, or a queued one on reconnect). */
  readonly applied: number;
  readonly updates: number;
  /** deletePod calls that made a tombstone. */
  readonly deletes: number;
  /** Pods finished deleting (notifyDeleted fired). */
  readonly deleted: number;
  /** createPod/updatePod calls with the hash already held. */
  readonly noops: number;
  readonly createErrors: number;
  readonly statusNotifications: number;
  readonly pods: number;
  readonly queued: number;
  readonly tombstones: number;
  readonly devicesOnline: number;
}
