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

/** One captured line (or a piece of an over-long one), with when it was captured (ms since the epoch). */
export interface LogLine {
  readonly at: number;
  readonly stream: "stdout" | "stderr";
  /** The bytes as written, with the trailing newline when the line had one. */
  readonly text: Buffer;
}

export interface AppLogOptions {
  /** Bytes of the current instance's lines kept; older lines are dropped first. Default 1 MiB. */
  readonly maxBytes?: number;
  /** Bytes of the previous instance's tail kept once it has been replaced. Default 256 KiB. */
  readonly previousBytes?: number;
  readonly now: () => number;
}

export interface LogQuery {
  /** The instance before the current one (`kubectl logs --previous`). */
  readonly previous?: boolean;
  /** Only this many last lines. */
  readonly tailLines?: number;
  /** Only lines captured at or after this time (ms since the epoch). */
  readonly sinceMs?: number;
}

/** A line longer than this is kept (and sent) in pieces, as CRI log files split long lines. */
const MAX_LINE_BYTES = 16 * 1024;

/**
 * An app's output as the kubelet's logs API needs it: lines with their capture time (for
 * `sinceTime` and `timestamps`), a current instance and the tail of the previous one (for
 * `previous`), and followers that see new lines as they are captured and are ended when the
 * instance ends (the app exited or restarted), as `kubectl logs -f` ends with its container.
 *
 * Bounds: the current instance keeps at most `maxBytes` (oldest lines dropped first), and at a
 * restart the previous instance keeps only its last `previousBytes`, so an app costs at most their
 * sum. stdout and stderr are split into lines separately; a line without its newline yet is
 * read as far as it goes, and followers get it (up to 16 KiB at a time) once its newline comes
 * or the instance ends.
 */
export class AppLog {
  readonly #max: number;
  readonly #previousMax: number;
  readonly #now: () => number;
  #current = new LineBuffer();
  #previous: LineBuffer | undefined;
  #partial: Record<LogLine["stream"], Buffer[]> = { stdout: [], stderr: [] };
  #state: "none" | "running" | "ended" = "none";
  #instance = 0;
  #followers = new Set<{ line: (l: LogLine) => void; end: () => void }>();

  constructor(options: AppLogOptions) {
    this.#max = Math.max(1, options.maxBytes ?? 1024 * 1024);
    this.#previousMax = Math.max(0, options.previousBytes ?? 256 * 1024);
    this.#now = options.now;
  }

  /**
   * A new instance of the app starts: the current lines become the previous instance's. Returns
   * the new instance's number, for {@link end}.
   */
  begin(): number {
    if (this.#state !== "none") {
      this.end();
      this.#current.trim(this.#previousMax);
      this.#previous = this.#current;
      this.#current = new LineBuffer();
    }
    this.#state = "running";
    return ++this.#instance;
  }

  /**
   * The instance ended (with `instance`: only if that one is still the current one): a last
   * partial line is kept and every follower is ended.
   */
  end(instance?: number): void {
    if (instance !== undefined && instance !== this.#instance) return;
    for (const stream of ["stdout", "stderr"] as const) this.#flush(stream);
    if (this.#state === "running") this.#state = "ended";
    const followers = [...this.#followers];
    this.#followers.clear();
    for (const f of followers) f.end();
  }

  /** Output as it comes from the process. */
  append(chunk: Buffer, stream: LogLine["stream"] = "stdout"): void {
    let rest = chunk;
    for (;;) {
      const nl = rest.indexOf(0x0a);
      if (nl === -1) break;
      this.#partial[stream].push(rest.subarray(0, nl + 1));
      this.#flush(stream);
      rest = rest.subarray(nl + 1);
    }
    if (rest.length === 0) return;
    this.#partial[stream].push(rest);
    let joined = Buffer.concat(this.#partial[stream]);
    while (joined.length >= MAX_LINE_BYTES) {
      this.#add({ at: this.#now(), stream, text: joined.subarray(0, MAX_LINE_BYTES) });
      joined = joined.subarray(MAX_LINE_BYTES);
    }
    this.#partial[stream] = joined.length > 0 ? [joined] : [];
  }

  /** A whole line with its own time (the simulator's synthetic output); a newline is added. */
  appendLine(text: string, at: number, stream: LogLine["stream"] = "stdout"): void {
    this.#add({ at, stream, text: Buffer.from(`${text}\n`, "utf8") });
  }

  /** Lines kept, oldest first, filtered by `query`; undefined when there is no previous instance. */
  read(query: LogQuery = {}): LogLine[] | undefined {
    const buffer = query.previous ? this.#previous : this.#current;
    if (!buffer) return undefined;
    let lines = buffer.lines();
    // A line still being written is shown as far as it goes, as a container runtime's partial line.
    if (!query.previous) {
      for (const stream of ["stdout", "stderr"] as const) {
        const pending = this.#partial[stream];
        if (pending.length > 0) lines.push({ at: this.#now(), stream, text: Buffer.concat(pending) });
      }
    }
    if (query.sinceMs !== undefined) {
      const since = query.sinceMs;
      lines = lines.filter((l) => l.at >= since);
    }
    if (query.tailLines !== undefined) lines = query.tailLines <= 0 ? [] : lines.slice(-query.tailLines);
    return lines;
  }

  /**
   * Calls `line` for each line captured from now on and `end` once the current instance ends;
   * `end` is called at once when no instance is running. Returns the function that stops following.
   */
  follow(line: (l: LogLine) => void, end: () => void): () => void {
    if (this.#state !== "running") {
      end();
      return () => undefined;
    }
    const follower = { line, end };
    this.#followers.add(follower);
    return () => this.#followers.delete(follower);
  }

  /** Whether an instance is running (followers are kept). */
  get running(): boolean {
    return this.#state === "running";
  }

  /** The current instance's text; with `tailLines`, only that many last lines (one-shot `logs` commands). */
  text(tailLines?: number): string {
    const lines = this.read(tailLines === undefined ? {} : { tailLines }) ?? [];
    return Buffer.concat(lines.map((l) => l.text)).toString("utf8");
  }

  /** Bytes kept for the current and the previous instance. */
  get bytes(): number {
    return this.#current.bytes + (this.#previous?.bytes ?? 0);
  }

  #flush(stream: LogLine["stream"]): void {
    const pending = this.#partial[stream];
    if (pending.length === 0) return;
    this.#partial[stream] = [];
    this.#add({ at: this.#now(), stream, text: Buffer.concat(pending) });
  }

  #add(line: LogLine): void {
    this.#current.push(line);
    this.#current.trim(this.#max);
    for (const f of this.#followers) f.line(line);
  }
}

/** Lines in arrival order, with their byte total; the oldest are dropped by {@link trim}. */
class LineBuffer {
  #lines: LogLine[] = [];
  #head = 0;
  bytes = 0;

  push(line: LogLine): void {
    this.#lines.push(line);
    this.bytes += line.text.length;
  }

  trim(max: number): void {
    while (this.bytes > max) {
      const oldest = this.#lines[this.#head];
      if (!oldest) break;
      this.#head++;
      this.bytes -= oldest.text.length;
    }
    // Compact now and then, so dropped lines do not pin memory.
    if (this.#head > 1024 && this.#head * 2 > this.#lines.length) {
      this.#lines = this.#lines.slice(this.#head);
      this.#head = 0;
    }
  }

  lines(): LogLine[] {
    return this.#lines.slice(this.#head);
  }
}
