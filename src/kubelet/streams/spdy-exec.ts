/**
 * exec and attach over SPDY/3.1, as the kubelet serves them (remotecommand/httpstream.go): the
 * client opens one stream per channel, tagged with a `streamType` header (error, stdin, stdout,
 * stderr, resize); the server replies to each and starts once the expected set is open, or closes
 * the connection when it is not complete within the stream creation timeout (30 s by default).
 * Protocol v4 (and v5, the same over SPDY) writes a JSON Status on the error stream; v1 to v3
 * write only a failure's message; v1 and v2 have no resize stream.
 */

import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import { runExec, type ExecServeOptions } from "./exec-run.ts";
import { SPDY_EXEC_PROTOCOLS, headerValues, negotiate, spdyUpgradeResponse } from "./handshake.ts";
import { ResizeDecoder, ResizeQueue } from "./inbound.ts";
import { SpdySession, type SpdyStream } from "./spdy-session.ts";
import { refuseUpgrade, statusBytes } from "./status.ts";

export function serveSpdyExec(req: IncomingMessage, socket: Duplex, head: Buffer, o: ExecServeOptions): void {
  const offered = headerValues(req, "x-stream-protocol-version");
  const protocol = negotiate(offered, SPDY_EXEC_PROTOCOLS, "channel.k8s.io");
  if (protocol === undefined) {
    refuseUpgrade(
      socket,
      403,
      `unable to upgrade: unable to negotiate protocol: client supports [${offered.join(" ")}], server accepts [${SPDY_EXEC_PROTOCOLS.join(" ")}]`,
    );
    return;
  }
  const json = protocol === "v4.channel.k8s.io" || protocol === "v5.channel.k8s.io";
  const resizable = json || protocol === "v3.channel.k8s.io";
  const { options, logger } = o;
  const log = logger.child({ protocol });
  const expected =
    1 + [options.stdin, options.stdout, options.stderr, options.tty && resizable].filter(Boolean).length;
  const streams = new Map<string, SpdyStream>();
  let received = 0;
  let started = false;

  socket.write(spdyUpgradeResponse(protocol));
  const session = new SpdySession(socket, head, {
    logger: log,
    idleTimeoutMs: o.timeouts.idleTimeoutMs,
    onStream: (stream) => {
      stream.reply();
      const type = stream.headers.get("streamtype") ?? "";
      if (started || !["error", "stdin", "stdout", "stderr", "resize"].includes(type)) {
        log.debug({ streamType: type }, "unexpected stream");
        return;
      }
      streams.set(type, stream);
      received++;
      if (received === expected) start();
    },
  });
  const timer = setTimeout(() => {
    log.info({ expected, received }, "timed out waiting for client to create streams");
    session.destroy("timed out waiting for client to create streams");
  }, o.timeouts.streamCreationTimeoutMs);
  session.closed.addEventListener("abort", () => clearTimeout(timer), { once: true });

  function start(): void {
    started = true;
    clearTimeout(timer);
    const stdin = options.stdin ? streams.get("stdin") : undefined;
    const stdout = options.stdout ? streams.get("stdout") : undefined;
    const stderr = options.stderr && !options.tty ? streams.get("stderr") : undefined;
    const error = streams.get("error");
    const resizeStream = options.tty ? streams.get("resize") : undefined;
    const resize = resizeStream === undefined ? undefined : new ResizeQueue();
    if (resizeStream !== undefined && resize !== undefined) void pumpResize(resizeStream, resize);
    void runExec(
      {
        ...(stdin === undefined ? {} : { stdin: stdin.input }),
        ...(resize === undefined ? {} : { resize }),
        ...(stdout === undefined ? {} : { stdout: (chunk: Uint8Array) => stdout.write(chunk) }),
        ...(stderr === undefined ? {} : { stderr: (chunk: Uint8Array) => stderr.write(chunk) }),
        backlog: () => session.backlog,
        waitForRoom: (limit) => session.waitForRoom(limit),
        gone: session.closed,
        finish: async (status) => {
          resize?.end();
          stdout?.end();
          stderr?.end();
          const bytes = status === undefined ? undefined : statusBytes(status, json);
          if (bytes !== undefined) error?.write(bytes);
          for (const stream of streams.values()) stream.end();
          await session.close();
        },
      },
      options,
      o.run,
      log,
    ).catch((err: unknown) => {
      log.error({ err }, "exec session failed");
      session.destroy("exec session failed");
    });
  }
}

async function pumpResize(stream: SpdyStream, queue: ResizeQueue): Promise<void> {
  const decoder = new ResizeDecoder();
  for await (const chunk of stream.input) for (const size of decoder.decode(chunk)) queue.push(size);
  queue.end();
}
