/**
 * The vocabulary of one-shot commands (commands.ts): what a caller asks for, how a command ended,
 * what the CommandQueue keeps per pending command, and the messages built from them — the
 * `command` message a device gets, the result an ack gives, and the Kubernetes Event telling how
 * a command ended. Pure: nothing here publishes or keeps state.
 *
 *   const message = commandMessage({ deviceId, commandId, request, issuedAt, expiresAt });
 *   const result = ackResult(ack, "done");
 *   recordEvent(commandEvent(command, "CommandExpired", "the device stayed offline"));
 */
import type { AckMessage, CommandMessage } from "../../src/protocol/types.ts";
import type { PodRef, ProviderEvent } from "../../src/provider/types.ts";

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
  /** As stored and sent, without `ttlSeconds` (added per publish); replaced by `retime`. */
  message: CommandMessage;
  readonly pod: PodRef | undefined;
  expiresAt: number;
  published: boolean;
  received: boolean;
  timer: NodeJS.Timeout | undefined;
  readonly resolve: (result: CommandResult) => void;
}

/** The `command` message for a request (docs/protocol.md § 7), without `ttlSeconds`. */
export const commandMessage = (o: {
  readonly deviceId: string;
  readonly commandId: string;
  readonly request: CommandRequest;
  /** Epoch ms. */
  readonly issuedAt: number;
  /** Epoch ms. */
  readonly expiresAt: number;
}): CommandMessage => {
  const { request } = o;
  return {
    protocol: 1,
    kind: "command",
    deviceId: o.deviceId,
    commandId: o.commandId,
    command: request.command,
    ...(request.podUid === undefined ? {} : { podUid: request.podUid }),
    ...(request.app === undefined ? {} : { app: request.app }),
    ...(request.args === undefined ? {} : { args: [...request.args] }),
    issuedAt: new Date(o.issuedAt).toISOString(),
    expiresAt: new Date(o.expiresAt).toISOString(),
  };
};

/** The result a command ends with, from the device's ack (its exit code, output and message). */
export const ackResult = (ack: CommandAck, stage: CommandResult["stage"]): CommandResult => ({
  commandId: ack.commandId,
  stage,
  ...(ack.exitCode === undefined ? {} : { exitCode: ack.exitCode }),
  ...(ack.output === undefined ? {} : { output: ack.output }),
  ...(ack.message === undefined ? {} : { message: ack.message }),
});

/** The Kubernetes Event telling how a command ended (on its pod, or on its device's node). */
export const commandEvent = (command: PendingCommand, reason: string, why: string): ProviderEvent => {
  const { message } = command;
  return {
    involved: command.pod
      ? { kind: "Pod", pod: command.pod }
      : { kind: "Device", deviceId: command.deviceId },
    type: "Warning",
    reason,
    message: `command ${message.command}${message.app ? ` (app ${message.app})` : ""} ${message.commandId}: ${why}`,
  };
};
