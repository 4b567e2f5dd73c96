/**
 * `src/leader`: leader election between devicelet replicas on a `coordination.k8s.io` Lease, with
 * client-go's semantics and defaults (election.ts), and running devicelet as one of several
 * replicas (run.ts: standby, leader, exit on loss; readiness.ts: the `leader` readiness check).
 * Only the leader writes nodes and pods. The engine calls `runElected` itself when
 * `leaderElection.enabled` (src/engine.ts):
 *
 *   const engine = await runElected({ config, logger, createKube, lead: (term, signal) => startEngine(term, signal) }, signal);
 *   await engine.done;   // rejects with LeadershipLostError when the lease was lost
 */
export {
  DEFAULT_LEASE_DURATION_MS,
  DEFAULT_RENEW_DEADLINE_MS,
  DEFAULT_RETRY_PERIOD_MS,
  LeaderElector,
  type LeaderElectorOptions,
} from "./election.ts";
export { LeaderReadiness } from "./readiness.ts";
export {
  leaderIdentity,
  LeadershipLostError,
  RELEASE_AFTER_MS,
  runElected,
  type ElectedOptions,
  type ElectedTerm,
  type LeaderTerm,
} from "./run.ts";
