/**
 * CommandQueue: one-shot requests to devices (restart an app, reboot, exec), kept apart from
 * desired state (docs/architecture.md, decision 4). Each device has a bounded queue; a command lives until its
 * time to live ends. It is published (QoS 1, not retained, MQTT 5 message expiry) while the device
 * is online and held while it is not; held commands go out when the device is born again, and a
 * command the device never acknowledged receiving is sent again then (devices de-duplicate by
 * command id). Expiry — still queued, or acknowledged `expired` by the device — is reported through
 * `onExpired` (the provider records a `CommandExpired` Event). A device whose birth announces
 * `capabilities.commandTtl` gets each copy with `ttlSeconds`, the whole seconds left at that
 * publish (docs/protocol.md § 7), so a device without a clock can honour the time to live; others
 * get the message without it, as their (closed) schema expects.
 *
 * Every queue is also kept in the durable store (command-store.ts), so commands waiting for an
 * offline device survive a devicelet restart: `restore()` at start takes them back, still bounded
 * by the queue limit and with their absolute expiry (a command that expired while devicelet was
 * down is reported expired, never sent). Their requester is gone with the old process: how they
 * end is logged, and failures and expiry still become Events. The request, result and message
 * shapes, and the Event built from a command, are in command-types.ts.
 *
 *   const q = new CommandQueue({ limit: 50, store, publish, isOnline, onExpired, onFailed, metrics });
 *   await q.restore();
 *   const result = await q.send("gw-1", { command: "restart-app", podUid }, { ttlSeconds: 60 });
 *   result.stage; // "done" | "failed" | "expired"
 */
import { randomBytes } from "node:crypto";
import type { Logger } from "pino";
import { retryDelay } from "../../src/base/backoff.ts";
import { encodeMessage } from "../../src/protocol/codec.ts";
import { topics } from "../../src/protocol/topics.ts";
import type { CommandMessage } from "../../src/protocol/types.ts";
import { transient } from "../../src/provider/errors.ts";
import type { DurableStore, PodRef } from "../../src/provider/types.ts";
import { CommandStore, type StoredCommand } from "./command-store.ts";
import {
  ackResult,
  commandMessage,
  type CommandAck,
  type CommandRequest,
  type CommandResult,
  type PendingCommand,
} from "./command-types.ts";
import type { MqttMetrics } from "./metrics.ts";

export type { CommandAck, CommandRequest, CommandResult, PendingCommand } from "./command-types.ts";

export interface CommandQueueOptions {
  readonly limit: number;
  readonly store: DurableStore;
  readonly publish: (topic: string, payload: Buffer, messageExpirySeconds: number) => Promise<void>;
  readonly isOnline: (deviceId: string) => boolean;
  /** Whether the device's birth says it understands `ttlSeconds` (default: no device does). */
  readonly understandsTtl?: (deviceId: string) => boolean;
  /** A command expired (queued, or as the device said); `why` is a sentence for the Event. */
  readonly onExpired: (command: PendingCommand, why: string) => void;
  readonly onFailed: (command: PendingCommand, ack: CommandAck) => void;
  readonly metrics: MqttMetrics;
  readonly logger: Logger;
  readonly now?: () => number;
  /**
   * `ProviderContext.owns`: `restore` takes back only the commands of this shard's devices; the
   * others' stay in the shared store for their owner (default: every device's).
   */
  readonly owns?: (deviceId: string) => boolean;
}

/** After the device acknowledged receipt, how long past expiry to wait for its result. */
const RESULT_GRACE_MS = 60_000;

/** The schema's bound for `ttlSeconds` (a year). */
const MAX_TTL_SECONDS = 365 * 24 * 3600;

export class CommandQueue {
  readonly #o: CommandQueueOptions;
  readonly #now: () => number;
  readonly #byDevice = new Map<string, Map<string, PendingCommand>>();
  readonly #durable: CommandStore;
  #stopped = false;

