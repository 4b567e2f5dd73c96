/**
 * Interactive sessions on the device side (docs/protocol.md § 3.9): `kubectl logs` and
 * `kubectl exec` reach a device as `io-open` on `{id}/io/{streamId}` and are answered on
 * `{id}/io/{streamId}/out`. The agent and the simulator share this code; only the runtime's hooks
 * (`appLog`, `startExec`; runtime.ts) differ.
 *
 *   const sessions = new IoSessions({ deviceId, runtime, send, capabilities, logger });
 *   sessions.handle(message);     // every decoded io-in message, in arrival order
 *   sessions.closeAll();          // link down or device stopping: everything stops, nothing is sent
 *
 * Sessions are not commands: never queued, never acked, never retried. What a device promises:
 * - Output goes out as `io-data` of at most `maxChunkBytes` decoded bytes, then one `io-end`; one
 *   seq series per stream from 0, sent in order (MQTT keeps QoS 1 order on one connection).
 * - `io-end` says why: an exit code (exec), nothing (a log read to its end), or an error reason:
 *   NotFound (no such pod or app, or no previous instance), Unsupported (no logs, exec or tty
 *   here), LimitReached (already `maxSessions` open, or followed output piling up faster than the
 *   link takes it), Cancelled (`io-cancel`), IdleTimeout (nothing heard for `idleSeconds`), Failed.
 * - Cancel and idle kill an exec's whole process group (the runtime's `kill`).
 * - A second `io-open` for a stream already open or recently ended (a QoS 1 duplicate) is ignored;
 *   so is anything for a stream that is not open. `io-stdin` is written in seq order; duplicates
 *   are dropped and a few early ones wait for the gap to fill.
 * - A slow link slows the source down: an exec's output is paused while more than 256 KiB wait
 *   for the broker; a log read waits between chunks.
 */
import type { Logger } from "pino";
import type { Readable } from "node:stream";
import {
  SESSION_DEFAULTS,
  type IoEndMessage as IoEnd,
  type IoInMessage as IoIn,
  type IoOpenMessage as IoOpen,
  type IoOutMessage as IoOut,
} from "../protocol/types.ts";
import { systemClock, type Clock } from "../base/clock.ts";
import type { LogLine } from "./log-ring.ts";
import { RuntimeRefusal, type Runtime, type RuntimeExec } from "./runtime.ts";

export interface IoCapabilities {
  readonly logs: boolean;
  readonly exec: boolean;
  readonly tty: boolean;
}

export interface IoSessionsOptions {
  readonly deviceId: string;
  readonly runtime: Runtime;
  /** Publishes on the stream's out topic (QoS 1); resolves once the broker has it, rejects when it cannot. */
  readonly send: (message: IoOut) => Promise<void>;
  /** What the birth announced; anything else is refused Unsupported. */
  readonly capabilities: IoCapabilities;
  /** Sessions open at once (the birth's `capabilities.maxSessions`); more are refused LimitReached. Default 8. */
  readonly maxSessions?: number;
  readonly clock?: Clock;
  readonly logger: Logger;
}

/** Bytes waiting for the broker above which sources are paused. */
const HIGH_WATER = 256 * 1024;
/** Followed log output waiting above this ends the session (LimitReached). */
const FOLLOW_BACKLOG = 4 * 1024 * 1024;
/** Ended stream ids remembered, to ignore a redelivered io-open. */
const REMEMBERED = 256;
/** io-stdin messages held while an earlier seq is missing. */
const STDIN_AHEAD = 64;

type EndBody = Pick<IoEnd, "exitCode" | "error">;

export class IoSessions {
  readonly #o: IoSessionsOptions;
  readonly #clock: Clock;
  readonly #open = new Map<string, Session>();
  readonly #ended = new Set<string>();

  constructor(options: IoSessionsOptions) {
    this.#o = options;
    this.#clock = options.clock ?? systemClock;
  }

