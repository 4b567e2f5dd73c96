import http from "node:http";
import type { AddressInfo } from "node:net";
import type { Duplex } from "node:stream";
import { pino } from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { WebSocket } from "ws";
import type { ExecIO, ForwardedConnection, TerminalSize } from "../../provider/types.ts";
import { portForwardPorts, servePortForward, serveExecStream, streamOptions } from "./index.ts";

const logger = pino({ level: "silent" });
type Run = (io: ExecIO) => Promise<{ readonly exitCode?: number }>;

const servers: http.Server[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) {
    s.closeAllConnections();
    await new Promise((resolve) => s.close(resolve));
  }
});

async function startServer(o: {
  run?: Run;
  forward?: (port: number, c: ForwardedConnection) => Promise<void>;
}) {
  const server = http.createServer((_req, res) => res.writeHead(404).end());
  server.on("upgrade", (req: http.IncomingMessage, socket: Duplex, head: Buffer) => {
    const url = new URL(req.url ?? "/", "http://kubelet");
    if (o.forward !== undefined) {
      servePortForward(req, socket, head, portForwardPorts(url.searchParams), o.forward, logger);
      return;
    }
    serveExecStream(req, socket, head, streamOptions(url.searchParams), o.run ?? (async () => ({})), logger);
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return (server.address() as AddressInfo).port;
}

interface Session {
  readonly ws: WebSocket;
  /** Messages received, as [channel, payload]. */
  readonly messages: [number, Buffer][];
  readonly closed: Promise<number>;
  /** Everything received on a channel. */
  text(channel: number): string;
}

async function open(port: number, path: string, protocols: string[]): Promise<Session> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}${path}`, protocols);
  const messages: [number, Buffer][] = [];
  const base64 = ws.protocol.includes("base64");
  ws.on("message", (data: Buffer, isBinary) => {
    if (!isBinary || base64) {
      const text = data.toString();
      messages.push([text.charCodeAt(0) - 0x30, Buffer.from(text.slice(1), "base64")]);
    } else messages.push([data[0] ?? -1, data.subarray(1)]);
  });
  const closed = new Promise<number>((resolve) => ws.on("close", (code) => resolve(code)));
  await new Promise<void>((resolve, reject) => {
    ws.once("open", () => resolve());
    ws.once("error", reject);
  });
  return {
    ws,
    messages,
    closed,
    text: (channel) =>
      Buffer.concat(messages.filter(([c]) => c === channel).map(([, payload]) => payload)).toString(),
  };
}

const send = (ws: WebSocket, channel: number, data: string | Buffer) =>
  ws.send(Buffer.concat([Buffer.from([channel]), Buffer.from(data)]));

describe("exec over WebSocket", () => {
  it("v5: the close signal on channel 0 ends stdin; the exit code comes back on channel 3", async () => {
    const port = await startServer({
      run: async (io) => {
        const chunks: Uint8Array[] = [];
        for await (const chunk of io.stdin ?? []) chunks.push(chunk);
        io.stdout?.(Buffer.concat(chunks));
        io.stderr?.(Buffer.from("warn"));
        return { exitCode: 3 };
      },
    });
    const s = await open(port, "/exec/ns/pod/c?command=cat&stdin=true&stdout=true&stderr=true", [
      "v5.channel.k8s.io",
      "v4.channel.k8s.io",
    ]);
    expect(s.ws.protocol).toBe("v5.channel.k8s.io");
    send(s.ws, 0, "abc");
    send(s.ws, 0, "def");
    s.ws.send(Buffer.from([255, 0]));
    expect(await s.closed).toBe(1000);
    // The kubelet first sends an empty message on the lowest writable channel.
    expect(s.messages[0]).toEqual([1, Buffer.alloc(0)]);
    expect(s.text(1)).toBe("abcdef");
    expect(s.text(2)).toBe("warn");
    expect(JSON.parse(s.text(3))).toMatchObject({
      status: "Failure",
      reason: "NonZeroExitCode",
      details: { causes: [{ reason: "ExitCode", message: "3" }] },
    });
  });

  it("v4: Success as JSON, and terminal sizes from channel 4", async () => {
    const sizes: TerminalSize[] = [];
    const port = await startServer({
      run: async (io) => {
        for await (const size of io.resize ?? []) {
          sizes.push(size);
          break;
        }
        io.stdout?.(Buffer.from("ok"));
        return { exitCode: 0 };
      },
    });
    const s = await open(port, "/exec/ns/pod/c?command=sh&stdin=1&stdout=1&tty=1", ["v4.channel.k8s.io"]);
    send(s.ws, 4, '{"Width":132,"Height":43}');
    await s.closed;
    expect(sizes).toEqual([{ width: 132, height: 43 }]);
    expect(s.text(1)).toBe("ok");
    expect(JSON.parse(s.text(3))).toEqual({ metadata: {}, status: "Success" });
  });

  it("base64.channel.k8s.io: text messages, and only a failure's message on the error channel", async () => {
    const port = await startServer({
      run: async () => {
        throw new Error("device gw-1 is offline");
      },
    });
    const s = await open(port, "/exec/ns/pod/c?command=x&stdout=1", ["base64.channel.k8s.io"]);
    await s.closed;
    expect(s.text(3)).toBe("device gw-1 is offline");
  });

  it("aborts the run when the client goes away", async () => {
    let reason: unknown;
    const aborted = new Promise<void>((resolve) => {
      void startServer({
        run: (io) =>
          new Promise(() => {
            io.signal.addEventListener("abort", () => {
              reason = io.signal.reason;
              resolve();
            });
          }),
      }).then(async (port) => {
        const s = await open(port, "/exec/ns/pod/c?command=sleep&stdout=1", ["v5.channel.k8s.io"]);
        s.ws.terminate();
      });
    });
    await aborted;
    expect(reason).toBeInstanceOf(Error);
  });

  it("refuses a client offering no protocol it speaks", async () => {
    const port = await startServer({});
    const ws = new WebSocket(`ws://127.0.0.1:${port}/exec/ns/pod/c?command=x&stdout=1`, [
      "v9.channel.k8s.io",
    ]);
    const status = await new Promise<number | undefined>((resolve) => {
      ws.on("unexpected-response", (_req, res) => resolve(res.statusCode));
      ws.on("error", () => resolve(undefined));
    });
    expect(status).toBe(400);
  });
});