  constructor(options: CommandQueueOptions) {
    this.#o = options;
    this.#now = options.now ?? Date.now;
    this.#durable = new CommandStore({
      store: options.store,
      logger: options.logger,
      snapshot: (deviceId) =>
        this.pending(deviceId).map((c): StoredCommand => ({
          message: c.message,
          ...(c.pod ? { pod: c.pod } : {}),
          expiresAt: c.expiresAt,
          received: c.received,
        })),
    });
  }

  /** {@link restore}, retried with backoff in the background while the store cannot be read. */
  restoreInBackground(signal: AbortSignal, attempt = 0): void {
    this.restore().catch((err: unknown) => {
      if (signal.aborted || this.#stopped) return;
      const delay = retryDelay({ failures: attempt + 1, baseMs: 1_000, maxMs: 60_000, jitter: "equal" });
      this.#o.logger.warn({ err, retryInMs: delay }, "reading stored commands failed; retrying");
      setTimeout(() => this.restoreInBackground(signal, attempt + 1), delay).unref();
    });
  }

  /**
   * Takes back the commands an earlier process stored: expired ones are reported expired, the
   * rest wait for their device again (sent now when it is online), at most `limit` per device.
   * Call once at start; rejects when the store cannot be read (the caller may retry).
   */
  async restore(): Promise<void> {
    const now = this.#now();
    let restored = 0;
    for (const [deviceId, stored] of await this.#durable.load()) {
      if (this.#o.owns && !this.#o.owns(deviceId)) continue;
      for (const c of stored) {
        const queue = this.#queue(deviceId); // anew: resolving the last command drops the map
        if (queue.has(c.message.commandId)) continue;
        const command = this.#pending(deviceId, queue, c.message, {
          pod: c.pod,
          expiresAt: c.expiresAt,
          received: c.received,
          resolve: (result) =>
            this.#o.logger.info(
              { device: deviceId, commandId: result.commandId, stage: result.stage },
              "a command restored after a restart finished",
            ),
        });
        if (c.expiresAt <= now) {
          this.#expire(command, "it expired while devicelet was restarting", {
            commandId: c.message.commandId,
            stage: "expired",
            message: "expired while devicelet was restarting",
          });
          continue;
        }
        if (queue.size > this.#o.limit) {
          command.resolve({ commandId: c.message.commandId, stage: "expired", message: "queue full" });
          this.#o.metrics.inc("commandsRefused");
          continue;
        }
        restored++;
        this.#arm(command, c.expiresAt - now);
        if (!c.received && this.#o.isOnline(deviceId)) this.#publish(command);
      }
      this.#durable.changed(deviceId);
    }
    if (restored > 0) this.#o.logger.info({ commands: restored }, "restored commands waiting for devices");
  }

  /** Commands not yet finished, all devices together (queued or awaiting a result). */
  get size(): number {
    let n = 0;
    for (const queue of this.#byDevice.values()) n += queue.size;
    return n;
  }

  /** Commands not yet finished for a device (queued or awaiting a result). */
  pending(deviceId: string): readonly PendingCommand[] {
    return [...(this.#byDevice.get(deviceId)?.values() ?? [])];
  }

  /**
   * Queues a command and resolves with how it ended. Rejects (ProviderError Transient) only when
   * the device's queue is full.
   */
  send(
    deviceId: string,
    request: CommandRequest,
    options: { ttlSeconds: number; pod?: PodRef },
  ): Promise<CommandResult> {
    if ((this.#byDevice.get(deviceId)?.size ?? 0) >= this.#o.limit) {
      this.#o.metrics.inc("commandsRefused");
      return Promise.reject(
        transient(`command queue of device ${deviceId} is full (${this.#o.limit} commands)`),
      );
    }
    const queue = this.#queue(deviceId);
    const now = this.#now();
    const expiresAt = now + options.ttlSeconds * 1000;
    const commandId = randomBytes(8).toString("hex");
    const message = commandMessage({ deviceId, commandId, request, issuedAt: now, expiresAt });
    return new Promise<CommandResult>((resolve) => {
      const command = this.#pending(deviceId, queue, message, {
        pod: options.pod,
        expiresAt,
        received: false,
        resolve,
      });
      this.#durable.changed(deviceId);
      this.#arm(command, expiresAt - now);
      if (this.#o.isOnline(deviceId)) this.#publish(command);
    });
  }

  #queue(deviceId: string): Map<string, PendingCommand> {
    let queue = this.#byDevice.get(deviceId);
    if (!queue) {
      queue = new Map();
      this.#byDevice.set(deviceId, queue);
    }
    return queue;
  }

  /** Puts a command in its device's queue; resolving it takes it out (and out of the store). */
  #pending(
    deviceId: string,
    queue: Map<string, PendingCommand>,
    message: CommandMessage,
    o: {
      pod: PodRef | undefined;
      expiresAt: number;
      received: boolean;
      resolve: (result: CommandResult) => void;
    },
  ): PendingCommand {
    const commandId = message.commandId;
    const command: PendingCommand = {
      deviceId,
      message,
      pod: o.pod,
      expiresAt: o.expiresAt,
      published: false,
      received: o.received,
      timer: undefined,
      resolve: (result) => {
        clearTimeout(command.timer);
        if (!queue.delete(commandId)) return;
        if (queue.size === 0 && this.#byDevice.get(deviceId) === queue) this.#byDevice.delete(deviceId);
        this.#durable.changed(deviceId);
        o.resolve(result);
      },
    };
    queue.set(commandId, command);
    return command;
  }

  /**
   * Gives the device's pending commands that `match` and that it has not acknowledged receiving a
   * new time to live, counted from their `issuedAt`; those already published go out again with
   * the new expiry (same `commandId`: a device that got the first copy still runs it once). One
   * whose new expiry has passed expires now. Returns how many were changed.
   */
  retime(deviceId: string, match: (message: CommandMessage) => boolean, ttlSeconds: number): number {
    let changed = 0;
    for (const command of this.pending(deviceId)) {
      if (command.received || !match(command.message)) continue;
      const expiresAt = Date.parse(command.message.issuedAt) + ttlSeconds * 1000;
      if (expiresAt === command.expiresAt) continue;
      command.expiresAt = expiresAt;
      command.message = { ...command.message, expiresAt: new Date(expiresAt).toISOString() };
      changed++;
      this.#arm(command, expiresAt - this.#now());
      if (command.published && this.#o.isOnline(deviceId)) this.#publish(command);
    }
    if (changed > 0) this.#durable.changed(deviceId);
    return changed;
  }

  /**
   * Ends every pending command of a decommissioned device as expired (no Event: the device is
   * gone on purpose) and empties its stored queue. Returns how many there were.
   */
  forget(deviceId: string, why: string): number {
    const pending = this.pending(deviceId);
    for (const command of pending)
      command.resolve({ commandId: command.message.commandId, stage: "expired", message: why });
    this.#durable.changed(deviceId);
    return pending.length;
  }

  /** The device is (again) online: send what it has not acknowledged receiving. */
  deviceOnline(deviceId: string): void {
    for (const command of this.pending(deviceId)) if (!command.received) this.#publish(command);
  }

  /** A command ack from the device, already ordered by (bootId, seq). */
  ack(deviceId: string, ack: CommandAck): void {
    const command = this.#byDevice.get(deviceId)?.get(ack.commandId);
    if (!command) {
      this.#o.logger.debug(
        { device: deviceId, commandId: ack.commandId, stage: ack.stage },
        "ack for a command no longer pending",
      );
      return;
    }
    switch (ack.stage) {
      case "received":
        command.received = true;
        this.#durable.changed(deviceId);
        if (this.#now() >= command.expiresAt) this.#arm(command, RESULT_GRACE_MS);
        return;
      case "done":
        this.#o.metrics.inc("commandsCompleted");
        command.resolve(ackResult(ack, "done"));
        return;
      case "failed":
        this.#o.metrics.inc("commandsFailed");
        this.#o.onFailed(command, ack);
        command.resolve(ackResult(ack, "failed"));
        return;
      case "expired":
        this.#expire(
          command,
          `the device received it after it expired${ack.message ? `: ${ack.message}` : ""}`,
          ackResult(ack, "expired"),
        );
        return;
    }
  }

  /** Cancels timers; pending promises stay unresolved (the process is going away). */
  stop(): void {
    this.#stopped = true;
    this.#durable.stop();
    for (const q of this.#byDevice.values()) for (const c of q.values()) clearTimeout(c.timer);
  }

  #arm(command: PendingCommand, delayMs: number): void {
    clearTimeout(command.timer);
    command.timer = setTimeout(
      () => {
        if (command.received && this.#now() < command.expiresAt + RESULT_GRACE_MS) {
          this.#arm(command, command.expiresAt + RESULT_GRACE_MS - this.#now());
          return;
        }
        const why = command.received
          ? "the device acknowledged it but sent no result before it expired"
          : command.published
            ? "the device did not acknowledge it before it expired"
            : "the device stayed offline until it expired";
        this.#expire(command, why, { commandId: command.message.commandId, stage: "expired", message: why });
      },
      Math.max(0, delayMs),
    );
    command.timer.unref();
  }

  #expire(command: PendingCommand, why: string, result: CommandResult): void {
    this.#o.metrics.inc("commandsExpired");
    this.#o.onExpired(command, why);
    command.resolve(result);
  }

  #publish(command: PendingCommand): void {
    if (this.#stopped) return;
    const remaining = (command.expiresAt - this.#now()) / 1000;
    if (remaining <= 0) return;
    const ttlSeconds = Math.min(MAX_TTL_SECONDS, Math.max(1, Math.floor(remaining)));
    const payload = encodeMessage(
      this.#o.understandsTtl?.(command.deviceId) ? { ...command.message, ttlSeconds } : command.message,
    );
    command.published = true;
    this.#o.metrics.inc("commandsSent");
    this.#o
      .publish(topics.command(command.deviceId, command.message.commandId), payload, remaining)
      .catch((err: unknown) => {
        command.published = false;
        this.#o.logger.warn(
          { err, device: command.deviceId, commandId: command.message.commandId },
          "publishing command failed",
        );
      });
  }
}
