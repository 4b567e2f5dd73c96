/**
 * The HTTP endpoint devices poll (protocol.ts), on node:http. It only parses and routes: what a
 * sync means is the provider's `sync` callback.
 *
 *   const server = await listenForDevices({ host: "127.0.0.1", port: 0, logger, sync });
 *   server.url;            // http://127.0.0.1:41234
 *   await server.close();
 *
 * Plain HTTP, no device authentication: enough on a loopback or a trusted network for an example.
 * A real provider serves TLS and checks a per-device credential before believing the `{id}`.
 */
import { createServer, type IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import type { ProviderContext } from "devicelet/provider";
import type { SyncRequest, SyncResponse } from "./protocol.ts";

/** Largest request body accepted: a report of a few hundred pods fits many times over. */
const MAX_BODY_BYTES = 1024 * 1024;

export interface DeviceSync {
  /** The device's answer, or undefined to refuse it (403: not in `devices.allow`). */
  (deviceId: string, request: SyncRequest, remoteAddress: string): Promise<SyncResponse | undefined>;
}

export interface SyncServer {
  /** `http://host:port`, with the port the system chose when asked for 0. */
  readonly url: string;
  /** Stops accepting and drops open connections; resolves once the requests being handled are. */
  close(): Promise<void>;
}

export async function listenForDevices(o: {
  readonly host: string;
  readonly port: number;
  readonly logger: ProviderContext["logger"];
  readonly sync: DeviceSync;
}): Promise<SyncServer> {
  const handling = new Set<Promise<void>>();
  const server = createServer((req, res) => {
    const handled = answer(req, o.sync)
      .catch((err: unknown): Reply => {
        o.logger.error({ err, url: req.url }, "device sync failed");
        return [500, { error: "internal error" }];
      })
      .then(([code, body]) => {
        // The connection may be gone (the device timed out, close() dropped it): nothing to send to.
        if (!res.destroyed)
          res.writeHead(code, { "content-type": "application/json" }).end(JSON.stringify(body));
      })
      .finally(() => handling.delete(handled));
    handling.add(handled);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(o.port, o.host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  const host = o.host.includes(":") ? `[${o.host}]` : o.host;
  return {
    url: `http://${host}:${port}`,
    close: async () => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      // Devices keep their connections alive between polls; close() alone would wait for them.
      server.closeAllConnections();
      await Promise.all([closed, ...handling]);
    },
  };
}

type Reply = [code: number, body: unknown];

async function answer(req: IncomingMessage, sync: DeviceSync): Promise<Reply> {
  const match = /^\/v1\/devices\/([^/]+)\/sync$/.exec(new URL(req.url ?? "/", "http://device").pathname);
  if (!match?.[1]) return [404, { error: "not found" }];
  if (req.method !== "POST") return [405, { error: "use POST" }];
  const body = await readBody(req);
  if (body === undefined) return [413, { error: `body over ${MAX_BODY_BYTES} bytes` }];
  let request: SyncRequest;
  try {
    request = JSON.parse(body) as SyncRequest;
  } catch {
    return [400, { error: "body is not JSON" }];
  }
  if (typeof request.device !== "object" || !Array.isArray(request.pods))
    return [400, { error: "expected { device, pods }" }];
  const deviceId = decodeURIComponent(match[1]);
  const response = await sync(deviceId, request, req.socket.remoteAddress ?? "");
  if (!response) return [403, { error: `device ${deviceId} is not allowed` }];
  return [200, response];
}

/** The body as text, or undefined when it is larger than {@link MAX_BODY_BYTES}. */
async function readBody(req: IncomingMessage): Promise<string | undefined> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) return undefined;
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString("utf8");
}
