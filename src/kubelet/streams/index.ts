/**
 * The streaming half of the kubelet API: `kubectl exec`, `attach` and `port-forward` as a kubelet
 * speaks them, server side, over SPDY/3.1 (what the API server sends a kubelet, translating
 * kubectl's WebSocket when needed) and over the WebSocket channel protocols (v4, v5).
 * docs/kubelet-api.md describes what users see.
 *
 * The caller (the kubelet API server) authenticates and authorizes the upgrade request, finds the
 * pod and the provider capability, and hands over the socket; from then on this module owns it
 * and always ends it: after the outcome was written, when the client goes, when streams are not
 * opened in time, or after the idle timeout.
 *
 * ```ts
 * server.on("upgrade", (req, socket, head) => {
 *   const url = new URL(req.url ?? "/", "https://kubelet");
 *   const options = streamOptions(url.searchParams); // throws InvalidStreamOptions: answer 400
 *   serveExecStream(req, socket, head, options,
 *     (io) => provider.execInContainer(pod, container, options.command, io), logger);
 * });
 * ```
 */

import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import type { Logger } from "pino";
import type { ExecIO, ForwardedConnection } from "../../provider/types.ts";
import type { StreamOptions } from "./exec-run.ts";
import { isSpdyRequest, isWebSocketRequest } from "./handshake.ts";
import { serveSpdyExec } from "./spdy-exec.ts";
import { serveSpdyPortForward } from "./spdy-portforward.ts";
import { refuseUpgrade } from "./status.ts";
import { DEFAULT_STREAM_TIMEOUTS, type StreamTimeouts } from "./timeouts.ts";
import { serveWebSocketExec, serveWebSocketPortForward } from "./websocket.ts";

export type { StreamOptions } from "./exec-run.ts";
export { refuseUpgrade } from "./status.ts";
export { DEFAULT_STREAM_TIMEOUTS, type StreamTimeouts } from "./timeouts.ts";

/** The query asked for something the kubelet refuses with 400 (the message says what). */
export class InvalidStreamOptions extends Error {
  constructor(message: string) {
    super(message);
    this.name = "InvalidStreamOptions";
  }
}

/**
 * One of the kubelet's flags: the API server names them `input`, `output`, `error` and `tty`
 * (k8s.io/api/core/v1 ExecStdinParam etc.) with the value "1"; clients calling the kubelet API
 * directly often use the API server's own names (`stdin`, `stdout`, `stderr`) and "true". Accept
 * both spellings of both.
 */
const flag = (query: URLSearchParams, ...names: string[]) =>
  names.some((name) => {
    const value = query.get(name);
    return value === "1" || value === "true";
  });

/**
 * The kubelet's query parameters (`input`/`stdin`, `output`/`stdout`, `error`/`stderr`, `tty`,
 * each "1" or "true"; `command` repeated). As the kubelet does (remotecommand.NewOptions), `tty`
 * drops stderr (a terminal merges it into stdout), and asking for none of stdin, stdout and stderr
 * throws {@link InvalidStreamOptions}. `command` may be empty (attach has none).
 */
export function streamOptions(
  query: URLSearchParams,
): StreamOptions & { readonly command: readonly string[] } {
  const tty = flag(query, "tty");
  const stdin = flag(query, "input", "stdin");
  const stdout = flag(query, "output", "stdout");
  const stderr = flag(query, "error", "stderr") && !tty;
  if (!stdin && !stdout && !stderr) {
    throw new InvalidStreamOptions("you must specify at least 1 of stdin, stdout, stderr");
  }
  return { stdin, stdout, stderr, tty, command: query.getAll("command") };
}

/**
 * The `port` query parameters of a port-forward request (repeated, or comma-separated), as the
 * kubelet reads them for WebSocket port forwarding; throws {@link InvalidStreamOptions}.
 */
export function portForwardPorts(query: URLSearchParams): number[] {
  return query
    .getAll("port")
    .flatMap((value) => value.split(","))
    .map((value) => {
      const port = Number(value);
      if (!/^\d+$/.test(value) || port > 65535) {
        throw new InvalidStreamOptions(`unable to parse "${value}" as a port`);
      }
      if (port < 1) throw new InvalidStreamOptions(`port "${value}" must be > 0`);
      return port;
    });
}

/**
 * Answers an exec/attach upgrade request (SPDY/3.1, or WebSocket v4/v5.channel.k8s.io, chosen
 * from its headers), runs `run` with the client's streams as ExecIO, then writes the outcome on the
 * error channel (Success; NonZeroExitCode with the exit code; Failure with the message of a thrown
 * error) and closes. Returns at once; never throws. A request that is neither upgrade gets 400.
 * `timeouts` defaults to the kubelet's (4 h idle, 30 s to open the streams).
 */
export function serveExecStream(
  req: IncomingMessage,
  socket: Duplex,
  head: Buffer,
  options: StreamOptions,
  run: (io: ExecIO) => Promise<{ readonly exitCode?: number }>,
  logger: Logger,
  timeouts: StreamTimeouts = DEFAULT_STREAM_TIMEOUTS,
): void {
  // A terminal has no separate stderr (remotecommand.NewOptions drops it the same way).
  const normalized: StreamOptions = { ...options, stderr: options.stderr && !options.tty };
  const o = { options: normalized, run, logger, timeouts };
  if (isWebSocketRequest(req)) serveWebSocketExec(req, socket, head, o);
  else if (isSpdyRequest(req)) serveSpdyExec(req, socket, head, o);
  else refuseUpgrade(socket, 400, "unable to upgrade: missing upgrade headers in request");
}

/**
 * Port forwarding over SPDY (and WebSocket portforward.k8s.io / v4.channel.k8s.io where feasible).
 * Over SPDY each forwarded connection names its port in its stream headers and `ports` is not
 * consulted (as in the kubelet); over WebSocket `ports` (see {@link portForwardPorts}) are the
 * ports to carry, one connection each, and must not be empty. `forward` is called once per
 * connection; a rejection is written to the client as that connection's error.
 */
export function servePortForward(
  req: IncomingMessage,
  socket: Duplex,
  head: Buffer,
  ports: readonly number[],
  forward: (port: number, connection: ForwardedConnection) => Promise<void>,
  logger: Logger,
  timeouts: StreamTimeouts = DEFAULT_STREAM_TIMEOUTS,
): void {
  if (isWebSocketRequest(req))
    serveWebSocketPortForward(req, socket, head, { ports, forward, logger, timeouts });
  else if (isSpdyRequest(req)) serveSpdyPortForward(req, socket, head, { forward, logger, timeouts });
  else refuseUpgrade(socket, 400, "unable to upgrade: missing upgrade headers in request");
}
