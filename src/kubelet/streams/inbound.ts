/**
 * Bytes and terminal sizes arriving from the client, handed to a provider as async iterables.
 *
 * {@link InboundBytes} is a single-consumer queue: the transport pushes what it reads, the provider
 * pulls. It reports what was consumed (so SPDY can open its receive window again) and whether it
 * holds more than its bound (so the transport stops reading the socket until the provider caught
 * up). {@link ResizeDecoder} turns the resize stream, a sequence of JSON objects
 * (`{"Width":80,"Height":24}` each followed by a newline, as client-go writes them), into sizes.
 */

import type { TerminalSize } from "../../provider/types.ts";

/** Holds at most this many bytes before the transport is asked to stop reading. */
export const INBOUND_HIGH_WATER = 1 << 20;

export interface InboundHooks {
  /** `size` bytes were taken by the consumer (or dropped once it stopped iterating). */
  readonly consumed?: (size: number) => void;
  /** The queue went above (true) or back under (false) its bound. */
  readonly full?: (full: boolean) => void;
  /**
   * Resolves when the consumer may take the next chunk; used to hold stdin back while the output
   * towards the client is backed up (a command echoing its input cannot then grow the backlog).
   */
  readonly ready?: () => Promise<void>;
}

export class InboundBytes implements AsyncIterable<Uint8Array> {
  #hooks: InboundHooks;
  readonly #chunks: Uint8Array[] = [];
  #size = 0;
  #ended = false;
  #abandoned = false;
  #iterated = false;
  #wake: (() => void) | undefined;

  constructor(hooks: InboundHooks = {}) {
    this.#hooks = hooks;
  }

  /** Holds each chunk back until `ready` resolves (see {@link InboundHooks.ready}). */
  holdUntil(ready: () => Promise<void>): void {
    this.#hooks = { ...this.#hooks, ready };
  }

  /** Bytes held, not yet consumed. */
  get size(): number {
    return this.#size;
  }

  get ended(): boolean {
    return this.#ended;
  }

  /** Queues a chunk (the caller gives up ownership). Dropped after `end` or once abandoned. */
  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    if (this.#ended || this.#abandoned) {
      this.#hooks.consumed?.(chunk.length);
      return;
    }
    const wasFull = this.#size >= INBOUND_HIGH_WATER;
    this.#chunks.push(chunk);
    this.#size += chunk.length;
    if (!wasFull && this.#size >= INBOUND_HIGH_WATER) this.#hooks.full?.(true);
    this.#wakeUp();
  }

  /** No more input: iteration ends after what is queued. Idempotent. */
  end(): void {
    this.#ended = true;
    this.#wakeUp();
  }

  #wakeUp(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }

  #take(): Uint8Array | undefined {
    const chunk = this.#chunks.shift();
    if (chunk === undefined) return undefined;
    const wasFull = this.#size >= INBOUND_HIGH_WATER;
    this.#size -= chunk.length;
    this.#hooks.consumed?.(chunk.length);
    if (wasFull && this.#size < INBOUND_HIGH_WATER) this.#hooks.full?.(false);
    return chunk;
  }

  /**
   * Drops what is queued and anything pushed later: nobody will read it (the run ended, or
   * stopped iterating). Keeps a transport from staying paused on input no one takes.
   */
  discard(): void {
    this.#abandoned = true;
    while (this.#take() !== undefined);
    this.end();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    if (this.#iterated) throw new Error("the client's input can be read only once");
    this.#iterated = true;
    try {
      for (;;) {
        if (this.#chunks.length === 0) {
          if (this.#ended) return;
          await new Promise<void>((resolve) => (this.#wake = resolve));
          continue;
        }
        await this.#hooks.ready?.();
        const chunk = this.#take();
        if (chunk !== undefined) yield chunk;
      }
    } finally {
      this.discard();
    }
  }
}

/** Reads the concatenated JSON objects of a resize stream, tolerating any split into chunks. */
export class ResizeDecoder {
  #pending = "";
  readonly #decoder = new TextDecoder();

  /** The sizes completed by `chunk`; a malformed object is skipped (the kubelet stops reading). */
  decode(chunk: Uint8Array): TerminalSize[] {
    this.#pending += this.#decoder.decode(chunk, { stream: true });
    const sizes: TerminalSize[] = [];
    for (;;) {
      const start = this.#pending.indexOf("{");
      if (start < 0) {
        this.#pending = "";
        return sizes;
      }
      const end = this.#pending.indexOf("}", start);
      if (end < 0) {
        this.#pending = this.#pending.slice(start);
        if (this.#pending.length > 4096) this.#pending = "";
        return sizes;
      }
      const text = this.#pending.slice(start, end + 1);
      this.#pending = this.#pending.slice(end + 1);
      const size = parseSize(text);
      if (size !== undefined) sizes.push(size);
    }
  }
}

function parseSize(text: string): TerminalSize | undefined {
  try {
    const value = JSON.parse(text) as { Width?: unknown; Height?: unknown };
    const width = value.Width;
    const height = value.Height;
    if (typeof width !== "number" || typeof height !== "number") return undefined;
    if (!Number.isInteger(width) || !Number.isInteger(height) || width < 0 || height < 0) return undefined;
    return { width, height };
  } catch {
    return undefined;
  }
}

/** A single-consumer async queue of terminal sizes; ends with `end`. */
export class ResizeQueue implements AsyncIterable<TerminalSize> {
  readonly #sizes: TerminalSize[] = [];
  #ended = false;
  #wake: (() => void) | undefined;

  push(size: TerminalSize): void {
    if (this.#ended) return;
    // Only the latest size matters to a terminal; keep the queue from growing without bound.
    if (this.#sizes.length >= 16) this.#sizes.shift();
    this.#sizes.push(size);
    this.#wake?.();
    this.#wake = undefined;
  }

  end(): void {
    this.#ended = true;
    this.#wake?.();
    this.#wake = undefined;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<TerminalSize> {
    for (;;) {
      const size = this.#sizes.shift();
      if (size !== undefined) {
        yield size;
        continue;
      }
      if (this.#ended) return;
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
  }
}
