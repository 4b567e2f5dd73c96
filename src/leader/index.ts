/**
 * `src/leader`: leader election between devicelet replicas on a `coordination.k8s.io` Lease, with
 * client-go's semantics and defaults (see election.ts). Only the leader writes nodes and pods.
 *
 *   const elector = new LeaderElector({ kube, namespace, name: "devicelet-leader", identity: podName,
 *     logger, releaseOnCancel: true,
 *     onStartedLeading: (signal) => void engine.lead(signal),
 *     onStoppedLeading: () => engine.standBy() });
 *   await elector.run(signal);
 */
export {
  DEFAULT_LEASE_DURATION_MS,
  DEFAULT_RENEW_DEADLINE_MS,
  DEFAULT_RETRY_PERIOD_MS,
  LeaderElector,
  type LeaderElectorOptions,
} from "./election.ts";
