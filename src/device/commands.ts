/**
 * One-shot commands on the device side (docs/architecture.md, decision 4). Each command is acked `received`
 * and then `done` or `failed`; a redelivered command (QoS 1 may deliver twice) runs once. An
 * expired command is dropped and acked `expired` (docs/protocol.md § 7): expired when its
 * `expiresAt` has passed (checked only when the device has a wall clock), or when `ttlSeconds`
 * have passed since it arrived (the arrival time is taken when the message is received, so the
 * time a command waits for the birth counts). What a command needs from the runtime
 * is optional there: a runtime without `exec` makes `exec` fail with an `Unsupported:` message.
 */
import type { Logger } from "pino";
import type { CommandMessage } from "../protocol/types.ts";
import type { Runtime } from "./runtime.ts";

export interface CommandAck {
  readonly commandId: string;
  readonly stage: "received" | "done" | "failed" | "expired";
  readonly exitCode?: number;
  readonly output?: string;
  readonly message?: string;
}

export interface CommandRunnerOptions {
  readonly runtime: Runtime;
  readonly now: () => number;
  /** Whether `now()` is a wall clock to compare `expiresAt` with; false: only `ttlSeconds` counts. */
  readonly wallClock: boolean;
  /** Performs a reboot; undefined makes `reboot` unsupported. Runs after the `done` ack. */
  readonly reboot: (() => Promise<void>) | undefined;
  readonly ack: (ack: CommandAck) => void;
  readonly logger: Logger;
  /** Output kept in an ack: the tail, at most this many bytes. Default 64 KiB. */
  readonly maxOutputBytes?: number;
}

/** Command ids remembered for de-duplication. */
const REMEMBERED = 256;

export class CommandRunner {
  readonly #o: CommandRunnerOptions;
  readonly #seen = new Set<string>();

  constructor(options: CommandRunnerOptions) {
    this.#o = options;
  }

  /**
   * Runs `command` in the background; outcomes go to the `ack` callback. `receivedAt` is when the
   * message arrived, by `now()` (default: now).
   */
  handle(command: CommandMessage, receivedAt = this.#o.now()): void {
    const { commandId } = command;
    if (this.#seen.has(commandId)) return;
    this.#seen.add(commandId);
    if (this.#seen.size > REMEMBERED) {
      const oldest = this.#seen.values().next();
      if (!oldest.done) this.#seen.delete(oldest.value);
    }
    const expired = this.#expiry(command, receivedAt);
    if (expired !== undefined) {
      this.#o.logger.info(
        { commandId, command: command.command, expiresAt: command.expiresAt, ttlSeconds: command.ttlSeconds },
        "command expired before it could run",
      );
      this.#o.ack({ commandId, stage: "expired", message: expired });
      return;
    }
    this.#o.ack({ commandId, stage: "received" });
    void this.#run(command).then(
      (outcome) => {
        this.#o.ack({ commandId, ...outcome });
        if (command.command === "reboot" && outcome.stage === "done") void this.#o.reboot?.();
      },
      (err: unknown) => {
        this.#o.ack({ commandId, stage: "failed", message: (err as Error).message });
      },
    );
  }

  /** Why `command` has expired, or undefined while it may still run. */
  #expiry(command: CommandMessage, receivedAt: number): string | undefined {
    const now = this.#o.now();
    if (this.#o.wallClock && Date.parse(command.expiresAt) <= now) return `expired at ${command.expiresAt}`;
    const ttl = command.ttlSeconds;
    if (ttl !== undefined && now - receivedAt >= ttl * 1000) {
      return `time to live of ${ttl}s ran out ${Math.round((now - receivedAt) / 1000)}s after it arrived`;
    }
    return undefined;
  }

  async #run(command: CommandMessage): Promise<Omit<CommandAck, "commandId">> {
    const { runtime } = this.#o;
    const target = () => {
      if (command.podUid === undefined || command.app === undefined) {
        throw new Error(`InvalidInput: ${command.command} needs podUid and app`);
      }
      return { podUid: command.podUid, app: command.app };
    };
    switch (command.command) {
      case "restart-app": {
        if (!runtime.restartApp) return unsupported("restart-app");
        const { podUid, app } = target();
        await runtime.restartApp(podUid, app);
        return { stage: "done" };
      }
      case "exec": {
        if (!runtime.exec) return unsupported("exec");
        const { podUid, app } = target();
        if (!command.args || command.args.length === 0) throw new Error("InvalidInput: exec needs args");
        const result = await runtime.exec(podUid, app, command.args);
        return { stage: "done", exitCode: result.exitCode, output: this.#tail(result.output) };
      }
      case "logs": {
        if (!runtime.logs) return unsupported("logs");
        const { podUid, app } = target();
        const tail = Number(command.args?.[0]);
        const text = await runtime.logs(
          podUid,
          app,
          Number.isInteger(tail) && tail > 0 ? { tailLines: tail } : {},
        );
        return { stage: "done", output: this.#tail(text) };
      }
      case "reboot":
        return this.#o.reboot ? { stage: "done" } : unsupported("reboot");
      default:
        return unsupported(String(command.command));
    }
  }

  #tail(text: string): string {
    const max = this.#o.maxOutputBytes ?? 64 * 1024;
    const bytes = Buffer.from(text, "utf8");
    return bytes.length <= max ? text : bytes.subarray(bytes.length - max).toString("utf8");
  }
}

const unsupported = (what: string): Omit<CommandAck, "commandId"> => ({
  stage: "failed",
  message: `Unsupported: this device does not support ${what}`,
});
