/**
 * An app's recent output, bounded in bytes: chunks are appended as they arrive and the oldest are
 * dropped once the total passes the limit, so a chatty app costs at most `maxBytes` of memory.
 */
export class LogRing {
  readonly #max: number;
  readonly #chunks: Buffer[] = [];
  #bytes = 0;
  #dropped = false;

  constructor(maxBytes: number) {
    this.#max = Math.max(1, maxBytes);
  }

  append(chunk: Buffer): void {
    const piece = chunk.length > this.#max ? chunk.subarray(chunk.length - this.#max) : chunk;
    this.#chunks.push(piece);
    this.#bytes += piece.length;
    while (this.#bytes > this.#max) {
      const oldest = this.#chunks[0];
      if (!oldest) break;
      const excess = this.#bytes - this.#max;
      if (oldest.length <= excess) {
        this.#chunks.shift();
        this.#bytes -= oldest.length;
      } else {
        this.#chunks[0] = oldest.subarray(excess);
        this.#bytes -= excess;
      }
      this.#dropped = true;
    }
  }

  /** The kept text; with `tailLines`, only that many last lines. A partial first line is dropped. */
  text(tailLines?: number): string {
    let text = Buffer.concat(this.#chunks).toString("utf8");
    if (this.#dropped) {
      const nl = text.indexOf("\n");
      text = nl === -1 ? text : text.slice(nl + 1);
    }
    if (tailLines === undefined) return text;
    const lines = text.split("\n");
    const trailing = lines.at(-1) === "" ? lines.pop() : undefined;
    return lines.slice(-tailLines).join("\n") + (trailing === undefined ? "" : "\n");
  }

  get bytes(): number {
    return this.#bytes;
  }
}
