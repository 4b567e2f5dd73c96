/**
 * How the transport reaches the API server for a {@link Kubeconfig}: ONE undici dispatcher carrying
 * the TLS material, shared by every request, and the headers that authenticate each request.
 *
 * Guarantees:
 * - an ordinary kubeconfig (token, token file, basic auth, client certificates, CA, insecure,
 *   tls-server-name, `as`) is served here without loading client-node's package index;
 * - a token file is re-read when its last read is a minute old, as client-go does for rotating
 *   service-account tokens; a failed re-read keeps the last token (and tries again a minute later);
 * - an identity with `clientNodeReason` (exec plugins, auth providers, proxies) is not for this
 *   module: `access-client-node.ts` serves it with client-node's KubeConfig, imported on first use.
 *
 *   const access = openKubeAccess(loadKubeconfig(), { clock: systemClock });
 *   const { request } = undici();
 *   await request({ origin, path }, { method: "GET", headers: await access.headers(), dispatcher: access.dispatcher });
 *   await access.close();
 */
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { createSecureContext, type ConnectionOptions } from "node:tls";
import type { Clock } from "../base/clock.ts";
import type { Kubeconfig, KubeconfigUser } from "./kubeconfig.ts";

/** An undici dispatcher (an `Agent`, client-node's or ours), as devicelet holds it: opaque. */
export interface Dispatcher {
  close(): Promise<void>;
}

export interface KubeAccess {
  /** The headers that authenticate one request; cheap unless a credential has to be re-read. */
  headers(): Promise<Record<string, string>>;
  /** The dispatcher for requests and watches of both lanes; undefined: undici's global one. */
  readonly dispatcher: Dispatcher | undefined;
  /** Closes the dispatcher's connections. */
  close(): Promise<void>;
}

export interface KubeAccessOptions {
  /** Times token-file re-reads; the system clock in production. */
  readonly clock: Clock;
}

/** How long a token read from a file is used before the file is read again (client-go: 1 minute). */
export const TOKEN_FILE_REREAD_MS = 60_000;

/**
 * Opens access for the kubeconfig's identity from its own fields; synchronous, no connection is
 * made. Throws for an identity with `clientNodeReason` (see `access-client-node.ts`).
 */
export function openKubeAccess(kubeconfig: Kubeconfig, options: KubeAccessOptions): KubeAccess {
  if (kubeconfig.clientNodeReason !== undefined)
    throw new Error(`kubeconfig ${kubeconfig.source}: ${kubeconfig.clientNodeReason}: needs client-node`);
  return new DirectAccess(kubeconfig, options.clock);
}

interface UndiciAgent {
  new (options: {
    connect: ConnectionOptions & { keepAlive?: boolean; keepAliveInitialDelay?: number };
    allowH2?: boolean;
    connections?: number;
    keepAliveTimeout?: number;
  }): Dispatcher;
}

/**
 * Requests in flight to the API server at most, per lane (the transport's own lines, `Slots` in
 * `src/base/slots.ts`, hold the rest, unbuilt). Without a cap, an API server slow to answer would
 * get a new TLS connection for every request waiting. The heartbeat lane has a cap of its own, as
 * it has a budget of its own, so pod work never holds a Lease renewal in a line: at 5,000 nodes it
 * renews 500 Leases a second, which at the second an overloaded API server takes to answer keeps
 * 500 requests in flight (5,000 kubelets would keep 5,000). The default lane carries pod work, on
 * `concurrentPods` workers (64 by default). Over HTTP/1.1 each request in flight needs a connection
 * of its own, about 85 KiB of RSS held the IDLE_CONNECTION_MS after:
 * - 256 (the first cap): a burst of 5,000 pods left 125 connections beyond the 80 the nodes'
 *   registration had opened (heap snapshots); 64 halved the RSS a settled pod leaves (3.8 to
 *   1.9 KiB), at the same pods per second.
 * - 64 still opened 25 to 70 connections in that burst. 32 mostly found enough left idle by the
 *   registration (none opened in three runs of four): RSS a pod at the burst's end 6.2 KiB
 *   against 7.8 (means of four runs each), at the same pods per second beside KWOK; 16 cost a
 *   fifth of them (`npm run bench -- throughput`, docs/performance.md). The workers past the cap
 *   wait here with their provider work done, as do the status writes of a provider with more
 *   workers (IoT Hub's, waiting on its hub's rates).
 */
