/**
 * One SPDY/3.1 stream the client opened, as the server sees it: its headers, what the client sends
 * ({@link SpdyStream.input}) and what the server writes back. Frames go through its session.
 */

import { InboundBytes } from "./inbound.ts";
import { DEFAULT_WINDOW, RstStatus } from "./spdy-frames.ts";

/** What a stream asks of the session that carries it (see spdy-session.ts). */
export interface StreamOwner {
  sendReply(stream: SpdyStream): void;
  sendReset(stream: SpdyStream, status: number): void;
  consumed(stream: SpdyStream, size: number): void;
  inputFull(full: boolean): void;
  flush(): void;
}

export class SpdyStream {
  readonly id: number;
  /** Header names lowercase, as on the wire (`streamtype`, `port`, `requestid`). */
  readonly headers: ReadonlyMap<string, string>;
  /** What the client sends on this stream; ends at its FIN (or a reset, or the connection's end). */
  readonly input: InboundBytes;
  /** Aborts when the client reset the stream or the connection went. */
  readonly signal: AbortSignal;
  readonly #session: StreamOwner;
  readonly #abort = new AbortController();
  /** Output queued, not yet framed onto the socket. */
  pending: Buffer[] = [];
  pendingSize = 0;
  /** FIN requested; sent after the pending output. */
  finQueued = false;
  finSent = false;
  remoteEnded = false;
  sendWindow: number;
  /** What the client may still send before we reopen the window (checked with flow control). */
  receiveWindow = DEFAULT_WINDOW;
  replied = false;

  constructor(session: StreamOwner, id: number, headers: ReadonlyMap<string, string>, sendWindow: number) {
    this.#session = session;
    this.id = id;
    this.headers = headers;
    this.sendWindow = sendWindow;
    this.signal = this.#abort.signal;
    this.input = new InboundBytes({
      consumed: (size) => session.consumed(this, size),
      full: (full) => session.inputFull(full),
    });
  }

  /** Accepts the stream (SYN_REPLY with no headers, as the kubelet sends). */
  reply(): void {
    if (this.replied || this.signal.aborted) return;
    this.replied = true;
    this.#session.sendReply(this);
  }

  /** Queues `chunk` (copied) for the client. Dropped once the stream ended or was reset. */
  write(chunk: Uint8Array): void {
    if (chunk.length === 0 || this.finQueued || this.signal.aborted) return;
    const copy = Buffer.from(chunk);
    this.pending.push(copy);
    this.pendingSize += copy.length;
    this.#session.flush();
  }

  /** Half-closes the stream (FIN) after what is queued. Idempotent. */
  end(): void {
    if (this.finQueued || this.signal.aborted) return;
    this.finQueued = true;
    this.#session.flush();
  }

  /** Resets the stream (RST_STREAM), dropping what is queued. */
  reset(status: number = RstStatus.Cancel): void {
    if (this.signal.aborted) return;
    this.#session.sendReset(this, status);
  }

  /** Internal: the stream is gone (reset either way, or the connection ended). */
  terminate(reason: string): void {
    this.pending = [];
    this.pendingSize = 0;
    this.input.end();
    this.#abort.abort(new Error(reason));
  }
}
