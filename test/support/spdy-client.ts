/**
 * A SPDY/3.1 client for tests of the kubelet's streaming endpoints, behaving like client-go's
 * spdystream: it upgrades with `X-Stream-Protocol-Version` offers, opens streams with real zlib
 * header compression and waits for each SYN_REPLY. With `flowControl` it also behaves like a strict
 * SPDY/3.1 peer: it announces a window, reopens it as data arrives and records any DATA the server
 * sent beyond it.
 */

import net from "node:net";
import zlib from "node:zlib";
import {
  DICTIONARY,
  Flag,
  FrameReader,
  FrameType,
  HeaderInflater,
  SETTINGS_INITIAL_WINDOW_SIZE,
  controlFrame,
  dataFrame,
  decodeHeaderBlock,
  encodeHeaderBlock,
  pingFrame,
  rstStreamFrame,
  settingsFrame,
  windowUpdateFrame,
} from "../../src/kubelet/streams/spdy-frames.ts";

/** Header compression as client-go does it: real deflate with the dictionary, sync-flushed per block. */
class HeaderCompressor {
  readonly #deflate = zlib.createDeflate({ dictionary: DICTIONARY });
  #collected: Buffer[] = [];

  constructor() {
    this.#deflate.on("data", (chunk: Buffer) => this.#collected.push(chunk));
  }

