/**
 * The kubelet API server: one express handler behind one HTTPS server per node port
 * (ports.ts), every server with the same serving certificate and client CA. The node a request is
 * for is the one that owns the local port it arrived on (docs/kubelet-api.md, "How the API server
 * reaches devicelet").
 *
 * Every request, upgrades included, is authenticated and authorized first (`KubeletAuthenticator`,
 * auth.ts: client certificate or bearer token, then a SubjectAccessReview on the node); a refusal
 * is a 401 or 403 with a Status body. TLS asks for a client certificate but does not require one
 * (`rejectUnauthorized: false`): a caller with a bearer token has none, and the authenticator
 * decides.
 *
 * Ports are bound when nodes register, which may be long before the first certificate exists (a
 * CSR waits for approval); until then every connection is closed at once, so a client sees a
 * refused connection rather than a handshake that hangs. A new certificate (rotation) is put into
 * every server with `setSecureContext`: new connections use it, open ones keep theirs.
 *
 *   const server = new KubeletServer({ ports: { bindAddress, port, portCount }, certificates, clientCA,
 *     authenticator, backend, logger });
 *   server.start(signal);                     // does not wait for the certificate
 *   await server.ports.assign("gw-1", 10250); // node controller, at registration
 *   await server.close();
 */
import https from "node:https";
import type { Socket } from "node:net";
import express, { type NextFunction, type Request, type Response } from "express";
import type { Logger } from "pino";
import { systemClock, type Clock } from "../base/clock.ts";
import type { KubeletAuthenticator } from "./auth.ts";
import { KubeletPorts, type KubeletPortsOptions } from "./ports.ts";
import { containerLogs } from "./routes-logs.ts";
import { handleUpgrade, streamTarget } from "./routes-streams.ts";
import {
  kubeletRoutes,
  providerErrorCode,
  sendStatus,
  type KubeletBackend,
  type RouteContext,
} from "./routes.ts";
import { CpuRates } from "./summary.ts";
import type { ServingCertificate, ServingCertificateSource } from "./tls.ts";

export interface KubeletServerOptions {
  readonly ports: Omit<KubeletPortsOptions, "createServer" | "logger" | "clock">;
  readonly certificates: ServingCertificateSource;
  /** PEM of the CA client certificates must chain to. */
  readonly clientCA: string;
  readonly authenticator: KubeletAuthenticator;
  readonly backend: KubeletBackend;
  readonly logger: Logger;
  readonly clock?: Clock;
}

export class KubeletServer {
  readonly ports: KubeletPorts<https.Server>;
  readonly #o: KubeletServerOptions;
  readonly #log: Logger;
  readonly #app: express.Express;
  readonly #context: RouteContext;
  /** Every server made, bound or still binding, so none misses a certificate that comes meanwhile. */
  readonly #servers = new Set<https.Server>();

  constructor(options: KubeletServerOptions) {
    this.#o = options;
    this.#log = options.logger;
    this.#context = {
      backend: options.backend,
      logger: this.#log,
      clock: options.clock ?? systemClock,
      rates: new CpuRates(),
    };
    this.#app = kubeletApp({
      ...this.#context,
      authenticator: options.authenticator,
      nodeAt: (p) => this.ports.nodeAt(p),
    });
    this.ports = new KubeletPorts({
      ...options.ports,
      clock: this.#context.clock,
      logger: this.#log,
      createServer: () => this.#createServer(),
    });
  }

  /**
   * Starts obtaining the serving certificate and keeping it fresh, in the background: resolves at
   * once. Connections are accepted from the first certificate on.
   */
  start(signal: AbortSignal): void {
    const { certificates } = this.#o;
    // The first certificate and every rotation: new connections use it, open ones keep theirs.
    certificates.onChange((cert) => {
      for (const server of this.#servers) server.setSecureContext(this.#tls(cert));
      this.#log.info(
        { notAfter: cert.notAfter, nodes: this.ports.servers().length },
        "kubelet API serving certificate in use",
      );
    });
    certificates.start(signal).catch((err: unknown) => {
      if (!signal.aborted) {
        this.#log.error(
          { err },
          "kubelet API has no serving certificate: logs, exec and metrics are unavailable",
        );
      }
    });
  }

  /** Closes every node's server and ends the connections and streams still open. */
  async close(): Promise<void> {
    await this.ports.close();
  }

  #tls(cert: ServingCertificate) {
    return { cert: cert.cert, key: cert.key, ca: this.#o.clientCA };
  }

  #createServer(): https.Server {
    const cert = this.#o.certificates.current();
    const server = https.createServer(
      {
        ...(cert ? this.#tls(cert) : { ca: this.#o.clientCA }),
        requestCert: true,
        rejectUnauthorized: false,
      },
      this.#app,
    );
    this.#servers.add(server);
    server.once("close", () => this.#servers.delete(server));
    // No certificate yet: close the connection rather than fail a handshake with no certificate.
    server.on("connection", (socket: Socket) => {
      if (!this.#o.certificates.current()) socket.destroy();
    });
    server.on("tlsClientError", (err: Error) => this.#log.debug({ err }, "kubelet API TLS handshake failed"));
    server.on("upgrade", (req, socket, head: Buffer) => {
      void handleUpgrade(
        { ...this.#context, authenticator: this.#o.authenticator, nodeAt: (p) => this.ports.nodeAt(p) },
        req,
        socket,
        head,
      );
    });
    return server;
  }
}

/**
 * The express application every node server shares: node from the local port, then
 * authentication, then the routes; anything else 404. Exported for tests (any server will do).
 */
export function kubeletApp(
  ctx: RouteContext & {
    readonly authenticator: KubeletAuthenticator;
    readonly nodeAt: (localPort: number | undefined) => string | undefined;
  },
): express.Express {
  const app = express();
  app.disable("x-powered-by");
  app.disable("etag");
  app.use((req: Request, res: Response, next: NextFunction) => {
    const node = ctx.nodeAt(req.socket.localPort);
    if (node === undefined) {
      sendStatus(res, 404, "this port serves no node any more");
      return;
    }
    res.locals.node = node;
    next();
  });
  app.use(async (req: Request, res: Response, next: NextFunction) => {
    const decision = await ctx.authenticator.check(req, res.locals.node as string);
    if (!decision.allowed) {
      sendStatus(res, decision.status, decision.reason);
      return;
    }
    next();
  });
  app.use(kubeletRoutes(ctx));
  app.get("/containerLogs/:namespace/:pod/:container", (req, res) => containerLogs(ctx, req, res));
  // exec, attach and portForward are upgrades (server.ts 'upgrade'); a plain request cannot stream.
  app.all(/^\/(exec|attach|portForward)\//, (req, res) => {
    if (!streamTarget(req.path)) {
      sendStatus(res, 404, `${req.path} not found`);
      return;
    }
    sendStatus(
      res,
      400,
      "Upgrade request required: exec, attach and portForward speak SPDY/3.1 or WebSocket",
    );
  });
  app.use((req: Request, res: Response) => {
    sendStatus(res, 404, `${req.path} not found`);
  });
  // Express 5 passes a rejected handler here. Headers already out (a log stream): end the body.
  app.use((err: unknown, req: Request, res: Response, _next: NextFunction) => {
    const code = providerErrorCode(err);
    if (code === 500) ctx.logger.error({ err, path: req.path }, "kubelet API request failed");
    if (res.headersSent) {
      res.end();
      return;
    }
    sendStatus(res, code, err instanceof Error ? err.message : String(err));
  });
  return app;
}
