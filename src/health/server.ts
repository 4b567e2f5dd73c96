/**
 * devicelet's own health endpoints, plain HTTP on a port of their own (never the kubelet API's
 * TLS ports), for the probes of the Deployment that runs devicelet:
 *
 * - `GET /healthz` answers 200 `ok` whenever the process's event loop does: a liveness probe.
 * - `GET /readyz` answers 200 `ok` when every readiness check passes, else 503 with one line per
 *   failing check (`<name>: <reason>`): a readiness probe. The engine's own check is
 *   {@link EngineReadiness}; with leader election the list also holds `leader` (src/leader/readiness.ts:
 *   ready when leading, or standing by with caches synced).
 *
 * Any other path is 404; any method but GET and HEAD is 405. Bodies are `text/plain`, short, and
 * never cached, as the Kubernetes API server's own `/healthz` and `/readyz` are.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Logger } from "pino";
import { servePlain } from "../base/plain-server.ts";

/** One named condition readiness depends on. */
export interface ReadinessCheck {
  readonly name: string;
  /** Why the condition is not met, or undefined when it is. Must be cheap and must not throw. */
  notReadyReason(): string | undefined;
}

/**
 * The engine's lifecycle as a readiness check: not ready while starting, ready once `ready()` is
 * called (nodes and pods synced, provider started), not ready again for good once `stopping()` is.
 */
export class EngineReadiness implements ReadinessCheck {
  readonly name = "engine";
  #state: "starting" | "ready" | "stopping" = "starting";

  /** Everything has started; ignored once stopping. */
  ready(): void {
    if (this.#state === "starting") this.#state = "ready";
  }

  /** Stopping has begun: readiness never comes back in this process. */
  stopping(): void {
    this.#state = "stopping";
  }

  notReadyReason(): string | undefined {
    switch (this.#state) {
      case "starting":
        return "starting: node and pod caches not synced or provider not started yet";
      case "ready":
        return undefined;
      case "stopping":
        return "stopping";
    }
  }
}

export interface HealthServerOptions {
  /** 0: a port the operating system picks (tests). */
  readonly port: number;
  readonly bindAddress: string;
  /** Read on every `/readyz` request; all must pass. */
  readonly checks: readonly ReadinessCheck[];
  readonly logger: Logger;
}

export interface HealthServer {
  /** Where the endpoints are, e.g. `http://0.0.0.0:8081` (the bound port, also when 0 was asked). */
  readonly url: string;
  readonly port: number;
  /** Stops listening and ends open connections; resolves once the server is closed. */
  close(): Promise<void>;
}

/** Listens and resolves once bound; rejects when the port cannot be bound (in use, no such address). */
export async function startHealthServer(options: HealthServerOptions): Promise<HealthServer> {
  const served = await servePlain((req, res) => {
    answer(req, res, options.checks);
  }, options);
  const url = served.baseUrl;
  options.logger.info({ url }, `health endpoints on ${url} (/healthz, /readyz)`);
  return { url, port: served.port, close: () => served.close() };
}

function answer(req: IncomingMessage, res: ServerResponse, checks: readonly ReadinessCheck[]): void {
  const path = new URL(req.url ?? "/", "http://health").pathname;
  if (path !== "/healthz" && path !== "/readyz") {
    reply(req, res, 404, "not found\n");
    return;
  }
  if (req.method !== "GET" && req.method !== "HEAD") {
    res.setHeader("Allow", "GET, HEAD");
    reply(req, res, 405, "method not allowed\n");
    return;
  }
  if (path === "/healthz") {
    reply(req, res, 200, "ok\n");
    return;
  }
  const failing: string[] = [];
  for (const check of checks) {
    const reason = check.notReadyReason();
    if (reason !== undefined) failing.push(`${check.name}: ${reason}`);
  }
  if (failing.length === 0) reply(req, res, 200, "ok\n");
  else reply(req, res, 503, `not ready\n${failing.join("\n")}\n`);
}

function reply(req: IncomingMessage, res: ServerResponse, status: number, body: string): void {
  res.writeHead(status, {
    "Content-Type": "text/plain; charset=utf-8",
    "Content-Length": Buffer.byteLength(body),
    "Cache-Control": "no-store",
  });
  res.end(req.method === "HEAD" ? undefined : body);
}