  async compress(block: Buffer): Promise<Buffer> {
    this.#deflate.write(block);
    await new Promise<void>((resolve) => this.#deflate.flush(zlib.constants.Z_SYNC_FLUSH, resolve));
    await new Promise<void>((resolve) => setImmediate(resolve));
    const out = Buffer.concat(this.#collected);
    this.#collected = [];
    return out;
  }

  close(): void {
    this.#deflate.destroy();
  }
}

export interface UpgradeResponse {
  readonly status: number;
  readonly headers: Readonly<Record<string, string>>;
  /** The body of a refusal (empty after a 101). */
  readonly body: string;
}

export class ClientStream {
  readonly id: number;
  readonly chunks: Buffer[] = [];
  ended = false;
  reset = false;
  window: number;
  readonly #client: SpdyClient;
  readonly #waiters: (() => void)[] = [];
  replied: Promise<void>;
  resolveReply: () => void = () => undefined;

  constructor(client: SpdyClient, id: number, window: number) {
    this.#client = client;
    this.id = id;
    this.window = window;
    this.replied = new Promise((resolve) => (this.resolveReply = resolve));
  }

  get text(): string {
    return Buffer.concat(this.chunks).toString();
  }

  get size(): number {
    return this.chunks.reduce((n, c) => n + c.length, 0);
  }

  /** The server's window for what this client sends (honoured only with `flowControl`). */
  sendWindow = 64 * 1024;
  readonly #outgoing: Buffer[] = [];
  #finQueued = false;

  write(data: string | Uint8Array): void {
    this.#outgoing.push(typeof data === "string" ? Buffer.from(data) : Buffer.from(data));
    this.flush();
  }

  /** Half-closes (FIN), as client-go does at the end of stdin. */
  end(): void {
    this.#finQueued = true;
    this.flush();
  }

  flush(): void {
    const limited = this.#client.flowControl;
    for (;;) {
      const head = this.#outgoing[0];
      if (head === undefined) break;
      const size = limited ? Math.min(head.length, this.sendWindow) : head.length;
      if (size <= 0) return;
      if (size === head.length) this.#outgoing.shift();
      else this.#outgoing[0] = head.subarray(size);
      this.sendWindow -= size;
      this.#client.send(dataFrame(this.id, 0, head.subarray(0, size)));
    }
    if (this.#finQueued) {
      this.#finQueued = false;
      this.#client.send(dataFrame(this.id, Flag.Fin, Buffer.alloc(0)));
    }
  }

  resetStream(): void {
    this.#client.send(rstStreamFrame(this.id, 5));
  }

  /** Resolves when the server ended (FIN) or reset the stream, or the connection closed. */
  async done(): Promise<void> {
    if (this.ended || this.reset || this.#client.isClosed) return;
    await new Promise<void>((resolve) => this.#waiters.push(resolve));
  }

  notify(): void {
    for (const wake of this.#waiters.splice(0)) wake();
  }
}

export class SpdyClient {
  readonly socket: net.Socket;
  readonly pings: number[] = [];
  readonly goAways: number[] = [];
  /** DATA the server sent beyond the window this client granted (must stay 0). */
  windowViolations = 0;
  readonly #reader = new FrameReader();
  readonly #compressor = new HeaderCompressor();
  readonly #inflater = new HeaderInflater();
  readonly #streams = new Map<number, ClientStream>();
  readonly #flowControl: number | undefined;
  #nextId = 1;
  #chain: Promise<void> = Promise.resolve();
  #closed = false;
  readonly closed: Promise<void>;
  /** Holds window updates back while true, to make the server wait. */
  holdWindow = false;
  #held = new Map<number, number>();

  private constructor(socket: net.Socket, head: Buffer, flowControl: number | undefined) {
    this.socket = socket;
    this.#flowControl = flowControl;
    // Frames are handled in order on a chain (header blocks inflate asynchronously): the close is
    // noted after every frame that came before it.
    this.closed = new Promise((resolve) =>
      socket.once("close", () => {
        this.#chain = this.#chain.then(() => {
          this.#closed = true;
          for (const s of this.#streams.values()) s.notify();
          resolve();
        });
      }),
    );
    socket.on("error", () => undefined);
    socket.on("data", (chunk: Buffer) => this.#receive(chunk));
    if (flowControl !== undefined)
      this.send(settingsFrame([{ id: SETTINGS_INITIAL_WINDOW_SIZE, value: flowControl }]));
    if (head.length > 0) this.#receive(head);
  }

  get flowControl(): boolean {
    return this.#flowControl !== undefined;
  }

  get isClosed(): boolean {
    return this.#closed;
  }

  /**
   * Sends the upgrade request; resolves with the response and, after a 101, a connected client.
   * `flowControl`: the receive window to announce and enforce (none: behave like spdystream).
   */
  static async connect(
    port: number,
    path: string,
    o: { protocols: readonly string[]; flowControl?: number; upgrade?: string },
  ): Promise<{ response: UpgradeResponse; client?: SpdyClient }> {
    const socket = net.connect(port, "127.0.0.1");
    await new Promise<void>((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("error", reject);
    });
    socket.write(
      `POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: ${o.upgrade ?? "SPDY/3.1"}\r\n` +
        o.protocols.map((p) => `X-Stream-Protocol-Version: ${p}\r\n`).join("") +
        "Content-Length: 0\r\n\r\n",
    );
    let buffered = Buffer.alloc(0);
    const { head, rest } = await new Promise<{ head: string; rest: Buffer }>((resolve, reject) => {
      const onData = (chunk: Buffer) => {
        buffered = Buffer.concat([buffered, chunk]);
        const end = buffered.indexOf("\r\n\r\n");
        if (end >= 0) {
          socket.off("data", onData);
          resolve({ head: buffered.subarray(0, end).toString(), rest: buffered.subarray(end + 4) });
        }
      };
      socket.on("data", onData);
      socket.once("error", reject);
      socket.once("close", () => reject(new Error(`closed before a response: ${buffered.toString()}`)));
    });
    const [statusLine = "", ...lines] = head.split("\r\n");
    const status = Number(statusLine.split(" ")[1]);
    const headers: Record<string, string> = {};
    for (const line of lines) {
      const i = line.indexOf(":");
      const name = line.slice(0, i).toLowerCase();
      const value = line.slice(i + 1).trim();
      headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`;
    }
    if (status !== 101) {
      let body = rest;
      await new Promise<void>((resolve) => {
        socket.on("data", (chunk: Buffer) => (body = Buffer.concat([body, chunk])));
        socket.once("close", () => resolve());
      });
      return { response: { status, headers, body: body.toString() } };
    }
    socket.removeAllListeners("error");
    socket.removeAllListeners("close");
    return { response: { status, headers, body: "" }, client: new SpdyClient(socket, rest, o.flowControl) };
  }

  send(bytes: Buffer): void {
    if (!this.#closed) this.socket.write(bytes);
  }

  /** Opens a stream with `headers` (lowercased on the wire) and waits for its SYN_REPLY. */
  async open(headers: Readonly<Record<string, string>>, o: { fin?: boolean } = {}): Promise<ClientStream> {
    const id = this.#nextId;
    this.#nextId += 2;
    const stream = new ClientStream(this, id, this.#flowControl ?? Infinity);
    this.#streams.set(id, stream);
    const block = await this.#compressor.compress(encodeHeaderBlock(new Map(Object.entries(headers))));
    const head = Buffer.alloc(10);
    head.writeUInt32BE(id, 0);
    this.send(controlFrame(FrameType.SynStream, o.fin === true ? Flag.Fin : 0, Buffer.concat([head, block])));
    await Promise.race([stream.replied, this.closed]);
    return stream;
  }

  ping(id: number): void {
    this.send(pingFrame(id));
  }

  /** Sends the window updates held back while `holdWindow` was set. */
  releaseWindow(): void {
    this.holdWindow = false;
    for (const [id, delta] of this.#held) this.#sendGrant(id, delta);
    this.#held.clear();
  }

  #sendGrant(id: number, delta: number): void {
    const stream = this.#streams.get(id);
    if (stream !== undefined) stream.window += delta;
    this.send(windowUpdateFrame(id, delta));
  }

  #destroyed = false;

  destroy(): void {
    this.#destroyed = true;
    this.socket.destroy();
    this.#compressor.close();
    this.#inflater.close();
  }

  #grant(id: number, size: number): void {
    if (this.#flowControl === undefined) return;
    if (this.holdWindow) {
      this.#held.set(id, (this.#held.get(id) ?? 0) + size);
      return;
    }
    this.#sendGrant(id, size);
  }

  #receive(chunk: Buffer): void {
    const frames = this.#reader.push(chunk);
    this.#chain = this.#chain.then(async () => {
      for (const frame of frames) {
        if (this.#destroyed) return;
        if (frame.kind === "data") {
          const stream = this.#streams.get(frame.streamId);
          if (stream === undefined) continue;
          if (frame.data.length > 0) {
            stream.window -= frame.data.length;
            if (stream.window < 0) this.windowViolations++;
            stream.chunks.push(Buffer.from(frame.data));
            this.#grant(stream.id, frame.data.length);
            this.#grant(0, frame.data.length);
          }
          if ((frame.flags & Flag.Fin) !== 0) {
            stream.ended = true;
            stream.notify();
          }
          continue;
        }
        const p = frame.payload;
        if (frame.type === FrameType.SynReply) {
          decodeHeaderBlock(await this.#inflater.inflate(p.subarray(4)));
          const stream = this.#streams.get(p.readUInt32BE(0));
          if (stream !== undefined) {
            stream.resolveReply();
            if ((frame.flags & Flag.Fin) !== 0) stream.ended = true;
          }
        } else if (frame.type === FrameType.RstStream) {
          const stream = this.#streams.get(p.readUInt32BE(0));
          if (stream !== undefined) {
            stream.reset = true;
            stream.resolveReply();
            stream.notify();
          }
        } else if (frame.type === FrameType.Ping) this.pings.push(p.readUInt32BE(0));
        else if (frame.type === FrameType.GoAway) this.goAways.push(p.readUInt32BE(4));
        else if (frame.type === FrameType.WindowUpdate) {
          const stream = this.#streams.get(p.readUInt32BE(0));
          if (stream !== undefined) {
            stream.sendWindow += p.readUInt32BE(4);
            stream.flush();
          }
        }
      }
    });
  }
}
