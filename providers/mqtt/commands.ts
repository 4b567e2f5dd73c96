/**
 * CommandQueue: one-shot requests to devices (restart an app, reboot, exec), kept apart from
 * desired state (DESIGN.md decision 4). Each device has a bounded queue; a command lives until its
 * time to live ends. It is published (QoS 1, not retained, MQTT 5 message expiry) while the device
 * is online and held while it is not; held commands go out when the device is born again, and a
 * command the device never acknowledged receiving is sent again then (devices de-duplicate by
 * command id). Expiry — still queued, or acknowledged `expired` by the device — is reported through
 * `onExpired` (the provider records a `CommandExpired` Event).
 *
 * Commands live in memory: they are one-shot by nature, and one held for an offline device does
 * not survive a devicelet restart (its requester sees the promise die with the process).
 *
 *   const q = new CommandQueue({ limit: 50, publish, isOnline, onExpired, onFailed, metrics });
 *   const result = await q.send("gw-1", { command: "restart-app", podUid }, { ttlSeconds: 60 });
 *   result.stage; // "done" | "failed" | "expired"
 */
import { randomBytes } from "node:crypto";
import type { Logger } from "pino";
import { encodeMessage } from "../../src/protocol/codec.ts";
import { topics } from "../../src/protocol/topics.ts";
import type { AckMessage, CommandMessage } from "../../src/protocol/types.ts";
import { transient } from "../../src/provider/errors.ts";
import type { PodRef } from "../../src/provider/types.ts";
import type { MqttMetrics } from "./metrics.ts";

export interface CommandRequest {
  readonly command: CommandMessage["command"];
  readonly podUid?: string;
  readonly app?: string;
  readonly args?: readonly string[];
}

/** How a command ended. Resolved once; `expired` also when it never reached the device. */
export interface CommandResult {
  readonly commandId: string;
  readonly stage: "done" | "failed" | "expired";
  readonly exitCode?: number;
  readonly output?: string;
  readonly message?: string;
}

export type CommandAck = Extract<AckMessage, { kind: "command-ack" }>;

export interface PendingCommand {
  readonly deviceId: string;
  readonly message: CommandMessage;
  readonly pod: PodRef | undefined;
  readonly expiresAt: number;
  published: boolean;
  received: boolean;
  timer: NodeJS.Timeout | undefined;
  readonly resolve: (result: CommandResult) => void;
}

export interface CommandQueueOptions {
  readonly limit: number;
  readonly publish: (topic: string, payload: Buffer, messageExpirySeconds: number) => Promise<void>;
  readonly isOnline: (deviceId: string) => boolean;
  /** A command expired (queued, or as the device said); `why` is a sentence for the Event. */
  readonly onExpired: (command: PendingCommand, why: string) => void;
  readonly onFailed: (command: PendingCommand, ack: CommandAck) => void;
  readonly metrics: MqttMetrics;
  readonly logger: Logger;
  readonly now?: () => number;
}

/** After the device acknowledged receipt, how long past expiry to wait for its result. */
const RESULT_GRACE_MS = 60_000;

export class CommandQueue {
  readonly #o: CommandQueueOptions;
  readonly #now: () => number;
  readonly #byDevice = new Map<string, Map<string, PendingCommand>>();
  #stopped = false;

  constructor(options: CommandQueueOptions) {
    this.#o = options;
    this.#now = options.now ?? Date.now;
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
    let queue = this.#byDevice.get(deviceId);
    if ((queue?.size ?? 0) >= this.#o.limit) {
      this.#o.metrics.inc("commandsRefused");
      return Promise.reject(
        transient(`command queue of device ${deviceId} is full (${this.#o.limit} commands)`),
      );
    }
    if (!queue) {
      queue = new Map();
      this.#byDevice.set(deviceId, queue);
    }
    const now = this.#now();
    const expiresAt = now + options.ttlSeconds * 1000;
    const commandId = randomBytes(8).toString("hex");
    const message: CommandMessage = {
      protocol: 1,
      kind: "command",
      deviceId,
      commandId,
      command: request.command,
      ...(request.podUid === undefined ? {} : { podUid: request.podUid }),
      ...(request.app === undefined ? {} : { app: request.app }),
      ...(request.args === undefined ? {} : { args: [...request.args] }),
      issuedAt: new Date(now).toISOString(),
      expiresAt: new Date(expiresAt).toISOString(),
    };
    const q = queue;
    return new Promise<CommandResult>((resolve) => {
      const command: PendingCommand = {
        deviceId,
        message,
        pod: options.pod,
        expiresAt,
        published: false,
        received: false,
        timer: undefined,
        resolve: (result) => {
          clearTimeout(command.timer);
          q.delete(commandId);
          if (q.size === 0 && this.#byDevice.get(deviceId) === q) this.#byDevice.delete(deviceId);
          resolve(result);
        },
      };
      q.set(commandId, command);
      this.#arm(command, expiresAt - now);
      if (this.#o.isOnline(deviceId)) this.#publish(command);
    });
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
        { deviceId, commandId: ack.commandId, stage: ack.stage },
        "ack for a command no longer pending",
      );
      return;
    }
    const result = (stage: CommandResult["stage"]): CommandResult => ({
      commandId: ack.commandId,
      stage,
      ...(ack.exitCode === undefined ? {} : { exitCode: ack.exitCode }),
      ...(ack.output === undefined ? {} : { output: ack.output }),
      ...(ack.message === undefined ? {} : { message: ack.message }),
    });
    switch (ack.stage) {
      case "received":
        command.received = true;
        if (this.#now() >= command.expiresAt) this.#arm(command, RESULT_GRACE_MS);
        return;
      case "done":
        this.#o.metrics.inc("commandsCompleted");
        command.resolve(result("done"));
        return;
      case "failed":
        this.#o.metrics.inc("commandsFailed");
        this.#o.onFailed(command, ack);
        command.resolve(result("failed"));
        return;
      case "expired":
        this.#expire(
          command,
          `the device received it after it expired${ack.message ? `: ${ack.message}` : ""}`,
          result("expired"),
        );
        return;
    }
  }

  /** Cancels timers; pending promises stay unresolved (the process is going away). */
  stop(): void {
    this.#stopped = true;
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
    const payload = encodeMessage(command.message);
    command.published = true;
    this.#o.metrics.inc("commandsSent");
    this.#o
      .publish(topics.command(command.deviceId, command.message.commandId), payload, remaining)
      .catch((err: unknown) => {
        command.published = false;
        this.#o.logger.warn(
          { err, deviceId: command.deviceId, commandId: command.message.commandId },
          "publishing command failed",
        );
      });
  }
}
