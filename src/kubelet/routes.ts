/**
 * The kubelet API's plain routes, for one node at a time (the node a request arrived for, found by
 * server.ts from its local port): `/healthz`, `/pods`, `/runningpods/`, `/stats/summary` and
 * `/metrics/resource`, with the paths and answers of the kubelet (pkg/kubelet/server/server.go).
 * Logs are in routes-logs.ts, exec/attach/port-forward in routes-streams.ts.
 *
 *   app.use(kubeletRoutes(context));
 */
import { Router, type Response } from "express";
import type { Logger } from "pino";
import type { Clock } from "../base/clock.ts";
import type { Pod } from "../kube/index.ts";
import { isInvalidInput, isNotFound, isTransient, isUnsupported, transient } from "../provider/errors.ts";
import { hasStats, type DeviceStats, type PodLifecycleProvider } from "../provider/types.ts";
import { RESOURCE_METRICS_CONTENT_TYPE, renderResourceMetrics } from "./metrics-resource.ts";
import { buildSummary, CpuRates, type SummaryJson } from "./summary.ts";

/** What the routes read: the engine's view of nodes, pods and the provider. */
export interface KubeletBackend {
  /**
   * The provider serving the node: the engine's, or with sharding the engine of the node's shard;
   * undefined when no engine in this process serves it now (its shard moved).
   */
  providerOf(nodeName: string): PodLifecycleProvider | undefined;
  /** The device of a node devicelet serves, once its Node is known to be devicelet's own. */
  deviceOf(nodeName: string): string | undefined;
  /** The node's pods as the API server has them (devicelet's watch cache). */
  podsOn(nodeName: string): readonly Pod[];
  /** A bound pod as the API server has it, whatever its node. */
  pod(namespace: string, name: string): Pod | undefined;
  /** When the node's device started, if it said; else when devicelet began serving the node. */
  nodeStartTime(nodeName: string): Date;
}

export interface RouteContext {
  readonly backend: KubeletBackend;
  readonly logger: Logger;
  readonly clock: Clock;
  readonly rates: CpuRates;
}

/** The node this request is for; set by server.ts before any route runs. */
export const nodeOf = (res: Response): string => res.locals.node as string;

const REASONS: Readonly<Record<number, string>> = {
  400: "BadRequest",
  401: "Unauthorized",
  403: "Forbidden",
  404: "NotFound",
  405: "MethodNotAllowed",
  422: "Invalid",
  500: "InternalError",
  503: "ServiceUnavailable",
};

/** A metav1.Status, as the API server and kubectl read a refusal. */
export function statusBody(code: number, message: string): Record<string, unknown> {
  return {
    kind: "Status",
    apiVersion: "v1",
    metadata: {},
    status: "Failure",
    message,
    reason: REASONS[code] ?? "Unknown",
    code,
  };
}

export function sendStatus(res: Response, code: number, message: string): void {
  res
    .status(code)
    .type("application/json")
    .send(JSON.stringify(statusBody(code, message)));
}

/**
 * The HTTP answer to a provider's error: NotFound 404; Unsupported and InvalidInput 400 (the
 * device cannot do it); Transient 503 (a device offline, nothing cached); anything else 500.
 */
export function providerErrorCode(err: unknown): number {
  if (isNotFound(err)) return 404;
  if (isUnsupported(err) || isInvalidInput(err)) return 400;
  if (isTransient(err)) return 503;
  return 500;
}

/** How long a provider call the kubelet API makes may take before it is answered without it. */
export const PROVIDER_CALL_TIMEOUT_MS = 5_000;

/**
 * `call()`, or a Transient error (a 503) after {@link PROVIDER_CALL_TIMEOUT_MS}: the contract
 * says no call waits on a device, and a request must never hang on one that does.
 */