  /** Sessions open now. */
  get size(): number {
    return this.#open.size;
  }

  handle(message: IoIn): void {
    const session = this.#open.get(message.streamId);
    if (message.kind !== "io-open") {
      session?.input(message);
      return;
    }
    if (session || this.#ended.has(message.streamId)) return;
    const created = new Session(message, {
      ...this.#o,
      clock: this.#clock,
      done: (id) => {
        this.#open.delete(id);
        this.#ended.add(id);
        if (this.#ended.size > REMEMBERED) {
          const oldest = this.#ended.values().next();
          if (!oldest.done) this.#ended.delete(oldest.value);
        }
      },
    });
    const max = this.#o.maxSessions ?? SESSION_DEFAULTS.maxSessions;
    if (this.#open.size >= max) {
      created.refuse("LimitReached", `this device runs at most ${max} logs and exec sessions at once`);
      return;
    }
    this.#open.set(message.streamId, created);
    created.start();
  }

  /** Stops every session at once without sending anything (the link is down, or the device stops). */
  closeAll(): void {
    for (const session of [...this.#open.values()]) session.abandon();
  }
}

interface SessionContext extends IoSessionsOptions {
  readonly clock: Clock;
  readonly done: (streamId: string) => void;
}

/** One stream: its seq series, its idle timer, its logs reader or exec process. */
class Session {
  readonly #open: IoOpen;
  readonly #c: SessionContext;
  readonly #log: Logger;
  readonly #chunk: number;
  #seq = 0;
  #ended = false;
  #idle: unknown;
  #inflight = 0;
  #drainWaiters: (() => void)[] = [];
  #exec: RuntimeExec | undefined;
  #stdinNext = 0;
  readonly #stdinAhead = new Map<number, Extract<IoIn, { kind: "io-stdin" }>>();
  #stopFollow: (() => void) | undefined;

  constructor(open: IoOpen, context: SessionContext) {
    this.#open = open;
    this.#c = context;
    this.#chunk = Math.max(1, open.maxChunkBytes);
    this.#log = context.logger.child({ streamId: open.streamId, session: open.type });
  }

  /** Answers at once (an empty io-data when nothing else is ready: devicelet waits only briefly for a first word). */
  start(): void {
    this.#touch();
    try {
      if (this.#open.type === "logs") this.#startLogs();
      else this.#startExec();
    } catch (err) {
      const reason = err instanceof RuntimeRefusal ? err.reason : "Failed";
      this.#end({ error: { reason, message: messageOf(err) } });
    }
  }

  refuse(reason: string, message: string): void {
    this.#end({ error: { reason, message } });
  }

  input(message: Exclude<IoIn, IoOpen>): void {
    if (this.#ended) return;
    this.#touch();
    switch (message.kind) {
      case "io-cancel":
        this.#stop();
        this.#end({ error: { reason: "Cancelled", message: message.message ?? "cancelled by devicelet" } });
        return;
      case "io-stdin":
        this.#stdin(message);
        return;
      // No terminal here (tty sessions are refused at open), so a size has nothing to change.
      case "io-resize":
      case "io-keepalive":
        return;
    }
  }

  /** The link is gone: stop, say nothing. */
  abandon(): void {
    this.#stop();
    this.#finish();
  }

  #startLogs(): void {
    const { podUid, app } = this.#open;
    const o = this.#open.logs ?? {};
    if (!this.#c.capabilities.logs || !this.#c.runtime.appLog)
      throw new RuntimeRefusal("Unsupported", "this device does not serve logs");
    const view = this.#c.runtime.appLog(podUid, app);
    const sinceMs = o.sinceTime === undefined ? undefined : Date.parse(o.sinceTime);
    const lines = view.read({
      ...(o.previous ? { previous: true } : {}),
      ...(o.tailLines === undefined ? {} : { tailLines: o.tailLines }),
      ...(sinceMs === undefined ? {} : { sinceMs }),
    });
    if (!lines)
      throw new RuntimeRefusal("NotFound", `previous terminated app "${app}" in pod "${podUid}" not found`);
    let remaining = o.limitBytes ?? Number.POSITIVE_INFINITY;
    const format = (line: LogLine): Buffer => {
      const text = o.timestamps
        ? Buffer.concat([Buffer.from(`${rfc3339Nano(line.at)} `), line.text])
        : line.text;
      const cut = text.length > remaining ? text.subarray(0, remaining) : text;
      remaining -= cut.length;
      return cut;
    };
    const backlog: Buffer[] = [];
    let backlogBytes = 0;
    let appEnded = false;
    let pumping = false;
    const pump = async () => {
      if (pumping) return;
      pumping = true;
      while (backlog.length > 0 && !this.#ended) {
        let size = 0;
        let take = 0;
        while (take < backlog.length && size < this.#chunk) size += backlog[take++]?.length ?? 0;
        const joined = Buffer.concat(backlog.splice(0, take));
        backlogBytes -= joined.length;
        // What does not fit this chunk goes back to the front.
        if (joined.length > this.#chunk) {
          backlog.unshift(joined.subarray(this.#chunk));
          backlogBytes += joined.length - this.#chunk;
        }
        this.#data("log", joined.subarray(0, this.#chunk));
        await this.#drained();
      }
      pumping = false;
      if (this.#ended) return;
      if (remaining <= 0 || appEnded || !o.follow) {
        this.#stopFollow?.();
        this.#end({});
      }
    };
    const push = (line: LogLine) => {
      if (this.#ended || remaining <= 0) return;
      const bytes = format(line);
      backlog.push(bytes);
      backlogBytes += bytes.length;
      if (backlogBytes > FOLLOW_BACKLOG) {
        this.#stop();
        this.#end({
          error: { reason: "LimitReached", message: "log lines come faster than the link takes them" },
        });
        return;
      }
      void pump();
    };
    // Read and subscribe in one turn, so no line falls between them.
    if (o.follow && !o.previous) {
      this.#stopFollow = view.follow(push, () => {
        appEnded = true;
        void pump();
      });
    }
    // Something goes out at once: a follow with nothing to show yet says it has started.
    if (lines.length === 0) this.#emit({ kind: "io-data", stream: "log", data: "" }, 0);
    for (const line of lines) {
      if (remaining <= 0) break;
      const bytes = format(line);
      backlog.push(bytes);
      backlogBytes += bytes.length;
    }
    void pump();
  }

  #startExec(): void {
    const { podUid, app } = this.#open;
    const request = this.#open.exec;
    if (!this.#c.capabilities.exec || !this.#c.runtime.startExec || !request)
      throw new RuntimeRefusal("Unsupported", "this device does not run exec sessions");
    if (request.tty && !this.#c.capabilities.tty)
      throw new RuntimeRefusal(
        "Unsupported",
        "this device has no terminal support (tty); run the command without -t",
      );
    const exec = this.#c.runtime.startExec(podUid, app, { command: request.command, stdin: request.stdin });
    this.#exec = exec;
    this.#emit({ kind: "io-data", stream: "stdout", data: "" }, 0);
    const forward = (source: Readable, stream: "stdout" | "stderr", wanted: boolean) =>
      new Promise<void>((resolve) => {
        source.on("data", (chunk: Buffer) => {
          if (!wanted || this.#ended) return;
          this.#data(stream, chunk);
          if (this.#inflight > HIGH_WATER) {
            source.pause();
            void this.#drained().then(() => source.resume());
          }
        });
        source.once("close", resolve);
        source.once("end", resolve);
        source.once("error", () => resolve());
      });
    const outputs = Promise.all([
      forward(exec.stdout, "stdout", request.stdout),
      forward(exec.stderr, "stderr", request.stderr),
    ]);
    exec.stdin?.on("error", (err: Error) => {
      // The command closed its input early (EPIPE): what is left of the client's input is dropped.
      this.#log.debug({ err: err.message }, "stdin of an exec session closed");
    });
    void Promise.all([exec.exited, outputs]).then(([exitCode]) => {
      if (!this.#ended) this.#end({ exitCode });
    });
  }

  #stdin(message: Extract<IoIn, { kind: "io-stdin" }>): void {
    if (message.seq < this.#stdinNext) return;
    if (message.seq > this.#stdinNext) {
      if (this.#stdinAhead.size < STDIN_AHEAD) this.#stdinAhead.set(message.seq, message);
      return;
    }
    let next: Extract<IoIn, { kind: "io-stdin" }> | undefined = message;
    while (next) {
      this.#stdinNext++;
      const stdin = this.#exec?.stdin;
      if (stdin && !stdin.writableEnded) {
        if (next.data.length > 0) stdin.write(Buffer.from(next.data, "base64"));
        if (next.eof) stdin.end();
      }
      this.#stdinAhead.delete(this.#stdinNext - 1);
      next = this.#stdinAhead.get(this.#stdinNext);
    }
  }

  /** Stops what produces output: the exec's process group, the log follower. */
  #stop(): void {
    this.#stopFollow?.();
    this.#stopFollow = undefined;
    this.#exec?.kill();
  }

  #touch(): void {
    const { clock } = this.#c;
    clock.clearTimeout(this.#idle);
    this.#idle = clock.setTimeout(() => {
      this.#stop();
      this.#end({
        error: {
          reason: "IdleTimeout",
          message: `nothing heard from devicelet for ${this.#open.idleSeconds}s`,
        },
      });
    }, this.#open.idleSeconds * 1000);
  }

  #data(stream: "stdout" | "stderr" | "log", bytes: Buffer): void {
    for (let at = 0; at < bytes.length; at += this.#chunk) {
      const piece = bytes.subarray(at, at + this.#chunk);
      this.#emit({ kind: "io-data", stream, data: piece.toString("base64") }, piece.length);
    }
  }

  #end(body: EndBody): void {
    if (this.#ended) return;
    this.#emit({ kind: "io-end", ...body }, 0);
    this.#finish();
  }

  #finish(): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#c.clock.clearTimeout(this.#idle);
    this.#c.done(this.#open.streamId);
    for (const waiter of this.#drainWaiters.splice(0)) waiter();
  }

  #emit(
    body:
      | Omit<Extract<IoOut, { kind: "io-data" }>, "protocol" | "deviceId" | "streamId" | "seq">
      | (EndBody & { kind: "io-end" }),
    bytes: number,
  ): void {
    const message = {
      protocol: 1,
      deviceId: this.#c.deviceId,
      streamId: this.#open.streamId,
      seq: this.#seq++,
      ...body,
    } as IoOut;
    this.#inflight += bytes;
    const settle = () => {
      this.#inflight -= bytes;
      if (this.#inflight <= HIGH_WATER / 2) for (const waiter of this.#drainWaiters.splice(0)) waiter();
    };
    this.#c.send(message).then(settle, (err: unknown) => {
      settle();
      if (this.#ended) return;
      this.#log.debug({ err: messageOf(err) }, "session output could not be sent; ending it");
      this.abandon();
    });
  }

  /** Resolves once little enough waits for the broker (at once when the session has ended). */
  #drained(): Promise<void> {
    if (this.#inflight <= HIGH_WATER / 2 || this.#ended) return Promise.resolve();
    return new Promise((resolve) => this.#drainWaiters.push(resolve));
  }
}

const messageOf = (err: unknown): string => (err instanceof Error ? err.message : String(err));

/**
 * RFC 3339 with nine fraction digits, as the kubelet prefixes log lines with `timestamps=true`
 * (its output format is fixed-width nanoseconds). Capture times are milliseconds here.
 */
export function rfc3339Nano(ms: number): string {
  return new Date(ms).toISOString().replace(/\.(\d{3})Z$/, ".$1000000Z");
}
