/**
 * `src/health`: devicelet's liveness and readiness endpoints (`/healthz`, `/readyz`) on a plain
 * HTTP port of their own, for the probes of the Deployment that runs it (docs/configuration.md,
 * `health`).
 *
 *   const readiness = new EngineReadiness();
 *   const health = await startHealthServer({ port: 8081, bindAddress: "0.0.0.0", checks: [readiness], logger });
 *   readiness.ready();      // once started; readiness.stopping() once stopping begins
 *   await health.close();   // last thing at shutdown
 */
export {
  EngineReadiness,
  startHealthServer,
  type HealthServer,
  type HealthServerOptions,
  type ReadinessCheck,
} from "./server.ts";