export const MAX_IN_FLIGHT = { default: 32, heartbeat: 512 } as const;

/**
 * Writes of Nodes in flight at most (creates, patches of a Node and of its status), within the
 * heartbeat lane's cap. They share the lane's budget with the Lease renewals, but not its room: a
 * change that reaches every node at once (the first pods of a burst turn each node's DeviceInSync,
 * a rollout, the broker coming back) sent one write per node at once, and HTTP/1.1 opened a
 * connection for each, about 85 KiB of RSS apiece, kept for the next minute. The Lease renewals
 * keep the rest of the lane, so no node's heartbeat waits behind them.
 */
export const MAX_NODE_WRITES_IN_FLIGHT = 32;

/**
 * Both lanes share one pool of connections, of room for both caps and the watches (a handful per
 * engine, long-lived, not counted by the lanes): a request that may go never waits for a
 * connection, and a connection either lane opened serves the other once it is idle. It saves
 * connections only when the lanes' peaks come apart: in a burst of pod starts they coincide (the
 * first pods change the in-sync state of every node, about 200 node patches on the heartbeat lane
 * while pod work had the 64 in flight it was then allowed), and a pool per lane ended with about
 * as many (129 against 134, `npm run bench -- throughput`, docs/performance.md).
 */
const POOL_CONNECTIONS = MAX_IN_FLIGHT.default + MAX_IN_FLIGHT.heartbeat + 64;

/**
 * How long an idle connection to the API server is kept for the next request. undici closes one
 * after 4 s by default, so pod work that comes in bursts (a rollout, a fleet coming back) opened
 * its connections again, a TLS handshake each, with the API server at its busiest. The API server
 * keeps an idle connection 90 s (as Go's default transport does on the client side); a minute is
 * under that, so the server never closes one as a request goes out on it, and under the idle
 * timeouts of load balancers in front of it.
 */
export const IDLE_CONNECTION_MS = 60_000;

/** One answer of undici's `request`: the body must be read or destroyed to free the connection. */
export interface UndiciResponse {
  readonly statusCode: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: AsyncIterable<Buffer> & {
    text(): Promise<string>;
    destroy(): unknown;
  };
}

export interface UndiciRequestOptions {
  readonly method: string;
  readonly headers: Record<string, string>;
  readonly body?: string;
  readonly signal?: AbortSignal;
  /** undefined: undici's global dispatcher. */
  readonly dispatcher?: Dispatcher;
}

/** Where a request goes: the server's origin, and the path with its query (`/api/v1/pods?limit=1`). */
export interface RequestTarget {
  readonly origin: string;
  readonly path: string;
}

interface Undici {
  readonly Agent: UndiciAgent;
  /**
   * undici's plain request: no WHATWG Request, Response, Headers or streams per call, as `fetch`
   * builds (a third of the CPU per request, measured on loopback).
   */
  readonly request: (target: RequestTarget, options: UndiciRequestOptions) => Promise<UndiciResponse>;
}

/** undici's `request` as its module exports it: the dispatcher is `this`. */
type ApiRequest = (this: Dispatcher, options: object) => Promise<UndiciResponse>;

let loaded: Undici | undefined;

/**
 * The two parts of undici devicelet sends with: its Agent and its plain request. They come from
 * the copy client-node depends on (resolved from client-node's own location: undici is its
 * dependency, not devicelet's), so client-node's dispatchers (`access-client-node.ts`) are its own.
 * Not from the package's index, which loads all of undici (fetch, WebSocket, caches, mocks, proxy
 * agents, interceptors): 5.3 MiB of heap in a bare Node.js process where these two take 2.5. With
 * Node.js's own undici no longer loaded either (`src/base/plain-server.ts`), devicelet's heap at
 * rest fell from 23.1 to 20.0 MiB (100 mock nodes), and a burst grows the heap by half again of
 * what it holds at rest. The global dispatcher (for a client-node identity that brings none) is
 * loaded only when asked for.
 */
export function undici(): Undici {
  if (loaded) return loaded;
  const fromHere = createRequire(import.meta.url);
  const fromClientNode = createRequire(fromHere.resolve("@kubernetes/client-node"));
  const Agent = fromClientNode("undici/lib/dispatcher/agent.js") as UndiciAgent;
  const request = fromClientNode("undici/lib/api/api-request.js") as ApiRequest;
  let fallback: Dispatcher | undefined;
  const globalDispatcher = () =>
    (fallback ??= (
      fromClientNode("undici/lib/global.js") as { getGlobalDispatcher(): Dispatcher }
    ).getGlobalDispatcher());
  loaded = {
    Agent,
    request: ({ origin, path }, { dispatcher, ...options }) =>
      request.call(dispatcher ?? globalDispatcher(), { ...options, origin, path }),
  };
  return loaded;
}

