/**
 * exec, attach and port forwarding over WebSocket channel protocols, as the kubelet serves them
 * (k8s.io/apimachinery pkg/util/httpstream/wsstream, cri/streaming remotecommand/websocket.go and
 * portforward/websocket.go).
 *
 * Every message starts with its channel: a byte (binary protocols) or an ASCII digit followed by
 * base64 (`base64.` protocols). exec channels: 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize.
 * `v5.channel.k8s.io` adds the close signal: a client message on channel 255 whose byte names the
 * channel it finished (255 0 is the end of stdin). v4 and v5 write a JSON Status on the error
 * channel; the older protocols only a failure's message. Right after the upgrade the server sends
 * an empty message on its lowest writable channel, as the kubelet does.
 *
 * Port forwarding: the ports come from the request's `port` parameters; port i gets data channel
 * 2i and error channel 2i+1, each starting with the port as two little-endian bytes.
 */

import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import type { Logger } from "pino";
import { WebSocket, WebSocketServer, type RawData } from "ws";
import type { ForwardedConnection } from "../../provider/types.ts";
import { runExec, type ExecServeOptions } from "./exec-run.ts";
import { headerValues } from "./handshake.ts";
import { InboundBytes, ResizeDecoder, ResizeQueue } from "./inbound.ts";
import { refuseUpgrade, statusBytes, type KubeStatus } from "./status.ts";
import type { StreamTimeouts } from "./timeouts.ts";

const CLOSE_SIGNAL = 255;
const EXEC_PROTOCOLS = [
  "v5.channel.k8s.io",
  "v4.channel.k8s.io",
  "v4.base64.channel.k8s.io",
  "channel.k8s.io",
  "base64.channel.k8s.io",
] as const;
const PORT_FORWARD_PROTOCOLS = [
  "v4.channel.k8s.io",
  "v4.base64.channel.k8s.io",
  "portforward.k8s.io",
] as const;
const CLOSE_TIMEOUT_MS = 10_000;

/** One upgraded WebSocket carrying numbered channels. */
class ChannelSocket {
  readonly gone: AbortSignal;
  readonly #ws: WebSocket;
  readonly #base64: boolean;
  readonly #abort = new AbortController();
  #queued = 0;
  #roomWaiters: (() => void)[] = [];
  #idle: NodeJS.Timeout;

