/**
 * Port forwarding over SPDY/3.1 (`portforward.k8s.io`), as the kubelet serves it
 * (cri/streaming/portforward/httpstream.go): one connection carries every forwarded connection of
 * a `kubectl port-forward`; each is a pair of streams, `streamType: error` then `streamType: data`,
 * with the same `port` and `requestID` headers. Once both are open the data stream is carried to
 * the pod's port; a failure is written as text on the error stream. A pair not complete within the
 * stream creation timeout is dropped. The connection lives until the client closes it or it is idle
 * for the idle timeout.
 */

import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import type { Logger } from "pino";
import type { ForwardedConnection } from "../../provider/types.ts";
import { PORT_FORWARD_PROTOCOL, headerValues, negotiate, spdyUpgradeResponse } from "./handshake.ts";
import { SpdySession, type SpdyStream } from "./spdy-session.ts";
import { refuseUpgrade } from "./status.ts";
import type { StreamTimeouts } from "./timeouts.ts";

interface StreamPair {
  error?: SpdyStream;
  data?: SpdyStream;
  readonly timer: NodeJS.Timeout;
}

export function serveSpdyPortForward(
  req: IncomingMessage,
  socket: Duplex,
  head: Buffer,
  o: {
    readonly forward: (port: number, connection: ForwardedConnection) => Promise<void>;
    readonly logger: Logger;
    readonly timeouts: StreamTimeouts;
  },
): void {
  const offered = headerValues(req, "x-stream-protocol-version");
  const protocol = negotiate(offered, [PORT_FORWARD_PROTOCOL], PORT_FORWARD_PROTOCOL);
  if (protocol === undefined) {
    refuseUpgrade(
      socket,
      403,
      `unable to upgrade: unable to negotiate protocol: client supports [${offered.join(" ")}], server accepts [${PORT_FORWARD_PROTOCOL}]`,
    );
    return;
  }
  const log = o.logger.child({ protocol });
  const pairs = new Map<string, StreamPair>();

  socket.write(spdyUpgradeResponse(protocol));
  const session = new SpdySession(socket, head, {
    logger: log,
    idleTimeoutMs: o.timeouts.idleTimeoutMs,
    onStream: (stream) => {
      stream.reply();
      const type = stream.headers.get("streamtype");
      if (type !== "error" && type !== "data") {
        log.debug({ streamType: type }, "unexpected stream type");
        stream.reset();
        return;
      }
      // Clients before requestID (kubectl 1.5) opened error then data back to back: ids n and n+2.
      const requestId =
        stream.headers.get("requestid") ?? String(type === "error" ? stream.id : stream.id - 2);
      let pair = pairs.get(requestId);
      if (pair === undefined) {
        const timer = setTimeout(() => {
          pairs.delete(requestId);
          log.info({ requestId }, "timed out waiting for the other stream of a forwarded connection");
          pair?.error?.reset();
          pair?.data?.reset();
        }, o.timeouts.streamCreationTimeoutMs);
        pair = { timer };
        pairs.set(requestId, pair);
      }
      pair[type] = stream;
      if (pair.error !== undefined && pair.data !== undefined) {
        clearTimeout(pair.timer);
        pairs.delete(requestId);
        void carry(pair.error, pair.data);
      }
    },
  });
  session.closed.addEventListener(
    "abort",
    () => {
      for (const pair of pairs.values()) clearTimeout(pair.timer);
      pairs.clear();
    },
    { once: true },
  );

  async function carry(error: SpdyStream, data: SpdyStream): Promise<void> {
    const portHeader = data.headers.get("port") ?? "";
    const port = Number(portHeader);
    if (portHeader === "" || !/^\d+$/.test(portHeader) || port > 65535) {
      error.write(Buffer.from(`unable to parse "${portHeader}" as a port`));
    } else if (port === 0) {
      error.write(Buffer.from(`port "${portHeader}" must be > 0`));
    } else {
      const signal = AbortSignal.any([data.signal, session.closed]);
      try {
        await o.forward(port, { data: data.input, write: (chunk) => data.write(chunk), signal });
      } catch (err) {
        const message = err instanceof Error ? err.message : String(err);
        log.debug({ port, err: message }, "port forwarding failed");
        error.write(Buffer.from(`error forwarding port ${port}: ${message}`));
      }
    }
    data.input.discard();
    data.end();
    error.end();
  }
}
