/**
 * IoSessions: devicelet's side of logs and exec sessions with devices (docs/protocol.md § 3.9).
 * It opens a session with `io-open` on `{id}/io/{streamId}`, keeps it alive with `io-keepalive`,
 * passes the client's stdin and terminal sizes on, puts the device's `io-data` back in seq order
 * (dropping duplicates) and ends on `io-end`, on `io-cancel` (the client went away, a limit), or
 * on devicelet's own timeouts: no answer to `io-open`, a seq gap that stays open, the device going
 * away. Whoever asked gets a provider error naming the device, never a hang.
 *
 * It knows nothing of pods: device-io.ts resolves the pod, checks that the device is online and
 * announced the capability, and calls {@link IoSessions.logs} or {@link IoSessions.exec}.
 * Inbound hands it every decoded `io-data`/`io-end` ({@link IoSessions.deliver}).
 *
 *   const sessions = new IoSessions({ limits, publish, logCache, metrics, logger });
 *   const stream = await sessions.logs({ deviceId, podUid, app, options });
 *   const { exitCode } = await sessions.exec({ deviceId, podUid, app, command, io });
 *   sessions.deviceAway("gw-1", "device gw-1 went offline");
 */
import { randomBytes } from "node:crypto";
import type { Logger } from "pino";
import { encodeMessage } from "../../src/protocol/codec.ts";
import { topics } from "../../src/protocol/topics.ts";
import type { IoEndMessage, IoInMessage, IoOpenMessage, IoOutMessage } from "../../src/protocol/types.ts";
import { notFound, transient, unsupported } from "../../src/provider/errors.ts";
import type { ExecIO, LogOptions, LogStream } from "../../src/provider/types.ts";
import { SeqOrder, TextQueue } from "./io-queue.ts";
import type { LogCache } from "./log-cache.ts";
import type { MqttMetrics } from "./metrics.ts";

/** The limits of docs/protocol.md § 3.9, from the provider config's `sessions`. */
export interface SessionLimits {
  readonly maxPerDevice: number;
  readonly idleSeconds: number;
  readonly openTimeoutSeconds: number;
  readonly gapTimeoutSeconds: number;
  /** What a logs session without follow sends at most (limitBytes may lower it). */
  readonly maxLogBytes: number;
  /** Output held for a client (unread, or waiting behind a seq gap) before the session is ended. */
  readonly maxBufferedBytes: number;
  readonly maxChunkBytes: number;
}

export interface IoSessionsOptions {
  readonly limits: SessionLimits;
  /** QoS 1, not retained; resolves at PUBACK. */
  readonly publish: (topic: string, payload: Buffer) => Promise<void>;
  readonly logCache: LogCache;
  readonly metrics: MqttMetrics;
  readonly logger: Logger;
  readonly newStreamId?: () => string;
}

export interface SessionTarget {
  readonly deviceId: string;
  readonly podUid: string;
  readonly app: string;
  /** Sessions the device runs at once (the smaller of the config and its birth). */
  readonly maxSessions: number;
}

/** Largest io-stdin payload, before base64 (docs/protocol.md § 3.9). */
const STDIN_CHUNK = 32 * 1024;

/** What a session does with what the device sends, once in order. */
interface SessionSink {
  /** The device took the session: its first io-data (even empty), or an io-end without error. */
  opened?(): void;
  data(stream: "stdout" | "stderr" | "log", bytes: Buffer): void;
  /** The device's io-end. */
  end(message: IoEndMessage): void;
  /** devicelet ended it: timeout, gap, device away, publish failure, limit. */
  fail(error: Error): void;
}

/** The provider error for a device's io-end error (docs/protocol.md § 3.9). */
export function endError(deviceId: string, error: NonNullable<IoEndMessage["error"]>): Error {
  const text = `device ${deviceId}: ${error.message || error.reason}`;
  if (error.reason === "NotFound") return notFound(text);
  if (error.reason === "Unsupported") return unsupported(text);
  return transient(`${text} (${error.reason})`);
}

class Session {
  readonly streamId: string;
  readonly deviceId: string;
  readonly #owner: IoSessions;
  readonly #sink: SessionSink;
  readonly #order: SeqOrder<IoOutMessage>;
  #openTimer: NodeJS.Timeout | undefined;
  #gapTimer: NodeJS.Timeout | undefined;
  #keepalive: NodeJS.Timeout | undefined;
  #done = false;
  #opened = false;

