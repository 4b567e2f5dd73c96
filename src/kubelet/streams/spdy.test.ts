import http from "node:http";
import type net from "node:net";
import type { AddressInfo } from "node:net";
import type { Duplex } from "node:stream";
import { pino } from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { eventually } from "../../../test/support/eventually.ts";
import { SpdyClient } from "../../../test/support/spdy-client.ts";
import { unsupported } from "../../provider/errors.ts";
import type { ExecIO, ForwardedConnection, TerminalSize } from "../../provider/types.ts";
import {
  DEFAULT_STREAM_TIMEOUTS,
  servePortForward,
  serveExecStream,
  streamOptions,
  type StreamTimeouts,
} from "./index.ts";

const logger = pino({ level: "silent" });
type Run = (io: ExecIO) => Promise<{ readonly exitCode?: number }>;

const servers: http.Server[] = [];
const clients: SpdyClient[] = [];
afterEach(async () => {
  for (const c of clients.splice(0)) c.destroy();
  for (const s of servers.splice(0)) {
    s.closeAllConnections();
    await new Promise((resolve) => s.close(resolve));
  }
});

/** A plain HTTP server answering every upgrade with serveExecStream (or servePortForward). */
async function startServer(
  o: {
    run?: Run;
    forward?: (port: number, c: ForwardedConnection) => Promise<void>;
    timeouts?: StreamTimeouts;
  } = {},
) {
  const sockets: Duplex[] = [];
  const server = http.createServer((_req, res) => res.writeHead(404).end());
  server.on("upgrade", (req: http.IncomingMessage, socket: Duplex, head: Buffer) => {
    sockets.push(socket);
    const url = new URL(req.url ?? "/", "http://kubelet");
    if (url.pathname.startsWith("/portForward") && o.forward !== undefined) {
      servePortForward(req, socket, head, [], o.forward, logger, o.timeouts);
      return;
    }
    serveExecStream(
      req,
      socket,
      head,
      streamOptions(url.searchParams),
      o.run ?? (async () => ({ exitCode: 0 })),
      logger,
      o.timeouts,
    );
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { port: (server.address() as AddressInfo).port, sockets };
}

async function connect(port: number, path: string, o: { protocols?: string[]; flowControl?: number } = {}) {
  const { response, client } = await SpdyClient.connect(port, path, {
    protocols: o.protocols ?? [
      "v4.channel.k8s.io",
      "v3.channel.k8s.io",
      "v2.channel.k8s.io",
      "channel.k8s.io",
    ],
    ...(o.flowControl === undefined ? {} : { flowControl: o.flowControl }),
  });
  if (client === undefined) throw new Error(`upgrade refused: ${response.status} ${response.body}`);
  clients.push(client);
  return { response, client };
}

async function readAll(stdin: AsyncIterable<Uint8Array> | undefined): Promise<Buffer> {
  const chunks: Uint8Array[] = [];
  for await (const chunk of stdin ?? []) chunks.push(chunk);
  return Buffer.concat(chunks);
}

describe("exec over SPDY/3.1", () => {
  it("pipes stdin to the command and its output back, then reports Success and closes", async () => {
    const { port } = await startServer({
      run: async (io) => {
        const input = await readAll(io.stdin);
        io.stdout?.(Buffer.from(input.toString().toUpperCase()));
        io.stderr?.(Buffer.from("done\n"));
        return { exitCode: 0 };
      },
    });
    const { response, client } = await connect(port, "/exec/ns/pod/c?command=cat&stdin=1&stdout=1&stderr=1");
    expect(response.status).toBe(101);
    expect(response.headers["x-stream-protocol-version"]).toBe("v4.channel.k8s.io");
    expect(response.headers.upgrade).toBe("SPDY/3.1");
    const error = await client.open({ streamType: "error" });
    const stdin = await client.open({ streamType: "stdin" });
    const stdout = await client.open({ streamType: "stdout" });
    const stderr = await client.open({ streamType: "stderr" });
    stdin.write("hello ");
    stdin.write("world\n");
    stdin.end();
    await Promise.all([error.done(), stdout.done(), stderr.done()]);
    expect(stdout.text).toBe("HELLO WORLD\n");
    expect(stderr.text).toBe("done\n");
    expect(JSON.parse(error.text)).toEqual({ metadata: {}, status: "Success" });
    await client.closed;
    expect(client.goAways).toEqual([0]);
  });

  it("reports a non-zero exit code as NonZeroExitCode with the code as the ExitCode cause", async () => {
    const { port } = await startServer({ run: async () => ({ exitCode: 3 }) });
    const { client } = await connect(port, "/exec/ns/pod/c?command=false&stdout=1");
    const error = await client.open({ streamType: "error" });
    await client.open({ streamType: "stdout" });
    await error.done();
    const status = JSON.parse(error.text) as Record<string, unknown>;
    expect(status).toMatchObject({
      status: "Failure",
      reason: "NonZeroExitCode",
      details: { causes: [{ reason: "ExitCode", message: "3" }] },
    });
    expect(status.message).toMatch(/^command terminated with non-zero exit code: /);
  });

  it("reports a thrown error as a Failure with its message (a device without a terminal)", async () => {
    const { port } = await startServer({
      run: async (io) => {
        if (io.tty) throw unsupported("device gw-1 has no terminal; run without -t");
        return { exitCode: 0 };
      },
    });
    const { client } = await connect(port, "/exec/ns/pod/c?command=sh&stdin=1&stdout=1&tty=1");
    const error = await client.open({ streamType: "error" });
    await client.open({ streamType: "stdin" });
    await client.open({ streamType: "stdout" });
    await client.open({ streamType: "resize" });
    await error.done();
    expect(JSON.parse(error.text)).toMatchObject({
      status: "Failure",
      message: "device gw-1 has no terminal; run without -t",
    });
  });

  it("writes only a failure's text on the error stream for protocols before v4", async () => {
    const { port } = await startServer({ run: async () => ({ exitCode: 2 }) });
    const { response, client } = await connect(port, "/exec/ns/pod/c?command=x&stdout=1", {
      protocols: ["v3.channel.k8s.io", "v2.channel.k8s.io"],
    });
    expect(response.headers["x-stream-protocol-version"]).toBe("v3.channel.k8s.io");
    const error = await client.open({ streamType: "error" });
    await client.open({ streamType: "stdout" });
    await error.done();
    expect(error.text).toMatch(/^command terminated with non-zero exit code/);
  });

  it("delivers terminal sizes from the resize stream, however they are split", async () => {
    const sizes: TerminalSize[] = [];
    const { port } = await startServer({
      run: async (io) => {
        for await (const size of io.resize ?? []) {
          sizes.push(size);
          if (sizes.length === 2) break;
        }
        expect(io.stderr).toBeUndefined();
        return { exitCode: 0 };
      },
    });
    const { client } = await connect(port, "/exec/ns/pod/c?command=sh&stdout=1&stderr=1&tty=1");
    const error = await client.open({ streamType: "error" });
    await client.open({ streamType: "stdout" });
    const resize = await client.open({ streamType: "resize" });
    resize.write('{"Width":80,"Height":24}\n{"Width":1');
    resize.write('20,"Height":40}\n');
    await error.done();
    expect(sizes).toEqual([
      { width: 80, height: 24 },
      { width: 120, height: 40 },
    ]);
    expect(JSON.parse(error.text)).toEqual({ metadata: {}, status: "Success" });
  });

  it("aborts the run when the client goes away, and closes the server's socket", async () => {
    let aborted: (reason: unknown) => void = () => undefined;
    const abortedBy = new Promise((resolve) => (aborted = resolve));
    const { port, sockets } = await startServer({
      run: (io) =>
        // Never resolves by itself: a command that would run forever.
        new Promise(() => {
          io.signal.addEventListener("abort", () => aborted(io.signal.reason));
        }),
    });
    const { client } = await connect(port, "/exec/ns/pod/c?command=sleep&stdout=1");
    await client.open({ streamType: "error" });
    await client.open({ streamType: "stdout" });
    client.destroy();
    expect(await abortedBy).toBeInstanceOf(Error);
    const socket = sockets[0];
    await new Promise<void>((resolve) =>
      socket?.destroyed === true ? resolve() : socket?.once("close", resolve),
    );
    expect(socket?.destroyed).toBe(true);
  });

  it("ends stdin iteration at the client's half-close even with nothing sent", async () => {
    const { port } = await startServer({
      run: async (io) => ({ exitCode: (await readAll(io.stdin)).length === 0 ? 0 : 1 }),
    });
    const { client } = await connect(port, "/exec/ns/pod/c?command=cat&stdin=true&stdout=true");
    const error = await client.open({ streamType: "error" });
    const stdin = await client.open({ streamType: "stdin" });
    await client.open({ streamType: "stdout" });
    stdin.end();
    await error.done();
    expect(JSON.parse(error.text)).toEqual({ metadata: {}, status: "Success" });
  });

  it.each([
    ["a client without flow control (client-go's spdystream)", undefined, 3 << 20],
    ["a client enforcing a 16 KiB window", 16 * 1024, 1 << 20],
  ])("moves MiBs both ways with %s", async (_name, flowControl, size) => {
    const { port } = await startServer({
      run: async (io) => {
        let total = 0;
        for await (const chunk of io.stdin ?? []) {
          total += chunk.length;
          io.stdout?.(chunk);
        }
        io.stderr?.(Buffer.alloc(size, 0x61));
        return { exitCode: total === size ? 0 : 1 };
      },
    });
    const { client } = await connect(port, "/exec/ns/pod/c?command=cat&stdin=1&stdout=1&stderr=1", {
      ...(flowControl === undefined ? {} : { flowControl }),
    });
    const error = await client.open({ streamType: "error" });
    const stdin = await client.open({ streamType: "stdin" });
    const stdout = await client.open({ streamType: "stdout" });
    const stderr = await client.open({ streamType: "stderr" });
    const block = Buffer.alloc(32 * 1024, 0x62);
    for (let sent = 0; sent < size; sent += block.length) stdin.write(block);
    stdin.end();
    await Promise.all([error.done(), stdout.done(), stderr.done()]);
    expect(JSON.parse(error.text)).toEqual({ metadata: {}, status: "Success" });
    expect(stdout.size).toBe(size);
    expect(stderr.size).toBe(size);
    expect(client.windowViolations).toBe(0);
  });

  it("closes promptly when the command ended without reading a flood of stdin", async () => {
    let release: () => void = () => undefined;
    const released = new Promise<void>((resolve) => (release = resolve));
    const { port, sockets } = await startServer({
      run: async () => {
        await released;
        return { exitCode: 0 };
      },
    });
    const { client } = await connect(port, "/exec/ns/pod/c?command=x&stdin=1&stdout=1");
    const error = await client.open({ streamType: "error" });
    const stdin = await client.open({ streamType: "stdin" });
    await client.open({ streamType: "stdout" });
    // More than the server holds (1 MiB) plus what loopback buffers take: the server stops reading.
    const block = Buffer.alloc(64 * 1024, 0x63);
    for (let i = 0; i < 128; i++) stdin.write(block);
    const server = sockets[0] as net.Socket;
    await eventually(() => expect(server.isPaused()).toBe(true), { timeoutMs: 5000, intervalMs: 20 });
    release();
    await error.done();
    expect(JSON.parse(error.text)).toEqual({ metadata: {}, status: "Success" });
    // Input nobody reads is dropped, so the server reads its socket again and sees the client
    // close, rather than holding the socket until its close timeout (10 s).
    await new Promise<void>((resolve) => (server.destroyed ? resolve() : server.once("close", resolve)));
  }, 8_000);

  it("waits for a window update before sending more than the window", async () => {
    const { port } = await startServer({
      run: async (io) => {
        io.stdout?.(Buffer.alloc(100 * 1024, 0x61));
        return { exitCode: 0 };
      },
    });
    const { client } = await connect(port, "/exec/ns/pod/c?command=x&stdout=1", { flowControl: 8 * 1024 });
    client.holdWindow = true;
    const error = await client.open({ streamType: "error" });
    const stdout = await client.open({ streamType: "stdout" });
    await error.done();
    // The error stream finished: the server is only waiting for the stdout window now.
    expect(stdout.size).toBe(8 * 1024);
    expect(stdout.ended).toBe(false);
    client.releaseWindow();
    await stdout.done();
    expect(stdout.size).toBe(100 * 1024);
    expect(client.windowViolations).toBe(0);
  });

  it("closes the connection when the client does not open its streams in time", async () => {
    const { port } = await startServer({
      timeouts: { ...DEFAULT_STREAM_TIMEOUTS, streamCreationTimeoutMs: 200 },
    });
    const { client } = await connect(port, "/exec/ns/pod/c?command=x&stdin=1&stdout=1");
    await client.open({ streamType: "error" });
    await client.closed;
    expect(client.isClosed).toBe(true);
  });

  it("closes an idle connection and aborts its run", async () => {
    let signal: AbortSignal | undefined;
    const { port } = await startServer({
      timeouts: { idleTimeoutMs: 300, streamCreationTimeoutMs: 10_000 },
      run: (io) => {
        signal = io.signal;
        return new Promise(() => undefined);
      },
    });
    const { client } = await connect(port, "/exec/ns/pod/c?command=x&stdout=1");
    await client.open({ streamType: "error" });
    await client.open({ streamType: "stdout" });
    await client.closed;
    expect(signal?.aborted).toBe(true);
  });

  it("echoes the client's pings", async () => {
    const { port } = await startServer({ run: () => new Promise(() => undefined) });
    const { client } = await connect(port, "/exec/ns/pod/c?command=x&stdout=1");
    await client.open({ streamType: "error" });
    client.ping(1);
    client.ping(3);
    await client.open({ streamType: "stdout" });
    expect(client.pings).toEqual([1, 3]);
  });

  it("refuses a client offering no protocol it speaks, naming the ones it does", async () => {
    const { port } = await startServer();
    const { response, client } = await SpdyClient.connect(port, "/exec/ns/pod/c?command=x&stdout=1", {
      protocols: ["v9.channel.k8s.io"],
    });
    expect(client).toBeUndefined();
    expect(response.status).toBe(403);
    expect(JSON.parse(response.body)).toMatchObject({ kind: "Status", status: "Failure", code: 403 });
    expect(response.body).toContain("v4.channel.k8s.io");
  });

  it("refuses a request that is not an upgrade it knows with 400", async () => {
    const { port } = await startServer();
    const { response } = await SpdyClient.connect(port, "/exec/ns/pod/c?command=x&stdout=1", {
      protocols: ["v4.channel.k8s.io"],
      upgrade: "h2c",
    });
    expect(response.status).toBe(400);
    expect(JSON.parse(response.body)).toMatchObject({ reason: "BadRequest", code: 400 });
  });
});

describe("port forwarding over SPDY/3.1", () => {
  it("carries each forwarded connection to its port and ends it when the pod side ends", async () => {
    const forwarded: number[] = [];
    const { port } = await startServer({
      forward: async (target, connection) => {
        forwarded.push(target);
        for await (const chunk of connection.data)
          connection.write(Buffer.from(`${target}:${Buffer.from(chunk).toString()}`));
      },
    });
    const { response, client } = await connect(port, "/portForward/ns/pod", {
      protocols: ["portforward.k8s.io"],
    });
    expect(response.headers["x-stream-protocol-version"]).toBe("portforward.k8s.io");
    const open = async (target: number, requestId: string) => {
      const error = await client.open({ streamType: "error", port: String(target), requestID: requestId });
      error.end();
      const data = await client.open({ streamType: "data", port: String(target), requestID: requestId });
      return { error, data };
    };
    const a = await open(8080, "0");
    const b = await open(9090, "1");
    a.data.write("ping");
    b.data.write("pong");
    a.data.end();
    b.data.end();
    await Promise.all([a.data.done(), b.data.done(), a.error.done(), b.error.done()]);
    expect(a.data.text).toBe("8080:ping");
    expect(b.data.text).toBe("9090:pong");
    expect(a.error.text).toBe("");
    expect(forwarded.sort()).toEqual([8080, 9090]);
    // The connection stays up for further forwarded connections.
    expect(client.isClosed).toBe(false);
  });

  it("writes a failed forward's error on the error stream", async () => {
    const { port } = await startServer({
      forward: async (target) => {
        throw new Error(`nothing listens on ${target}`);
      },
    });
    const { client } = await connect(port, "/portForward/ns/pod", { protocols: ["portforward.k8s.io"] });
    const error = await client.open({ streamType: "error", port: "5432", requestID: "7" });
    const data = await client.open({ streamType: "data", port: "5432", requestID: "7" });
    await Promise.all([error.done(), data.done()]);
    expect(error.text).toBe("error forwarding port 5432: nothing listens on 5432");
  });

  it("rejects a port that is not a number", async () => {
    const { port } = await startServer({ forward: async () => undefined });
    const { client } = await connect(port, "/portForward/ns/pod", { protocols: ["portforward.k8s.io"] });
    const error = await client.open({ streamType: "error", port: "http", requestID: "1" });
    await client.open({ streamType: "data", port: "http", requestID: "1" });
    await error.done();
    expect(error.text).toBe('unable to parse "http" as a port');
  });
});

describe("SPDY/3 header blocks", () => {
  it("end each compressed block with the sync-flush marker, which Go's inflater needs to hand out the bytes", async () => {
    const { HeaderDeflater, HeaderInflater, encodeHeaderBlock, decodeHeaderBlock } =
      await import("./spdy-frames.ts");
    const deflater = new HeaderDeflater();
    const inflater = new HeaderInflater();
    for (const headers of [new Map<string, string>(), new Map([["streamtype", "stdout"]])]) {
      const block = deflater.compress(encodeHeaderBlock(headers));
      expect(block.subarray(-5)).toEqual(Buffer.from([0, 0, 0, 0xff, 0xff]));
      expect(decodeHeaderBlock(await inflater.inflate(block))).toEqual(headers);
    }
    inflater.close();
  });
});

describe("the SPDY/3 header dictionary", () => {
  it("is byte for byte the one another implementation ships", async () => {
    const { DICTIONARY } = await import("./spdy-frames.ts");
    const { createRequire } = await import("node:module");
    // spdy-transport (a dev dependency, for this check only) carries its own copy of the spec's bytes.
    const theirs = (
      createRequire(import.meta.url)(
        "spdy-transport/lib/spdy-transport/protocol/spdy/dictionary.js",
      ) as Record<string, Buffer>
    )["3"];
    expect(DICTIONARY.length).toBe(1423);
    expect(DICTIONARY.equals(theirs ?? Buffer.alloc(0))).toBe(true);
  });
});