describe("port forwarding over WebSocket", () => {
  it("opens a data and an error channel per port, each starting with the port", async () => {
    const port = await startServer({
      forward: async (target, connection) => {
        for await (const chunk of connection.data) {
          connection.write(Buffer.from(`${target}:${Buffer.from(chunk).toString()}`));
          return;
        }
      },
    });
    const s = await open(port, "/portForward/ns/pod?port=8080&port=9090", ["v4.channel.k8s.io"]);
    send(s.ws, 0, "a");
    send(s.ws, 2, "b");
    await s.closed;
    const portBytes = (p: number) => Buffer.from([p & 0xff, p >> 8]);
    expect(s.messages.filter(([c]) => c === 0)[0]?.[1]).toEqual(portBytes(8080));
    expect(s.messages.filter(([c]) => c === 1)[0]?.[1]).toEqual(portBytes(8080));
    expect(s.messages.filter(([c]) => c === 2)[0]?.[1]).toEqual(portBytes(9090));
    expect(s.text(0).slice(2)).toBe("8080:a");
    expect(s.text(2).slice(2)).toBe("9090:b");
  });
});

describe("streamOptions", () => {
  it("reads the flags the API server sends a kubelet (input, output, error as 1)", () => {
    // What kube-apiserver 1.36 sends for `kubectl exec -i pod -- cat`.
    expect(streamOptions(new URLSearchParams("command=cat&error=1&input=1&output=1"))).toEqual({
      stdin: true,
      stdout: true,
      stderr: true,
      tty: false,
      command: ["cat"],
    });
    expect(streamOptions(new URLSearchParams("command=sh&input=1&output=1&tty=1"))).toMatchObject({
      stdin: true,
      stdout: true,
      stderr: false,
      tty: true,
    });
  });

  it("also reads the API server's own names as 1 or true, and the repeated command", () => {
    const o = streamOptions(
      new URLSearchParams("command=sh&command=-c&command=echo+hi&stdin=1&stdout=true&stderr=0"),
    );
    expect(o).toEqual({
      stdin: true,
      stdout: true,
      stderr: false,
      tty: false,
      command: ["sh", "-c", "echo hi"],
    });
  });

  it("drops stderr with a terminal, as the kubelet does", () => {
    expect(streamOptions(new URLSearchParams("stdout=1&stderr=1&tty=1"))).toMatchObject({
      stderr: false,
      tty: true,
    });
  });

  it("refuses a request for none of stdin, stdout and stderr", () => {
    expect(() => streamOptions(new URLSearchParams("command=ls&tty=1&stderr=1"))).toThrow(
      "you must specify at least 1 of stdin, stdout, stderr",
    );
  });

  it("reads port-forward ports and refuses a bad one", () => {
    expect(portForwardPorts(new URLSearchParams("port=80&port=443"))).toEqual([80, 443]);
    expect(portForwardPorts(new URLSearchParams("port=80,8080"))).toEqual([80, 8080]);
    expect(() => portForwardPorts(new URLSearchParams("port=0"))).toThrow('port "0" must be > 0');
    expect(() => portForwardPorts(new URLSearchParams("port=http"))).toThrow(
      'unable to parse "http" as a port',
    );
  });
});