  constructor(o: {
    owner: IoSessions;
    streamId: string;
    deviceId: string;
    sink: SessionSink;
    limits: SessionLimits;
  }) {
    this.#owner = o.owner;
    this.streamId = o.streamId;
    this.deviceId = o.deviceId;
    this.#sink = o.sink;
    this.#order = new SeqOrder({
      maxPendingBytes: o.limits.maxBufferedBytes,
      size: (m) => (m.kind === "io-data" ? m.data.length : 0),
    });
    const { openTimeoutSeconds, idleSeconds } = o.limits;
    this.#openTimer = setTimeout(
      () =>
        this.fail(
          transient(`device ${this.deviceId} did not answer the session within ${openTimeoutSeconds} s`),
          "NoAnswer",
        ),
      openTimeoutSeconds * 1000,
    );
    this.#keepalive = setInterval(
      () => void this.send({ kind: "io-keepalive" }),
      Math.max(1000, (idleSeconds * 1000) / 3),
    );
    this.#openTimer.unref();
    this.#keepalive.unref();
  }

  get done(): boolean {
    return this.#done;
  }

  /** Publishes one input message; a failed publish ends the session. */
  send(message: DistributiveOmit<IoInMessage, "protocol" | "deviceId" | "streamId">): Promise<void> {
    if (this.#done) return Promise.resolve();
    const full = { protocol: 1, deviceId: this.deviceId, streamId: this.streamId, ...message } as IoInMessage;
    return this.#owner.publish(this.deviceId, this.streamId, full).catch((err: unknown) => {
      this.fail(transient(`could not reach device ${this.deviceId}: ${(err as Error).message}`));
    });
  }

  deliver(message: IoOutMessage): void {
    if (this.#done) return;
    clearTimeout(this.#openTimer);
    let ready: readonly IoOutMessage[];
    try {
      const put = this.#order.put(message.seq, message);
      if (put.duplicate) this.#owner.metrics.inc("stale");
      ready = put.ready;
    } catch {
      this.fail(
        transient(`device ${this.deviceId} sent output faster than the client reads`),
        "OutputTooFast",
      );
      return;
    }
    for (const m of ready) {
      // A sink may end the session (a limit reached) while earlier messages are handed over.
      if (this.done) return;
      if (!this.#opened && (m.kind === "io-data" || !m.error)) {
        this.#opened = true;
        this.#sink.opened?.();
      }
      if (m.kind === "io-end") {
        this.#finish();
        this.#sink.end(m);
        return;
      }
      if (m.data !== "") this.#sink.data(m.stream, Buffer.from(m.data, "base64"));
    }
    this.#armGap();
  }

  #armGap(): void {
    if (!this.#order.waiting()) {
      clearTimeout(this.#gapTimer);
      this.#gapTimer = undefined;
      return;
    }
    if (this.#gapTimer) return;
    const seconds = this.#owner.limits.gapTimeoutSeconds;
    this.#gapTimer = setTimeout(() => {
      this.fail(
        transient(
          `device ${this.deviceId}: session output seq ${this.#order.next} never arrived (waited ${seconds} s)`,
        ),
        "Failed",
      );
    }, seconds * 1000);
    this.#gapTimer.unref();
  }

  /**
   * Ends the session from devicelet's side: tells the device (io-cancel with `reason`, unless the
   * device cannot hear it any more) and the sink.
   */
  fail(error: Error, reason?: string): void {
    if (this.#done) return;
    if (reason !== undefined) void this.#cancel(reason, error.message);
    this.#finish();
    this.#sink.fail(error);
  }

  /** Ends the session because the client is done with it (gone, or a limit reached cleanly). */
  cancel(reason: string, message: string): void {
    if (this.#done) return;
    void this.#cancel(reason, message);
    this.#finish();
  }

  #cancel(reason: string, message: string): Promise<void> {
    return this.#owner
      .publish(this.deviceId, this.streamId, {
        protocol: 1,
        kind: "io-cancel",
        deviceId: this.deviceId,
        streamId: this.streamId,
        reason,
        message: message.slice(0, 4096),
      })
      .catch(() => undefined);
  }

  #finish(): void {
    this.#done = true;
    clearTimeout(this.#openTimer);
    clearTimeout(this.#gapTimer);
    clearInterval(this.#keepalive);
    this.#owner.forget(this);
  }
}

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

export class IoSessions {
  readonly #o: IoSessionsOptions;
  readonly #sessions = new Map<string, Session>();
  readonly #perDevice = new Map<string, Set<Session>>();

  constructor(options: IoSessionsOptions) {
    this.#o = options;
  }

  get limits(): SessionLimits {
    return this.#o.limits;
  }

  get metrics(): MqttMetrics {
    return this.#o.metrics;
  }

  /** Open sessions of a device. */
  count(deviceId: string): number {
    return this.#perDevice.get(deviceId)?.size ?? 0;
  }

  /**
   * Opens a logs session and resolves once the device answered with its first output (or an
   * empty log): a refusal rejects with the matching provider error. Text is passed on in whole
   * lines, cut at `limitBytes` (or the configured cap without follow), and copied into the log
   * cache under the pod and app.
   */
  logs(target: SessionTarget & { readonly options: LogOptions }): Promise<LogStream> {
    const { options } = target;
    const { limits, logCache } = this.#o;
    const limit = Math.min(
      options.limitBytes ?? Infinity,
      options.follow === true ? Infinity : limits.maxLogBytes,
    );
    const full =
      options.tailLines === undefined &&
      options.since === undefined &&
      options.limitBytes === undefined &&
      options.previous !== true;
    const cache =
      options.previous === true
        ? undefined
        : logCache.writer(target.podUid, target.app, { timestamps: options.timestamps === true, full });
    const decoder = new TextDecoder("utf-8");
    let partial = "";
    let sent = 0;
    let answered = false;
    let session: Session | undefined;
    const queue = new TextQueue({
      onReturn: () => session?.cancel("ClientGone", "the client stopped reading"),
    });
    return new Promise<LogStream>((resolve, reject) => {
      const answer = () => {
        if (answered) return;
        answered = true;
        resolve({ chunks: queue });
      };
      const pass = (text: string) => {
        if (text === "") return;
        cache?.append(text);
        const bytes = Buffer.from(text);
        if (sent + bytes.length >= limit) {
          queue.push(bytes.subarray(0, limit - sent).toString("utf8"));
          sent = limit;
          session?.cancel("LimitReached", `the client asked for at most ${limit} bytes`);
          queue.end();
          return;
        }
        sent += bytes.length;
        queue.push(text);
        if (queue.bytes > limits.maxBufferedBytes) {
          session?.fail(transient("output faster than the client reads"), "OutputTooFast");
        }
      };
      const fail = (error: Error) => {
        if (answered) queue.fail(error);
        else reject(error);
      };
      session = this.#open(target, {
        open: {
          type: "logs",
          logs: {
            ...(options.tailLines === undefined ? {} : { tailLines: options.tailLines }),
            ...(options.since === undefined ? {} : { sinceTime: options.since.toISOString() }),
            ...(options.timestamps === undefined ? {} : { timestamps: options.timestamps }),
            ...(options.limitBytes === undefined ? {} : { limitBytes: options.limitBytes }),
            ...(options.follow === undefined ? {} : { follow: options.follow }),
            ...(options.previous === undefined ? {} : { previous: options.previous }),
          },
        },
        sink: {
          opened: answer,
          data: (_stream, bytes) => {
            const text = partial + decoder.decode(bytes, { stream: true });
            const nl = text.lastIndexOf("\n");
            partial = text.slice(nl + 1);
            pass(text.slice(0, nl + 1));
          },
          end: (message) => {
            if (message.error) {
              fail(endError(target.deviceId, message.error));
              return;
            }
            pass(partial + decoder.decode());
            partial = "";
            queue.end();
          },
          fail,
        },
        signal: options.signal,
        onAbort: () => {
          queue.end();
          fail(transient(`logs of device ${target.deviceId} cancelled: the client went away`));
        },
      });
    });
  }

  /**
   * Runs a command on the device and resolves with its exit code once the device's io-end came
   * (all output before it has been written to `io`). Stdin and terminal sizes are passed on as
   * they come; the client going away (`io.signal`) cancels the command.
   */
  exec(target: SessionTarget & { readonly command: readonly string[]; readonly io: ExecIO }): Promise<{
    readonly exitCode: number;
  }> {
    const { io } = target;
    return new Promise((resolve, reject) => {
      const session = this.#open(target, {
        open: {
          type: "exec",
          exec: {
            command: [...target.command],
            stdin: io.stdin !== undefined,
            stdout: io.stdout !== undefined,
            stderr: io.stderr !== undefined,
            tty: io.tty,
          },
        },
        sink: {
          data: (stream, bytes) => {
            if (stream === "stderr") io.stderr?.(bytes);
            else io.stdout?.(bytes);
          },
          end: (message) => {
            if (message.error) reject(endError(target.deviceId, message.error));
            else if (message.exitCode === undefined)
              reject(transient(`device ${target.deviceId} ended the exec without an exit code`));
            else resolve({ exitCode: message.exitCode });
          },
          fail: reject,
        },
        signal: io.signal,
        onAbort: () => reject(transient(`exec on device ${target.deviceId} cancelled: the client went away`)),
      });
      if (io.stdin) void pumpStdin(session, io.stdin);
      if (io.tty && io.resize) void pumpResize(session, io.resize);
    });
  }

  #open(
    target: SessionTarget,
    o: {
      readonly open: Pick<IoOpenMessage, "type" | "logs" | "exec">;
      readonly sink: SessionSink;
      readonly signal: AbortSignal;
      readonly onAbort: () => void;
    },
  ): Session {
    const { deviceId } = target;
    if (this.count(deviceId) >= target.maxSessions) {
      throw transient(
        `device ${deviceId} already runs ${this.count(deviceId)} sessions, the most it takes; try again later`,
      );
    }
    const streamId = this.#o.newStreamId?.() ?? `s-${randomBytes(8).toString("hex")}`;
    const session = new Session({
      owner: this,
      streamId,
      deviceId,
      sink: o.sink,
      limits: this.#o.limits,
    });
    this.#sessions.set(streamId, session);
    let set = this.#perDevice.get(deviceId);
    if (!set) this.#perDevice.set(deviceId, (set = new Set()));
    set.add(session);
    this.#o.metrics.inc("sessionsOpened");
    if (o.signal.aborted) {
      session.cancel("ClientGone", "the client went away");
      o.onAbort();
      return session;
    }
    o.signal.addEventListener(
      "abort",
      () => {
        if (session.done) return;
        session.cancel("ClientGone", "the client went away");
        o.onAbort();
      },
      { once: true },
    );
    void session.send({
      kind: "io-open",
      type: o.open.type,
      podUid: target.podUid,
      app: target.app,
      ...(o.open.logs ? { logs: o.open.logs } : {}),
      ...(o.open.exec ? { exec: o.open.exec } : {}),
      maxChunkBytes: this.#o.limits.maxChunkBytes,
      idleSeconds: this.#o.limits.idleSeconds,
    });
    return session;
  }

  /** @internal Used by sessions. */
  publish(deviceId: string, streamId: string, message: IoInMessage): Promise<void> {
    return this.#o.publish(topics.ioIn(deviceId, streamId), encodeMessage(message));
  }

  /** @internal A session ended. */
  forget(session: Session): void {
    this.#sessions.delete(session.streamId);
    const set = this.#perDevice.get(session.deviceId);
    set?.delete(session);
    if (set?.size === 0) this.#perDevice.delete(session.deviceId);
  }

  /**
   * One decoded io-data or io-end from a device. False when no open session has that stream (late
   * output of a session devicelet ended, or of an earlier devicelet process): the caller counts it.
   */
  deliver(deviceId: string, message: IoOutMessage): boolean {
    const session = this.#sessions.get(message.streamId);
    if (!session || session.deviceId !== deviceId) return false;
    session.deliver(message);
    return true;
  }

  /** The device went away (offline, lost, sleeping) or was born again: its sessions are over. */
  deviceAway(deviceId: string, why: string): void {
    for (const session of [...(this.#perDevice.get(deviceId) ?? [])]) session.fail(transient(why));
  }

  /** Ends every session (devicelet lost its broker connection, or is stopping). */
  endAll(why: string): void {
    for (const session of [...this.#sessions.values()]) session.fail(transient(why));
  }
}

async function pumpStdin(session: Session, stdin: AsyncIterable<Uint8Array>): Promise<void> {
  let seq = 0;
  try {
    for await (const chunk of stdin) {
      for (let at = 0; at < chunk.length; at += STDIN_CHUNK) {
        if (session.done) return;
        const data = Buffer.from(chunk.subarray(at, at + STDIN_CHUNK)).toString("base64");
        // Waiting for each PUBACK keeps stdin at the pace the broker takes it.
        await session.send({ kind: "io-stdin", seq: seq++, data });
      }
    }
  } catch {
    // The client's stdin broke: end the command's input as if it had closed.
  }
  if (!session.done) await session.send({ kind: "io-stdin", seq, data: "", eof: true });
}

async function pumpResize(
  session: Session,
  sizes: AsyncIterable<{ readonly width: number; readonly height: number }>,
): Promise<void> {
  try {
    for await (const size of sizes) {
      if (session.done) return;
      const width = Math.min(65535, Math.max(1, Math.round(size.width)));
      const height = Math.min(65535, Math.max(1, Math.round(size.height)));
      await session.send({ kind: "io-resize", width, height });
    }
  } catch {
    // No more sizes: the terminal keeps its last one.
  }
}
