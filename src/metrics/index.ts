/**
 * `src/metrics`: devicelet's Prometheus metrics (prom-client) on a plain HTTP port of their own
 * (docs/configuration.md, `metrics`; the series are listed in docs/operations.md). One
 * {@link DeviceletMetrics} per engine, each with its own registry; the engine wires the hooks:
 *
 *   const metrics = new DeviceletMetrics();
 *   metrics.observeKube(kube, signal);                        // API answers, budget waits per lane
 *   createProvider({ ..., metrics: metrics.provider });       // the provider's series
 *   new NodeController({ ..., onLeaseRenewed: (s) => metrics.leaseRenewed(s) });
 *   metrics.watchNodes(() => nodes.servedNodes());            // read at scrape time
 *   const server = await startMetricsServer({ port: 8080, bindAddress: "0.0.0.0", registry: metrics.registry, logger });
 *   await server.close();
 */
export {
  DeviceletMetrics,
  METRIC_PREFIX,
  type DeviceletMetricsOptions,
  type Lane,
} from "./devicelet-metrics.ts";
export { watchHeap, type HeapUse } from "./heap.ts";
export { trimHeapAfterBursts } from "./heap-trim.ts";
export { startMetricsServer, type MetricsServer, type MetricsServerOptions } from "./server.ts";
