/**
 * Two small pieces of a session (io-sessions.ts): {@link SeqOrder}, which puts a stream of
 * numbered messages back in order (QoS 1 may duplicate; docs/protocol.md § 3.9), and
 * {@link TextQueue}, the log text waiting for the client to read it, as an async iterable that
 * knows how much it holds.
 *
 *   const order = new SeqOrder<Msg>({ maxPendingBytes: 1 << 20, size: (m) => m.data.length });
 *   for (const m of order.put(msg.seq, msg)) handle(m);   // in seq order, duplicates dropped
 *   order.waiting();                                      // true while a gap is open
 */

/** Puts numbered items (0, 1, 2…) in order; drops numbers already seen. */
export class SeqOrder<T> {
  readonly #maxPendingBytes: number;
  readonly #size: (item: T) => number;
  readonly #pending = new Map<number, T>();
  #pendingBytes = 0;
  #next = 0;

  /** `size` of an item, counted against `maxPendingBytes` while it waits behind a gap. */
  constructor(o: { readonly maxPendingBytes: number; readonly size: (item: T) => number }) {
    this.#maxPendingBytes = o.maxPendingBytes;
    this.#size = o.size;
  }

  /**
   * The items now deliverable, in order: `seq` itself and whatever it unblocked. A seq below the
   * next expected or already held is a duplicate: `duplicate` is true and nothing is returned.
   * @throws RangeError when more than `maxPendingBytes` wait behind a gap.
   */
  put(seq: number, item: T): { readonly ready: readonly T[]; readonly duplicate: boolean } {
    if (seq < this.#next || this.#pending.has(seq)) return { ready: [], duplicate: true };
    this.#pending.set(seq, item);
    this.#pendingBytes += this.#size(item);
    const ready: T[] = [];
    for (let next = this.#pending.get(this.#next); next !== undefined; next = this.#pending.get(this.#next)) {
      this.#pending.delete(this.#next);
      this.#pendingBytes -= this.#size(next);
      this.#next++;
      ready.push(next);
    }
    if (this.#pendingBytes > this.#maxPendingBytes) {
      throw new RangeError(`more than ${this.#maxPendingBytes} bytes wait behind missing seq ${this.#next}`);
    }
    return { ready, duplicate: false };
  }

  /** Whether items wait for a missing seq. */
  waiting(): boolean {
    return this.#pending.size > 0;
  }

  /** The seq expected next. */
  get next(): number {
    return this.#next;
  }
}

/**
 * Text for one reader, in order. `push` never blocks; `bytes` says how much waits unread, so the
 * writer can give up on a reader that does not keep up. Ends with `end()` (after what is queued)
 * or `fail(error)` (at once). Iterate it once.
 */
export class TextQueue implements AsyncIterable<string> {
  readonly #items: string[] = [];
  #bytes = 0;
  #ended = false;
  #error: Error | undefined;
  #wake: (() => void) | undefined;
  readonly #onReturn: () => void;

  /** `onReturn`: the reader stopped early (break, or an error in its loop). */
  constructor(o: { readonly onReturn: () => void }) {
    this.#onReturn = o.onReturn;
  }

  push(text: string): void {
    if (this.#ended || text === "") return;
    this.#items.push(text);
    this.#bytes += Buffer.byteLength(text);
    this.#notify();
  }

  end(): void {
    this.#ended = true;
    this.#notify();
  }

  fail(error: Error): void {
    if (this.#ended) return;
    this.#error = error;
    this.#ended = true;
    this.#items.length = 0;
    this.#notify();
  }

  /** Bytes queued and not yet read. */
  get bytes(): number {
    return this.#bytes;
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<string> {
    let done = false;
    try {
      for (;;) {
        const item = this.#items.shift();
        if (item !== undefined) {
          this.#bytes -= Buffer.byteLength(item);
          yield item;
          continue;
        }
        if (this.#error) throw this.#error;
        if (this.#ended) {
          done = true;
          return;
        }
        await new Promise<void>((resolve) => (this.#wake = resolve));
      }
    } finally {
      if (!done && !this.#error) this.#onReturn();
    }
  }
}
