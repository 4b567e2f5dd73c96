/** A bounded in-memory log of one simulated app, readable like `kubectl logs` (tail, since, follow). */
import type { LogOptions } from "../../src/provider/types.ts";

interface LogLine {
  readonly at: number;
  readonly text: string;
}

/** Oldest lines are dropped beyond this many. */
const MAX_LINES = 500;

export class AppLog {
  #lines: LogLine[] = [];
  #followers = new Set<(line: LogLine | undefined) => void>();
  #closed = false;

  append(at: number, text: string): void {
    const line = { at, text };
    this.#lines.push(line);
    if (this.#lines.length > MAX_LINES) this.#lines.splice(0, this.#lines.length - MAX_LINES);
    for (const f of this.#followers) f(line);
  }

  /** Ends every follower; later reads return what is buffered and end at once. */
  close(): void {
    this.#closed = true;
    for (const f of this.#followers) f(undefined);
    this.#followers.clear();
  }

  /**
   * Lines as `kubectl logs` prints them, each ending in `\n` (RFC 3339 timestamp first when asked).
   * With `follow`, keeps yielding new lines until {@link AppLog.close} or the consumer stops.
   */
  read(options: LogOptions, now: number): AsyncIterable<string> {
    const since = options.sinceSeconds === undefined ? -Infinity : now - options.sinceSeconds * 1000;
    let lines = this.#lines.filter((l) => l.at >= since);
    if (options.tailLines !== undefined) lines = options.tailLines > 0 ? lines.slice(-options.tailLines) : [];
    const format = (l: LogLine) =>
      options.timestamps ? `${new Date(l.at).toISOString()} ${l.text}\n` : `${l.text}\n`;
    const follow = options.follow === true && !this.#closed;
    const followers = this.#followers;
    const pending: LogLine[] = [];
    let ended = false;
    let wake: (() => void) | undefined;
    const listener = (line: LogLine | undefined) => {
      if (line === undefined) ended = true;
      else pending.push(line);
      wake?.();
    };
    if (follow) followers.add(listener); // before the first read, so nothing appended in between is lost

    return {
      async *[Symbol.asyncIterator]() {
        try {
          for (const l of lines) yield format(l);
          if (!follow) return;
          for (;;) {
            for (let l = pending.shift(); l !== undefined; l = pending.shift()) yield format(l);
            if (ended) return;
            await new Promise<void>((resolve) => (wake = resolve));
            wake = undefined;
          }
        } finally {
          followers.delete(listener);
        }
      },
    };
  }
}
