/**
 * The server side of one SPDY/3.1 connection, after the 101 response: streams the client opens,
 * their data both ways, PING echo, GOAWAY, RST_STREAM, flow control, an idle timeout.
 *
 * Flow control. SPDY/3.1 gives every stream and the session a 64 KiB send window that the receiver
 * reopens with WINDOW_UPDATE. client-go's spdystream (kubectl, and the API server towards
 * kubelets) implements none of it: it never sends WINDOW_UPDATE and ignores ours. Enforcing the
 * window against it would stall any output past 64 KiB, so windows are enforced, and opened for
 * the peer as its data is consumed, only once the peer showed it speaks flow control (a SETTINGS
 * or WINDOW_UPDATE frame). Either way output is bounded by the socket: what the socket has not
 * taken stays queued on its stream and counts in {@link SpdySession.backlog}, and input a consumer
 * has not taken beyond its bound pauses reading from the socket.
 *
 * Ownership: the session owns the socket from construction and destroys it at the latest when
 * `close` finishes, the peer goes, a protocol error or the idle timeout. `closed` aborts then.
 */

import type { Duplex } from "node:stream";
import type { Logger } from "pino";
import { SpdyStream, type StreamOwner } from "./spdy-stream.ts";
import {
  DEFAULT_WINDOW,
  Flag,
  FrameReader,
  FrameType,
  HeaderDeflater,
  HeaderInflater,
  RstStatus,
  SETTINGS_INITIAL_WINDOW_SIZE,
  controlFrame,
  dataFrame,
  decodeHeaderBlock,
  encodeHeaderBlock,
  goAwayFrame,
  pingFrame,
  rstStreamFrame,
  windowUpdateFrame,
  type Frame,
} from "./spdy-frames.ts";

/** DATA frames carry at most this much, so one stream cannot hog the socket. */
const MAX_DATA_CHUNK = 16 * 1024;
/** Stop handing the socket more once it holds this much unsent. */
const SOCKET_HIGH_WATER = 256 * 1024;
/** How long `close` waits for queued output to reach the socket before giving up. */
const CLOSE_FLUSH_TIMEOUT_MS = 10_000;

export interface SpdySessionOptions {
  readonly logger: Logger;
  /** The connection is closed after this long without a frame either way (kubelet: 4 h). */
  readonly idleTimeoutMs: number;
  /** A stream the client opened, headers decoded. Call `reply` to accept it or `reset` to refuse. */
  readonly onStream: (stream: SpdyStream) => void;
}

export { SpdyStream } from "./spdy-stream.ts";

export class SpdySession implements StreamOwner {
  readonly #socket: Duplex;
  readonly #log: Logger;
  readonly #options: SpdySessionOptions;
  readonly #reader = new FrameReader();
  readonly #inflater = new HeaderInflater();
  readonly #deflater = new HeaderDeflater();
  readonly #streams = new Map<number, SpdyStream>();
  readonly #closed = new AbortController();
  #chain: Promise<void> = Promise.resolve();
  #lastStreamId = 0;
  #peerFlowControl = false;
  #initialSendWindow = DEFAULT_WINDOW;
  #sessionSendWindow = DEFAULT_WINDOW;
  #fullInputs = 0;
  #goingAway = false;
  #idleTimer: NodeJS.Timeout | undefined;
  readonly #roomWaiters: (() => void)[] = [];
  readonly #flushedWaiters: (() => void)[] = [];

  /** Aborts once the connection is gone (peer closed, error, idle timeout, or after `close`). */
  readonly closed: AbortSignal;

