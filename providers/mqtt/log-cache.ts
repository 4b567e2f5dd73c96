/**
 * LogCache: the last log text devicelet received per container, so `kubectl logs` on a device that
 * is offline still shows something, marked as not live (docs/protocol.md § 3.9). Bounded twice:
 * at most `bytesPerContainer` of text per container (the newest whole lines) and at most
 * `containers` entries, the least recently used going first. A pod's entries go when the pod is
 * gone from its device (`forgetPod`): nothing serves them any more. Memory only: a restart forgets
 * it.
 *
 *   const cache = new LogCache({ bytesPerContainer: 65536, containers: 1000 });
 *   const writer = cache.writer(podUid, "app", { timestamps: true, full: true });
 *   writer.append("2026-03-01T12:00:00.000000000Z started\n");
 *   cache.get(podUid, "app"); // { text, timestamps, at }
 *   cache.forgetPod(podUid);
 */

export interface CachedLog {
  /** Whole lines, each ending in a newline. */
  readonly text: string;
  /** Whether each line starts with its RFC 3339 time and a space. */
  readonly timestamps: boolean;
  /** When the newest of this text arrived. */
  readonly at: Date;
}

export interface LogCacheOptions {
  readonly bytesPerContainer: number;
  readonly containers: number;
  readonly now?: () => Date;
}

/** What one session appends to; see {@link LogCache.writer}. */
export interface LogCacheWriter {
  append(text: string): void;
}

export class LogCache {
  readonly #o: LogCacheOptions;
  readonly #now: () => Date;
  /** By `<pod uid>/<container>`. Insertion order is recency: a touched entry is deleted and set again. */
  readonly #entries = new Map<string, CachedLog>();
  /** Each pod's keys in {@link LogCache.#entries}. */
  readonly #byPod = new Map<string, Set<string>>();

  constructor(options: LogCacheOptions) {
    this.#o = options;
    this.#now = options.now ?? (() => new Date());
  }

  get(podUid: string, container: string): CachedLog | undefined {
    const key = `${podUid}/${container}`;
    const entry = this.#entries.get(key);
    if (!entry) return undefined;
    this.#entries.delete(key);
    this.#entries.set(key, entry);
    return entry;
  }

  /**
   * A sink for one session's log text. A `full` session (the whole log: no tail, since, limit or
   * previous) replaces what is cached from its first line on; a partial one replaces it only once
   * it has received at least as much text, so `kubectl logs --tail 1` does not wipe a longer copy.
   */
  writer(
    podUid: string,
    container: string,
    o: { readonly timestamps: boolean; readonly full: boolean },
  ): LogCacheWriter {
    const key = `${podUid}/${container}`;
    let own = "";
    return {
      append: (text) => {
        if (this.#o.bytesPerContainer <= 0 || this.#o.containers <= 0 || text === "") return;
        own = trimToLines(own + text, this.#o.bytesPerContainer);
        const cached = this.#entries.get(key);
        if (!o.full && cached && cached.text.length > own.length) return;
        this.#set(podUid, key, { text: own, timestamps: o.timestamps, at: this.#now() });
      },
    };
  }

  /** Drops what is cached of a pod's containers (the pod is gone: nothing serves it any more). */
  forgetPod(podUid: string): void {
    for (const key of this.#byPod.get(podUid) ?? []) this.#entries.delete(key);
    this.#byPod.delete(podUid);
  }

  #set(podUid: string, key: string, entry: CachedLog): void {
    this.#entries.delete(key);
    this.#entries.set(key, entry);
    let keys = this.#byPod.get(podUid);
    if (!keys) this.#byPod.set(podUid, (keys = new Set()));
    keys.add(key);
    while (this.#entries.size > this.#o.containers) {
      const oldest = this.#entries.keys().next();
      if (oldest.done) break;
      this.#entries.delete(oldest.value);
      const uid = oldest.value.slice(0, oldest.value.indexOf("/"));
      const left = this.#byPod.get(uid);
      left?.delete(oldest.value);
      if (left?.size === 0) this.#byPod.delete(uid);
    }
  }

  get size(): number {
    return this.#entries.size;
  }
}

/** The newest whole lines of `text` that fit in `maxBytes` (UTF-8). */
function trimToLines(text: string, maxBytes: number): string {
  if (Buffer.byteLength(text) <= maxBytes) return text;
  const bytes = Buffer.from(text);
  const tail = bytes.subarray(bytes.length - maxBytes);
  const nl = tail.indexOf(0x0a);
  // A line longer than the whole budget keeps its end: better than nothing.
  return nl === -1 || nl === tail.length - 1 ? tail.toString("utf8") : tail.subarray(nl + 1).toString("utf8");
}

/**
 * What a cached log looks like for a request: its last `tailLines` lines, without the time prefix
 * unless asked for, lines before `since` dropped (only when the cached text has times), cut at
 * `limitBytes`.
 */
export function cachedView(
  log: CachedLog,
  o: {
    readonly tailLines?: number;
    readonly since?: Date;
    readonly timestamps?: boolean;
    readonly limitBytes?: number;
  },
): string {
  let lines = log.text.split("\n");
  if (lines.at(-1) === "") lines.pop();
  if (log.timestamps && o.since !== undefined) {
    const since = o.since.getTime();
    lines = lines.filter((line) => {
      const at = Date.parse(line.slice(0, line.indexOf(" ")));
      return Number.isNaN(at) || at >= since;
    });
  }
  if (o.tailLines !== undefined) lines = o.tailLines === 0 ? [] : lines.slice(-o.tailLines);
  if (log.timestamps && o.timestamps !== true) lines = lines.map((l) => l.slice(l.indexOf(" ") + 1));
  let text = lines.map((l) => `${l}\n`).join("");
  if (o.limitBytes !== undefined && Buffer.byteLength(text) > o.limitBytes) {
    text = Buffer.from(text).subarray(0, o.limitBytes).toString("utf8");
  }
  return text;
}