export function within<T>(
  ctx: Pick<RouteContext, "clock">,
  what: string,
  call: () => Promise<T>,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = ctx.clock.setTimeout(
      () =>
        reject(
          transient(`the provider did not answer for ${what} within ${PROVIDER_CALL_TIMEOUT_MS / 1000} s`),
        ),
      PROVIDER_CALL_TIMEOUT_MS,
    );
    call().then(
      (value) => {
        ctx.clock.clearTimeout(timer);
        resolve(value);
      },
      (err: unknown) => {
        ctx.clock.clearTimeout(timer);
        reject(err instanceof Error ? err : new Error(String(err)));
      },
    );
  });
}

export const podList = (items: readonly unknown[]) => ({
  kind: "PodList",
  apiVersion: "v1",
  metadata: {},
  items,
});

export function kubeletRoutes(ctx: RouteContext): Router {
  const router = Router();
  router.get("/healthz", (_req, res) => {
    res.type("text/plain").send("ok");
  });
  router.get("/pods", (_req, res) => {
    res.json(podList(ctx.backend.podsOn(nodeOf(res))));
  });
  // The kubelet answers both; kubectl's node proxy asks for the one with the slash.
  router.get(["/runningpods", "/runningpods/"], async (_req, res) => {
    res.json(podList(await runningPods(ctx, nodeOf(res))));
  });
  router.get("/stats/summary", async (_req, res) => {
    const { summary } = await summaryOf(ctx, nodeOf(res));
    res.json(summary);
  });
  router.get("/metrics/resource", async (_req, res) => {
    const { summary, scrapeError } = await summaryOf(ctx, nodeOf(res));
    res.type(RESOURCE_METRICS_CONTENT_TYPE).send(renderResourceMetrics(summary, { scrapeError }));
  });
  return router;
}

/**
 * What the provider runs (or holds) for this node, as the kubelet lists its container runtime's
 * pods: name, namespace, uid and each container's name and image, nothing else. Read live, so a
 * pod the provider has finished deleting is gone from the next answer.
 */
async function runningPods(ctx: RouteContext, nodeName: string): Promise<unknown[]> {
  const provider = ctx.backend.providerOf(nodeName);
  if (!provider) return [];
  const all = await within(ctx, "the provider's pod list", () => provider.listPods());
  const held = all.filter((p) => p.nodeName === nodeName);
  return Promise.all(
    held.map(async ({ pod }) => {
      const status = await within(ctx, "pod status", () => provider.getPodStatus(pod)).catch(() => undefined);
      const cached = ctx.backend.pod(pod.namespace, pod.name);
      const spec = cached?.metadata?.uid === pod.uid ? cached.spec?.containers : undefined;
      const containers =
        status && status.apps.length > 0
          ? status.apps.map((a) => ({ name: a.name, image: a.image, resources: {} }))
          : (spec ?? []).map((c) => ({ name: c.name, image: c.image ?? "", resources: {} }));
      return {
        metadata: { name: pod.name, namespace: pod.namespace, uid: pod.uid, creationTimestamp: null },
        spec: { containers },
        status: {},
      };
    }),
  );
}

/**
 * The node's summary from the provider's stats. A provider without stats, a device it has no
 * stats for yet (NotFound) or a node whose device is not known: the node and its pods with no
 * usage. Any other error is logged, and answered the same way with `scrapeError` set.
 */
export async function summaryOf(
  ctx: RouteContext,
  nodeName: string,
): Promise<{ summary: SummaryJson; scrapeError: boolean }> {
  const { backend } = ctx;
  const deviceId = backend.deviceOf(nodeName);
  let stats: DeviceStats | undefined;
  let scrapeError = false;
  const provider = backend.providerOf(nodeName);
  if (deviceId !== undefined && provider && hasStats(provider)) {
    try {
      stats = await within(ctx, `stats of device ${deviceId}`, () => provider.getStats(deviceId));
    } catch (err) {
      if (!isNotFound(err)) {
        scrapeError = true;
        ctx.logger.warn({ err, node: nodeName, device: deviceId }, "cannot read the device's stats");
      }
    }
  }
  const summary = buildSummary({
    nodeName,
    nodeStartTime: backend.nodeStartTime(nodeName),
    stats,
    pods: backend.podsOn(nodeName),
    rates: ctx.rates,
    now: ctx.clock.now(),
  });
  return { summary, scrapeError };
}
