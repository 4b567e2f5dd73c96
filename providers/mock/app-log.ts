/**
 * The bounded in-memory log of one instance of a simulated app, read the way the kubelet serves
 * `kubectl logs`: tail, since, timestamps, a byte limit and follow. A restarted app starts a new
 * AppLog; the old one is kept as its previous instance (pod.ts).
 */
import type { LogOptions } from "../../src/provider/types.ts";

interface LogLine {
  readonly at: number;
  readonly text: string;
}

/** Oldest lines are dropped beyond this many. */
const MAX_LINES = 500;

/**
 * Up to this many lines, the arrays are copied one longer at each line rather than pushed to: a
 * push grows an array by 16 slots at least, and most logs hold two lines (pulling, started) for
 * the pod's whole life, 120 bytes a pod unused (a 5,000-pod heap snapshot).
 */
const EXACT_LINES = 16;

/** What {@link AppLog.read} takes: the kubelet's options, and a cut-off for a cached read. */
export interface AppLogRead extends Omit<LogOptions, "previous"> {
  /** Only lines written at or before this time (what devicelet had when the device went away); no follow. */
  readonly upTo?: number;
}

/**
 * The kubelet's `--timestamps` format (RFC 3339 with nine fraction digits, always nine, as
 * `RFC3339NanoFixed` in the kubelet's log code), in UTC.
 */
export const logTimestamp = (ms: number): string => new Date(ms).toISOString().replace(/Z$/, "000000Z");

export class AppLog {
  /**
   * Each line's time and text, in two arrays rather than one object per line: the times then sit
   * in the array unboxed, where a line object holds a boxed number besides itself (70 bytes a pod
   * for the two lines most logs hold, a 5,000-pod heap snapshot).
   */
  #at: number[] = [];
  #text: string[] = [];
  /** Made by the first follower: most logs are never followed, and there are one or two per pod. */
  #followers: Set<(line: LogLine | undefined) => void> | undefined;
  #closed = false;

  /** Whether the instance ended: reads no longer follow. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Adds a line; after {@link AppLog.close} it is kept but no follower sees it. */
  append(at: number, text: string): void {
    if (this.#at.length < EXACT_LINES) {
      this.#at = this.#at.concat(at);
      this.#text = this.#text.concat(text);
    } else {
      this.#at.push(at);
      this.#text.push(text);
    }
    if (this.#at.length > MAX_LINES) {
      this.#at.splice(0, this.#at.length - MAX_LINES);
      this.#text.splice(0, this.#text.length - MAX_LINES);
    }
    if (this.#followers) for (const f of this.#followers) f({ at, text });
  }

  /** Ends every follower (the instance ended); later reads return what is buffered and end at once. */
  close(): void {
    this.#closed = true;
    const followers = this.#followers;
    this.#followers = undefined;
    if (followers) for (const f of followers) f(undefined);
  }

  /**
   * Lines as `kubectl logs` prints them, each ending in `\n`. With `limitBytes`, whole lines until
   * the limit is reached (the last one may cross it: the kubelet API cuts there). With `follow`,
   * keeps yielding new lines until the log is closed or `signal` aborts. Lines appended between
   * this call and the first read are not lost. Nothing is held once `signal` aborted.
   */
  read(options: AppLogRead): AsyncIterable<string> {
    const since = options.since?.getTime() ?? -Infinity;
    const upTo = options.upTo ?? Infinity;
    let lines: LogLine[] = [];
    this.#at.forEach((at, i) => {
      if (at >= since && at <= upTo) lines.push({ at, text: this.#text[i] ?? "" });
    });
    if (options.tailLines !== undefined) lines = options.tailLines > 0 ? lines.slice(-options.tailLines) : [];
    const format = (l: LogLine) => (options.timestamps ? `${logTimestamp(l.at)} ${l.text}\n` : `${l.text}\n`);
    const { signal } = options;
    const follow = options.follow === true && options.upTo === undefined && !this.#closed && !signal.aborted;
    const followers = follow ? (this.#followers ??= new Set()) : undefined;
    const pending: LogLine[] = [];
    let ended = false;
    let wake: (() => void) | undefined;
    const listener = (line: LogLine | undefined) => {
      if (line === undefined) ended = true;
      else pending.push(line);
      wake?.();
    };
    const onAbort = () => {
      ended = true;
      followers?.delete(listener);
      wake?.();
    };
    if (followers) {
      followers.add(listener); // before the first read, so nothing appended in between is lost
      signal.addEventListener("abort", onAbort, { once: true });
    }
    let budget = options.limitBytes ?? Infinity;
    const take = (l: LogLine): string | undefined => {
      if (budget <= 0 || signal.aborted) return undefined;
      const text = format(l);
      budget -= Buffer.byteLength(text);
      return text;
    };

    return {
      async *[Symbol.asyncIterator]() {
        try {
          for (const l of lines) {
            const text = take(l);
            if (text === undefined) return;
            yield text;
          }
          if (!follow) return;
          for (;;) {
            for (let l = pending.shift(); l !== undefined; l = pending.shift()) {
              const text = take(l);
              if (text === undefined) return;
              yield text;
            }
            if (ended) return;
            await new Promise<void>((resolve) => (wake = resolve));
            wake = undefined;
          }
        } finally {
          followers?.delete(listener);
          signal.removeEventListener("abort", onAbort);
        }
      },
    };
  }
}