  constructor(socket: Duplex, head: Buffer, options: SpdySessionOptions) {
    this.#socket = socket;
    this.#options = options;
    this.#log = options.logger;
    this.closed = this.#closed.signal;
    (socket as { setNoDelay?: (noDelay: boolean) => void }).setNoDelay?.(true);
    socket.on("data", (chunk: Buffer) => this.#receive(chunk));
    socket.on("drain", () => this.flush());
    socket.on("error", (err) => this.#terminate(`connection error: ${err.message}`));
    socket.on("end", () => this.#terminate("the client closed the connection"));
    socket.on("close", () => this.#terminate("the connection closed"));
    this.#touch();
    if (head.length > 0) this.#receive(head);
  }

  /** Bytes queued towards the client and not yet taken by the kernel. */
  get backlog(): number {
    let total = this.#socket.writableLength;
    for (const stream of this.#streams.values()) total += stream.pendingSize;
    return total;
  }

  /** Resolves when the backlog is under `limit` (or the connection is gone). */
  async waitForRoom(limit: number): Promise<void> {
    while (this.backlog >= limit && !this.closed.aborted) {
      await new Promise<void>((resolve) => this.#roomWaiters.push(resolve));
    }
  }

  /**
   * Flushes what is queued, sends GOAWAY and ends the connection. Resolves once the socket is
   * closed; output that cannot be delivered within ten seconds is dropped.
   */
  async close(): Promise<void> {
    if (!this.closed.aborted) {
      const flushed = new Promise<void>((resolve) => this.#flushedWaiters.push(resolve));
      this.flush();
      const timer = setTimeout(() => this.#terminate("output not delivered in time"), CLOSE_FLUSH_TIMEOUT_MS);
      await Promise.race([flushed, new Promise((resolve) => this.closed.addEventListener("abort", resolve))]);
      clearTimeout(timer);
    }
    if (!this.#socket.destroyed && this.#socket.writable) {
      this.#goingAway = true;
      this.#socket.end(goAwayFrame(this.#lastStreamId));
      // The client closes its side on GOAWAY; do not wait on it forever.
      const timer = setTimeout(() => this.#socket.destroy(), CLOSE_FLUSH_TIMEOUT_MS);
      timer.unref();
      await new Promise<void>((resolve) => {
        if (this.#socket.destroyed) resolve();
        else this.#socket.once("close", () => resolve());
      });
      clearTimeout(timer);
    }
    this.#terminate("closed");
  }

  /** Ends the connection at once. */
  destroy(reason: string): void {
    this.#terminate(reason);
  }

  #terminate(reason: string): void {
    if (this.#idleTimer !== undefined) clearTimeout(this.#idleTimer);
    if (!this.#socket.destroyed) this.#socket.destroy();
    if (this.closed.aborted) return;
    this.#closed.abort(new Error(reason));
    this.#inflater.close();
    for (const stream of this.#streams.values()) stream.terminate(reason);
    this.#streams.clear();
    this.#wakeWaiters();
  }

  #touch(): void {
    if (this.#idleTimer !== undefined) this.#idleTimer.refresh();
    else
      this.#idleTimer = setTimeout(() => {
        this.#log.info(
          { idleTimeoutMs: this.#options.idleTimeoutMs },
          "closing an idle streaming connection",
        );
        this.#terminate("idle timeout");
      }, this.#options.idleTimeoutMs);
  }

  #write(bytes: Buffer): void {
    if (this.#socket.destroyed || !this.#socket.writable || this.#goingAway) return;
    this.#socket.write(bytes);
    this.#touch();
  }

  #receive(chunk: Buffer): void {
    if (this.closed.aborted) return;
    this.#touch();
    let frames: Frame[];
    try {
      frames = this.#reader.push(chunk);
    } catch (err) {
      this.#protocolError((err as Error).message);
      return;
    }
    if (frames.length === 0) return;
    this.#chain = this.#chain.then(async () => {
      for (const frame of frames) {
        if (this.closed.aborted) return;
        try {
          await this.#handle(frame);
        } catch (err) {
          this.#protocolError((err as Error).message);
          return;
        }
      }
    });
  }

  #protocolError(message: string): void {
    this.#log.info({ err: message }, "SPDY protocol error; closing the connection");
    this.#write(goAwayFrame(this.#lastStreamId, 1));
    this.#terminate(`SPDY protocol error: ${message}`);
  }

  async #handle(frame: Frame): Promise<void> {
    if (frame.kind === "data") {
      const stream = this.#streams.get(frame.streamId);
      // Data for a stream already gone (reset, or both sides ended) is dropped, as spdystream does.
      if (stream === undefined) return;
      if (stream.remoteEnded) {
        this.#write(rstStreamFrame(stream.id, RstStatus.StreamAlreadyClosed));
        return;
      }
      stream.receiveWindow -= frame.data.length;
      if (this.#peerFlowControl && stream.receiveWindow < 0) {
        // A peer that speaks flow control must not overrun the window (SPDY/3.1 § 2.6.8).
        this.sendReset(stream, RstStatus.FlowControlError);
        return;
      }
      stream.input.push(frame.data);
      if ((frame.flags & Flag.Fin) !== 0) this.#remoteEnd(stream);
      return;
    }
    const p = frame.payload;
    switch (frame.type) {
      case FrameType.SynStream: {
        if (p.length < 10) throw new Error("short SYN_STREAM");
        const id = p.readUInt32BE(0) & 0x7fffffff;
        const headers = decodeHeaderBlock(await this.#inflater.inflate(p.subarray(10)));
        if (id === 0 || id % 2 === 0 || id <= this.#lastStreamId) throw new Error(`invalid stream id ${id}`);
        this.#lastStreamId = id;
        if (this.#goingAway) {
          this.#write(rstStreamFrame(id, RstStatus.RefusedStream));
          return;
        }
        const stream = new SpdyStream(this, id, headers, this.#initialSendWindow);
        this.#streams.set(id, stream);
        if ((frame.flags & Flag.Unidirectional) !== 0) stream.finQueued = stream.finSent = true;
        if ((frame.flags & Flag.Fin) !== 0) this.#remoteEnd(stream);
        this.#options.onStream(stream);
        return;
      }
      case FrameType.SynReply:
      case FrameType.Headers:
        // The server opens no streams; still inflate, so the shared zlib context stays in step.
        if (p.length >= 4) await this.#inflater.inflate(p.subarray(4));
        return;
      case FrameType.RstStream: {
        const stream = this.#streams.get(p.readUInt32BE(0) & 0x7fffffff);
        if (stream !== undefined) {
          this.#streams.delete(stream.id);
          stream.terminate("the client reset the stream");
          this.#wakeWaiters();
        }
        return;
      }
      case FrameType.Settings: {
        this.#peerFlowControl = true;
        const count = p.readUInt32BE(0);
        for (let i = 0; i < count && 4 + 8 * i + 8 <= p.length; i++) {
          const id = p.readUInt32BE(4 + 8 * i) & 0xffffff;
          const value = p.readUInt32BE(8 + 8 * i);
          if (id === SETTINGS_INITIAL_WINDOW_SIZE) {
            const change = value - this.#initialSendWindow;
            this.#initialSendWindow = value;
            for (const stream of this.#streams.values()) stream.sendWindow += change;
          }
        }
        this.flush();
        return;
      }
      case FrameType.Ping: {
        const id = p.readUInt32BE(0);
        // Pings the client started have odd ids (§ 2.6.5); the server starts none.
        if (id % 2 === 1) this.#write(pingFrame(id));
        return;
      }
      case FrameType.GoAway:
        // The client opens no more streams; the ones open carry on until the socket closes.
        this.#goingAway = true;
        return;
      case FrameType.WindowUpdate: {
        this.#peerFlowControl = true;
        const id = p.readUInt32BE(0) & 0x7fffffff;
        const delta = p.readUInt32BE(4) & 0x7fffffff;
        if (id === 0) this.#sessionSendWindow += delta;
        else {
          const stream = this.#streams.get(id);
          if (stream !== undefined) stream.sendWindow += delta;
        }
        this.flush();
        return;
      }
      default:
        // Unknown control frames are ignored (§ 2.2.1).
        return;
    }
  }

  #remoteEnd(stream: SpdyStream): void {
    stream.remoteEnded = true;
    stream.input.end();
    this.#forgetIfDone(stream);
  }

  #forgetIfDone(stream: SpdyStream): void {
    if (stream.remoteEnded && stream.finSent) this.#streams.delete(stream.id);
  }

  /** Internal (SpdyStream): send SYN_REPLY. */
  sendReply(stream: SpdyStream): void {
    const block = this.#deflater.compress(encodeHeaderBlock(new Map()));
    const id = Buffer.alloc(4);
    id.writeUInt32BE(stream.id, 0);
    this.#write(controlFrame(FrameType.SynReply, 0, Buffer.concat([id, block])));
    this.flush();
  }

  /** Internal (SpdyStream). */
  sendReset(stream: SpdyStream, status: number): void {
    this.#write(rstStreamFrame(stream.id, status));
    this.#streams.delete(stream.id);
    stream.terminate("stream reset");
    this.#wakeWaiters();
  }

  /** Internal (SpdyStream input): the consumer took `size` bytes; reopen the peer's window. */
  consumed(stream: SpdyStream, size: number): void {
    stream.receiveWindow += size;
    if (!this.#peerFlowControl || this.closed.aborted) return;
    if (!stream.remoteEnded) this.#write(windowUpdateFrame(stream.id, size));
    this.#write(windowUpdateFrame(0, size));
  }

  /**
   * Internal (SpdyStream input): stop reading the socket while any input is over its bound. Only
   * for a peer without flow control: one with it is held by its window, and pausing the socket
   * would also hold back the WINDOW_UPDATE frames that let our own output (and so the consumer
   * of this input) move on.
   */
  inputFull(full: boolean): void {
    this.#fullInputs += full ? 1 : -1;
    if (this.#fullInputs > 0 && !this.#peerFlowControl) this.#socket.pause();
    else this.#socket.resume();
  }

  /** Frames queued output onto the socket as far as windows and the socket's buffer allow. */
  flush(): void {
    if (this.closed.aborted) return;
    for (const stream of this.#streams.values()) {
      if (!stream.replied) continue;
      while (stream.pending.length > 0 && this.#socket.writableLength < SOCKET_HIGH_WATER) {
        const head = stream.pending[0];
        if (head === undefined) break;
        let size = Math.min(head.length, MAX_DATA_CHUNK);
        if (this.#peerFlowControl) size = Math.min(size, stream.sendWindow, this.#sessionSendWindow);
        if (size <= 0) break;
        const piece = head.subarray(0, size);
        if (size === head.length) stream.pending.shift();
        else stream.pending[0] = head.subarray(size);
        stream.pendingSize -= size;
        stream.sendWindow -= size;
        this.#sessionSendWindow -= size;
        const fin = stream.finQueued && stream.pending.length === 0 ? Flag.Fin : 0;
        this.#write(dataFrame(stream.id, fin, piece));
        if (fin !== 0) stream.finSent = true;
      }
      if (stream.finQueued && !stream.finSent && stream.pending.length === 0) {
        this.#write(dataFrame(stream.id, Flag.Fin, Buffer.alloc(0)));
        stream.finSent = true;
      }
      if (stream.finSent) this.#forgetIfDone(stream);
    }
    this.#wakeWaiters();
  }

  #wakeWaiters(): void {
    // Room waiters re-check the backlog themselves (see waitForRoom).
    for (const wake of this.#roomWaiters.splice(0)) wake();
    let pending = 0;
    for (const stream of this.#streams.values()) pending += stream.pendingSize;
    if (pending === 0 || this.closed.aborted) {
      for (const wake of this.#flushedWaiters.splice(0)) wake();
    }
  }
}
