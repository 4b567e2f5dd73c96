/**
 * One listening port per device node, from the configured range `port` .. `port + portCount - 1`
 * (docs/kubelet-api.md, "How the API server reaches devicelet"). The node a request is for is the
 * one that owns the local port it arrived on, so metrics-server, which scrapes `address:port` with
 * no node name, and the API server's node proxy both reach the right node.
 *
 * A node keeps the port its Node already advertises when that port is free, so a restart does not
 * move it; otherwise it gets the lowest free port. A port another process holds (EADDRINUSE) is
 * skipped, so several devicelets on one machine share a range without clashing. With `port: 0`
 * every node gets a port the operating system picks (tests). When the range is used up, `assign`
 * answers 0 (the node is registered all the same and advertises port 0, which no client can
 * reach), warns once and calls `onExhausted`; the next `assign` for that node tries again.
 *
 *   const ports = new KubeletPorts({ bindAddress: "10.0.0.5", port: 10250, portCount: 1000,
 *     createServer: () => https.createServer(...), logger });
 *   const port = await ports.assign("gw-1", advertisedPort);   // bound and listening
 *   ports.nodeAt(req.socket.localPort);                          // "gw-1"
 *   await ports.release("gw-1");                                 // node deleted: port freed
 */
import type { Server, Socket } from "node:net";
import type { Logger } from "pino";
import { systemClock, type Clock } from "../base/clock.ts";

export interface KubeletPortsOptions<S extends Server = Server> {
  /** Address the servers listen on. */
  readonly bindAddress: string;
  /** First port of the range; 0: any free port, chosen by the operating system. */
  readonly port: number;
  /** How many ports the range has (ignored when `port` is 0). */
  readonly portCount: number;
  /** A new server, not yet listening, for one node; called again after a failed bind. */
  readonly createServer: (nodeName: string) => S;
  readonly logger: Logger;
  /** Called once when a node gets no port because the range is used up (a Warning Event). */
  readonly onExhausted?: (nodeName: string, message: string) => void;
  /** Times how long a full range is believed full; default the system clock. */
  readonly clock?: Clock;
}

/**
 * After a scan found no free port, nodes asking again get 0 at once for this long unless a port
 * was released meanwhile: thousands of nodes without a port, each asking at every heartbeat, must
 * not each try to bind the whole range. Ports another process frees are found after this.
 */
export const FULL_RANGE_RECHECK_MS = 30_000;

interface Bound<S> {
  readonly port: number;
  readonly server: S;
}

/** Bind errors that mean "this port, not the others": try the next one. */
const SKIPPABLE = new Set(["EADDRINUSE", "EACCES"]);

export class KubeletPorts<S extends Server = Server> {
  readonly #o: KubeletPortsOptions<S>;
  readonly #byNode = new Map<string, Bound<S>>();
  readonly #byPort = new Map<number, string>();
  readonly #exhausted = new Set<string>();
  /** Assignments run one at a time, so two nodes never race for the same port. */
  #turn: Promise<unknown> = Promise.resolve();
  #closed = false;
  /** Ports released so far, and when a scan last found none free (with that count then). */
  #releases = 0;
  #fullSince: { at: number; releases: number } | undefined;

  constructor(options: KubeletPortsOptions<S>) {
    this.#o = options;
  }

  /**
   * The node's port, binding a server for it on first call: `preferred` (the port its Node
   * advertises) when it is in the range and free, else the lowest free one. Resolves with 0 when
   * no port can be bound; never rejects.
   */
  assign(nodeName: string, preferred?: number): Promise<number> {
    const next = this.#turn.then(() => this.#assign(nodeName, preferred));
    this.#turn = next.catch(() => undefined);
    return next;
  }

  /** The node's port, if it has one. */
  portOf(nodeName: string): number | undefined {
    return this.#byNode.get(nodeName)?.port;
  }

  /** The node that owns `localPort`, if any. */
  nodeAt(localPort: number | undefined): string | undefined {
    return localPort === undefined ? undefined : this.#byPort.get(localPort);
  }

