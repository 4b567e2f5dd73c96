/**
 * The Prometheus endpoint: plain HTTP on a port of its own (`metrics.port`, default 8080), apart
 * from the health and kubelet API ports. `GET /metrics` (and `HEAD`) answers the registry in the
 * Prometheus text format; any other path is 404, any other method on `/metrics` 405.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Logger } from "pino";
import { servePlain } from "../base/plain-server.ts";
import type { Registry } from "prom-client";

export interface MetricsServerOptions {
  /** 0: a port the operating system picks (tests). */
  readonly port: number;
  readonly bindAddress: string;
  readonly registry: Registry;
  readonly logger: Logger;
}

export interface MetricsServer {
  /** Where the endpoint is, e.g. `http://0.0.0.0:8080/metrics` (the bound port, also when 0 was asked). */
  readonly url: string;
  readonly port: number;
  /** Stops listening and ends open connections; resolves once the server is closed. */
  close(): Promise<void>;
}

/** Listens and resolves once bound; rejects when the port cannot be bound (in use, no such address). */
export async function startMetricsServer(options: MetricsServerOptions): Promise<MetricsServer> {
  const served = await servePlain((req, res) => {
    void answer(req, res, options);
  }, options);
  const url = `${served.baseUrl}/metrics`;
  options.logger.info({ url }, `metrics on ${url}`);
  return { url, port: served.port, close: () => served.close() };
}

async function answer(req: IncomingMessage, res: ServerResponse, options: MetricsServerOptions) {
  const path = new URL(req.url ?? "/", "http://metrics").pathname;
  if (path !== "/metrics") {
    reply(req, res, 404, "text/plain; charset=utf-8", "not found\n");
    return;
  }
  if (req.method !== "GET" && req.method !== "HEAD") {
    res.setHeader("Allow", "GET, HEAD");
    reply(req, res, 405, "text/plain; charset=utf-8", "method not allowed\n");
    return;
  }
  try {
    const body = await options.registry.metrics();
    reply(req, res, 200, options.registry.contentType, body);
  } catch (err) {
    options.logger.warn({ err }, "collecting metrics failed");
    reply(req, res, 500, "text/plain; charset=utf-8", "collecting metrics failed\n");
  }
}

function reply(req: IncomingMessage, res: ServerResponse, status: number, type: string, body: string) {
  res.writeHead(status, {
    "Content-Type": type,
    "Content-Length": Buffer.byteLength(body),
    "Cache-Control": "no-store",
  });
  res.end(req.method === "HEAD" ? undefined : body);
}