/** Access from the kubeconfig's own fields: nothing but undici's Agent and a file read now and then. */
class DirectAccess implements KubeAccess {
  readonly dispatcher: Dispatcher;
  readonly #static: Record<string, string> = {};
  readonly #tokenFile: TokenFile | undefined;

  constructor(kubeconfig: Kubeconfig, clock: Clock) {
    const { cluster, user } = kubeconfig;
    // The CA, certificate and key parsed once for every connection: given as PEM,
    // each new connection parsed them again (0.5 s of CPU, 4 % of devicelet's, in a CPU profile of
    // `npm run bench -- mqtt`, whose burst opens connections).
    const tls: ConnectionOptions = {
      secureContext: createSecureContext({
        ...(cluster.caPem ? { ca: cluster.caPem } : {}),
        ...(user?.certPem ? { cert: user.certPem } : {}),
        ...(user?.keyPem ? { key: user.keyPem } : {}),
      }),
      // Left unset otherwise, so NODE_TLS_REJECT_UNAUTHORIZED applies, as with client-node.
      ...(cluster.insecureSkipTLSVerify ? { rejectUnauthorized: false } : {}),
      ...(cluster.tlsServerName ? { servername: cluster.tlsServerName } : {}),
    };
    // As client-node: keep-alive probes after 30 s (client-go's), under load balancers' idle timeouts.
    // HTTP/1.1, not HTTP/2 (undici's default since version 7): at 5,000 nodes, with the API server
    // slow to answer, Node's HTTP/2 session buffered outgoing frames without bound, 1 GB to 5 GB
    // in half a minute, with the event loop busy copying them (perf: CopyDataIntoOutgoing).
    const { Agent } = undici();
    this.dispatcher = new Agent({
      connect: { ...tls, keepAlive: true, keepAliveInitialDelay: 30_000 },
      allowH2: false,
      connections: POOL_CONNECTIONS,
      keepAliveTimeout: IDLE_CONNECTION_MS,
    });
    if (user) Object.assign(this.#static, staticHeaders(user));
    this.#tokenFile = user?.tokenFile === undefined ? undefined : new TokenFile(user.tokenFile, clock);
  }

  headers(): Promise<Record<string, string>> {
    const tokenFile = this.#tokenFile;
    if (!tokenFile) return Promise.resolve(this.#static);
    // The executor turns a failed first read into a rejection.
    return new Promise((resolve) => {
      resolve({ ...this.#static, Authorization: `Bearer ${tokenFile.read()}` });
    });
  }

  async close(): Promise<void> {
    await this.dispatcher.close();
  }
}

/** The headers of a user that do not change: impersonation, a static token or basic auth. */
function staticHeaders(user: KubeconfigUser): Record<string, string> {
  const headers: Record<string, string> = {};
  if (user.impersonate) headers["Impersonate-User"] = user.impersonate;
  if (user.token) headers.Authorization = `Bearer ${user.token}`;
  else if (user.username !== undefined)
    headers.Authorization = `Basic ${Buffer.from(`${user.username}:${user.password ?? ""}`).toString("base64")}`;
  return headers;
}

/** A bearer token kept in a file that something else rotates (the kubelet, a sidecar). */
class TokenFile {
  readonly #path: string;
  readonly #clock: Clock;
  #token: string | undefined;
  #readAt = 0;

  constructor(path: string, clock: Clock) {
    this.#path = path;
    this.#clock = clock;
  }

  /** The token; throws only when no read has ever succeeded. */
  read(): string {
    if (this.#token !== undefined && this.#clock.now() - this.#readAt < TOKEN_FILE_REREAD_MS)
      return this.#token;
    try {
      const token = readFileSync(this.#path, "utf8").trim();
      if (token === "") throw new Error("the file is empty");
      this.#token = token;
    } catch (err) {
      if (this.#token === undefined)
        throw new Error(`token-file ${this.#path}: ${(err as Error).message}`, { cause: err });
      // Keep the last token: it stays valid a while, and the next try is a minute away.
    }
    this.#readAt = this.#clock.now();
    return this.#token;
  }
}