  /** Every listening server (to rotate their certificate, or to close them). */
  servers(): S[] {
    return [...this.#byNode.values()].map((b) => b.server);
  }

  /** Closes the node's server, ending its open connections, and frees its port. */
  async release(nodeName: string): Promise<void> {
    this.#exhausted.delete(nodeName);
    const bound = this.#byNode.get(nodeName);
    if (!bound) return;
    this.#byNode.delete(nodeName);
    this.#byPort.delete(bound.port);
    this.#releases++;
    await closeServer(bound.server);
    this.#o.logger.info({ node: nodeName, port: bound.port }, "kubelet API port released");
  }

  /** Closes every server; `assign` answers 0 from now on. */
  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all([...this.#byNode.keys()].map((n) => this.release(n)));
  }

  async #assign(nodeName: string, preferred: number | undefined): Promise<number> {
    const held = this.#byNode.get(nodeName);
    if (held) return held.port;
    if (this.#closed) return 0;
    const clock = this.#o.clock ?? systemClock;
    const full = this.#fullSince;
    if (full && full.releases === this.#releases && clock.now() - full.at < FULL_RANGE_RECHECK_MS) {
      return this.#noPort(nodeName, undefined);
    }
    let lastError: NodeJS.ErrnoException | undefined;
    for (const port of this.#candidates(preferred)) {
      const server = this.#o.createServer(nodeName);
      trackConnections(server);
      const error = await listen(server, this.#o.bindAddress, port);
      if (error) {
        server.close(); // not listening: tells whoever made it that it is done with
        lastError = error;
        if (SKIPPABLE.has(error.code ?? "")) continue;
        break; // an address not on this machine, say: no other port will do better
      }
      const address = server.address();
      const actual = typeof address === "object" && address ? address.port : port;
      this.#byNode.set(nodeName, { port: actual, server });
      this.#byPort.set(actual, nodeName);
      this.#fullSince = undefined;
      if (this.#exhausted.delete(nodeName)) {
        this.#o.logger.info({ node: nodeName, port: actual }, "kubelet API port found after all");
      }
      return actual;
    }
    // Only a range that is really used up counts as full (not an address that cannot be bound).
    if (!lastError || SKIPPABLE.has(lastError.code ?? "")) {
      this.#fullSince = { at: clock.now(), releases: this.#releases };
    }
    return this.#noPort(nodeName, lastError);
  }

  /** 0, with a warning and the `onExhausted` callback the first time for this node. */
  #noPort(nodeName: string, lastError: NodeJS.ErrnoException | undefined): number {
    if (!this.#exhausted.has(nodeName)) {
      this.#exhausted.add(nodeName);
      const { port, portCount, bindAddress } = this.#o;
      const why = lastError ? `: ${lastError.message}` : "";
      const message =
        `no kubelet API port for node ${nodeName}: none of ${bindAddress}:${port}..${port + portCount - 1} ` +
        `could be bound${why}; the node advertises port 0 (no logs, exec or metrics) until one is free ` +
        "(raise kubelet.portCount)";
      this.#o.logger.warn({ node: nodeName, err: lastError }, message);
      this.#o.onExhausted?.(nodeName, message);
    }
    return 0;
  }

  /** Ports to try, in order: the preferred one when usable, then the range from its start. */
  *#candidates(preferred: number | undefined): Generator<number> {
    const { port, portCount } = this.#o;
    const free = (p: number) => !this.#byPort.has(p);
    const inRange = (p: number) => (port === 0 ? p > 0 && p <= 65535 : p >= port && p < port + portCount);
    if (preferred !== undefined && Number.isInteger(preferred) && inRange(preferred) && free(preferred)) {
      yield preferred;
    }
    if (port === 0) {
      yield 0;
      return;
    }
    for (let p = port; p < port + portCount && p <= 65535; p++) if (p !== preferred && free(p)) yield p;
  }
}

/** Starts `server` listening; resolves with the bind error instead of throwing it. */
function listen(server: Server, host: string, port: number): Promise<NodeJS.ErrnoException | undefined> {
  return new Promise((resolve) => {
    const onError = (err: NodeJS.ErrnoException) => {
      server.off("listening", onListening);
      resolve(err);
    };
    const onListening = () => {
      server.off("error", onError);
      resolve(undefined);
    };
    server.once("error", onError);
    server.once("listening", onListening);
    server.listen({ host, port, exclusive: true });
  });
}

/** The connections each server has open, upgraded ones (exec streams) included. */
const connections = new WeakMap<Server, Set<Socket>>();

function trackConnections(server: Server): void {
  const open = new Set<Socket>();
  connections.set(server, open);
  server.on("connection", (socket: Socket) => {
    open.add(socket);
    socket.once("close", () => open.delete(socket));
  });
}

/** Stops accepting, ends the connections still open (streams, keep-alive) and waits for the close. */
async function closeServer(server: Server): Promise<void> {
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  for (const socket of connections.get(server) ?? []) socket.destroy();
  await closed;
}
