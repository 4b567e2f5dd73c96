/**
 * A plain-HTTP server on one port for devicelet's own endpoints (`/healthz` and `/readyz`,
 * `/metrics`): bound before it resolves, and closed without waiting for the keep-alive
 * connections probes and scrapers hold open.
 *
 *   const served = await servePlain((req, res) => res.end("ok"), { port: 0, bindAddress: "127.0.0.1" });
 *   served.baseUrl;       // http://127.0.0.1:<port>
 *   await served.close();
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

// From the built-in module itself, not an ES import: importing `node:http` as a module reads every
// export, and its WebSocket, CloseEvent and MessageEvent load Node.js's own copy of undici, which
// devicelet never uses (2.3 MiB of heap in a bare Node.js process). A lint rule keeps it so.
const { createServer } = process.getBuiltinModule("node:http");

export interface PlainServer {
  /** `http://<bindAddress>:<port>`, IPv6 addresses in brackets. */
  readonly baseUrl: string;
  /** The bound port (the one the system picked when asked for 0). */
  readonly port: number;
  close(): Promise<void>;
}

/** Listens and resolves once bound; rejects when the port cannot be bound (in use, no such address). */
export async function servePlain(
  handler: (req: IncomingMessage, res: ServerResponse) => void,
  at: { readonly port: number; readonly bindAddress: string },
): Promise<PlainServer> {
  const server = createServer(handler);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen({ port: at.port, host: at.bindAddress }, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  const host = at.bindAddress.includes(":") ? `[${at.bindAddress}]` : at.bindAddress;
  return {
    baseUrl: `http://${host}:${port}`,
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => {
          resolve();
        });
        // Idle keep-alive connections must not hold the exit.
        server.closeAllConnections();
      }),
  };
}