  constructor(ws: WebSocket, protocol: string, idleTimeoutMs: number, log: Logger) {
    this.#ws = ws;
    this.#base64 = protocol.includes("base64.");
    this.gone = this.#abort.signal;
    this.#idle = setTimeout(() => {
      log.info({ idleTimeoutMs }, "closing an idle streaming connection");
      ws.terminate();
    }, idleTimeoutMs);
    ws.on("close", () => this.#ended("the client closed the connection"));
    ws.on("error", (err) => this.#ended(`connection error: ${err.message}`));
  }

  #ended(reason: string): void {
    clearTimeout(this.#idle);
    if (!this.gone.aborted) this.#abort.abort(new Error(reason));
    for (const wake of this.#roomWaiters.splice(0)) wake();
  }

  /** Calls `handler` with each message's channel and payload. */
  onMessage(handler: (channel: number, data: Buffer) => void): void {
    this.#ws.on("message", (raw: RawData, isBinary: boolean) => {
      this.#idle.refresh();
      const bytes = Array.isArray(raw) ? Buffer.concat(raw) : Buffer.from(raw as ArrayBuffer);
      if (bytes.length === 0) return;
      if (this.#base64 && !isBinary) {
        const channel = (bytes[0] ?? 0) - 0x30;
        handler(channel, Buffer.from(bytes.subarray(1).toString("latin1"), "base64"));
      } else {
        handler(bytes[0] ?? 0, bytes.subarray(1));
      }
    });
  }

  send(channel: number, data: Uint8Array): void {
    if (this.#ws.readyState !== WebSocket.OPEN) return;
    this.#idle.refresh();
    const message = this.#base64
      ? `${String.fromCharCode(0x30 + channel)}${Buffer.from(data).toString("base64")}`
      : Buffer.concat([Buffer.from([channel]), data]);
    const size = message.length;
    this.#queued += size;
    this.#ws.send(message, { binary: !this.#base64 }, () => {
      this.#queued -= size;
      for (const wake of this.#roomWaiters.splice(0)) wake();
    });
  }

  get backlog(): number {
    return this.#queued;
  }

  async waitForRoom(limit: number): Promise<void> {
    while (this.#queued >= limit && !this.gone.aborted) {
      await new Promise<void>((resolve) => this.#roomWaiters.push(resolve));
    }
  }

  /** Stops reading from the client while input is over its bound. */
  hold(full: boolean): void {
    if (full) this.#ws.pause();
    else this.#ws.resume();
  }

  /** Sends a normal close and waits for the socket to close (at most ten seconds). */
  async close(): Promise<void> {
    if (this.gone.aborted) return;
    const closed = new Promise<void>((resolve) =>
      this.gone.addEventListener("abort", () => resolve(), { once: true }),
    );
    this.#ws.close(1000);
    const timer = setTimeout(() => this.#ws.terminate(), CLOSE_TIMEOUT_MS);
    await closed;
    clearTimeout(timer);
  }

  terminate(): void {
    this.#ws.terminate();
  }
}

/** Accepts the upgrade with the first offered protocol the server speaks, or refuses it. */
function upgrade(
  req: IncomingMessage,
  socket: Duplex,
  head: Buffer,
  accepted: readonly string[],
  onOpen: (ws: WebSocket, protocol: string) => void,
): void {
  const offered = headerValues(req, "sec-websocket-protocol");
  const protocol = offered.length === 0 ? "" : offered.find((p) => accepted.includes(p));
  if (protocol === undefined) {
    refuseUpgrade(
      socket,
      400,
      `requested protocol(s) are not supported: [${offered.join(" ")}]; supports [${accepted.join(" ")}]`,
    );
    return;
  }
  const server = new WebSocketServer({
    noServer: true,
    perMessageDeflate: false,
    maxPayload: 16 << 20,
    handleProtocols: () => (protocol === "" ? false : protocol),
  });
  server.handleUpgrade(req, socket, head, (ws) => {
    server.close();
    onOpen(ws, protocol);
  });
}

export function serveWebSocketExec(
  req: IncomingMessage,
  socket: Duplex,
  head: Buffer,
  o: ExecServeOptions,
): void {
  const { options } = o;
  upgrade(req, socket, head, EXEC_PROTOCOLS, (ws, protocol) => {
    const log = o.logger.child({ protocol: protocol === "" ? "channel.k8s.io" : protocol });
    const channels = new ChannelSocket(ws, protocol, o.timeouts.idleTimeoutMs, log);
    const json = protocol.startsWith("v4.") || protocol.startsWith("v5.");
    const v5 = protocol.startsWith("v5.");
    const stdin = options.stdin ? new InboundBytes({ full: (full) => channels.hold(full) }) : undefined;
    const resize = options.tty ? new ResizeQueue() : undefined;
    const resizeDecoder = new ResizeDecoder();
    channels.onMessage((channel, data) => {
      if (channel === 0) stdin?.push(data);
      else if (channel === 4 && resize !== undefined)
        for (const size of resizeDecoder.decode(data)) resize.push(size);
      else if (channel === CLOSE_SIGNAL && v5) {
        if (data[0] === 0) stdin?.end();
        else if (data[0] === 4) resize?.end();
      }
    });
    channels.send(options.stdout ? 1 : options.stderr && !options.tty ? 2 : 3, new Uint8Array(0));
    void runExec(
      {
        ...(stdin === undefined ? {} : { stdin }),
        ...(resize === undefined ? {} : { resize }),
        stdout: (chunk) => channels.send(1, chunk),
        stderr: (chunk) => channels.send(2, chunk),
        backlog: () => channels.backlog,
        waitForRoom: (limit) => channels.waitForRoom(limit),
        gone: channels.gone,
        finish: async (status: KubeStatus | undefined) => {
          resize?.end();
          const bytes = status === undefined ? undefined : statusBytes(status, json);
          if (bytes !== undefined) channels.send(3, bytes);
          await channels.close();
        },
      },
      options,
      o.run,
      log,
    ).catch((err: unknown) => {
      log.error({ err }, "exec session failed");
      channels.terminate();
    });
  });
}

export function serveWebSocketPortForward(
  req: IncomingMessage,
  socket: Duplex,
  head: Buffer,
  o: {
    readonly ports: readonly number[];
    readonly forward: (port: number, connection: ForwardedConnection) => Promise<void>;
    readonly logger: Logger;
    readonly timeouts: StreamTimeouts;
  },
): void {
  const { ports } = o;
  if (ports.length === 0) {
    refuseUpgrade(socket, 400, 'query parameter "port" is required');
    return;
  }
  upgrade(req, socket, head, PORT_FORWARD_PROTOCOLS, (ws, protocol) => {
    const log = o.logger.child({ protocol: protocol === "" ? "channel.k8s.io" : protocol });
    const channels = new ChannelSocket(ws, protocol, o.timeouts.idleTimeoutMs, log);
    const inputs = ports.map(() => new InboundBytes({ full: (full) => channels.hold(full) }));
    channels.onMessage((channel, data) => {
      if (channel % 2 === 0) inputs[channel / 2]?.push(data);
    });
    const forwards = ports.map(async (port, i) => {
      const portBytes = Buffer.alloc(2);
      portBytes.writeUInt16LE(port, 0);
      channels.send(2 * i, portBytes);
      channels.send(2 * i + 1, portBytes);
      const input = inputs[i] ?? new InboundBytes();
      try {
        await o.forward(port, {
          data: input,
          write: (chunk) => channels.send(2 * i, chunk),
          signal: channels.gone,
        });
      } catch (err) {
        const message = err instanceof Error ? err.message : String(err);
        channels.send(2 * i + 1, Buffer.from(`error forwarding port ${port}: ${message}`));
      }
    });
    channels.gone.addEventListener("abort", () => inputs.forEach((input) => input.end()), { once: true });
    void Promise.all(forwards).then(() => channels.close());
  });
}
