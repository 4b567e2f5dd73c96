/**
 * `src/shard`: splitting a fleet's devices between N devicelet replicas on Kubernetes Leases, each
 * device served by exactly one replica at a time, fenced like leader election (src/leader).
 * hash.ts maps a device to a shard (jump consistent hash) and a shard to a member (rendezvous
 * hashing); membership.ts keeps one Lease per replica and judges who is live; shard-lease.ts holds
 * one shard's Lease; coordinator.ts ties them together. engines.ts runs one engine (src/engine.ts)
 * per owned shard in one process (`sharding.enabled`), with one kubelet API for all of them
 * (kubelet-router.ts).
 *
 *   const coordinator = new ShardCoordinator({ kube, namespace, prefix: "devicelet", identity, shards: 8,
 *     logger, onShardStarted: (shard, signal) => serve(shard, signal), onShardStopped: () => undefined });
 *   void coordinator.run(signal);
 *   coordinator.owns(deviceId);   // serve it only while true; the shard's signal says when it stops
 */
export {
  SHARD_LEASE_LABEL,
  ShardCoordinator,
  shardLeaseName,
  type ShardCoordinatorOptions,
} from "./coordinator.ts";
export { assignShards, deviceKey, jumpHash, rendezvousOwner, shardOf } from "./hash.ts";
export {
  MEMBER_FORGET_AFTER_MS,
  SHARD_COUNT_ANNOTATION,
  SHARD_MEMBER_LABEL,
  memberLeaseName,
} from "./membership.ts";
export { runShardedEngines, type ShardedEngines, type ShardedOptions } from "./engines.ts";
export { KubeletRouter, type RoutedBackend } from "./kubelet-router.ts";
