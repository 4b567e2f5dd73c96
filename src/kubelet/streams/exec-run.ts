/**
 * One exec or attach, whatever carries it: builds the provider's {@link ExecIO} from the client's
 * channels, runs it, and reports the outcome on the error channel the way the kubelet does
 * (k8s.io/kubelet/pkg/cri/streaming/remotecommand, ServeExec): exit 0 is Success, another exit code
 * is NonZeroExitCode with that code, a thrown error is a Failure with its message.
 *
 * Guarantees: the run's `signal` aborts when the client goes; the outcome is not waited for once
 * the client is gone (a run that never ends cannot hold the connection); output the client does
 * not read is bounded: past {@link OUTPUT_BACKLOG_LIMIT} the run is aborted.
 */

import type { Logger } from "pino";
import type { ExecIO, TerminalSize } from "../../provider/types.ts";
import type { InboundBytes } from "./inbound.ts";
import { exitStatus, failureStatus, successStatus, type KubeStatus } from "./status.ts";
import type { StreamTimeouts } from "./timeouts.ts";

/** While more than this is queued towards the client, stdin is held back. */
export const OUTPUT_HIGH_WATER = 1 << 20;
/** Queued output beyond this means the client stopped reading: the run is aborted. */
export const OUTPUT_BACKLOG_LIMIT = 16 << 20;

export interface StreamOptions {
  readonly stdin: boolean;
  readonly stdout: boolean;
  readonly stderr: boolean;
  readonly tty: boolean;
}

/** The client's side of one session, as a transport (SPDY or WebSocket) provides it. */
/** What serving one exec or attach needs, whichever protocol carries it. */
export interface ExecServeOptions {
  readonly options: StreamOptions;
  readonly run: (io: ExecIO) => Promise<{ readonly exitCode?: number }>;
  readonly logger: Logger;
  readonly timeouts: StreamTimeouts;
}

export interface ExecChannels {
  readonly stdin?: InboundBytes;
  readonly resize?: AsyncIterable<TerminalSize>;
  readonly stdout?: (chunk: Uint8Array) => void;
  readonly stderr?: (chunk: Uint8Array) => void;
  /** Bytes queued towards the client, not yet taken by the socket. */
  backlog(): number;
  waitForRoom(limit: number): Promise<void>;
  /** Aborts when the client went away. */
  readonly gone: AbortSignal;
  /** Writes `status` on the error channel (none when the client is gone), ends and closes. */
  finish(status: KubeStatus | undefined): Promise<void>;
}

export async function runExec(
  channels: ExecChannels,
  options: StreamOptions,
  run: (io: ExecIO) => Promise<{ readonly exitCode?: number }>,
  logger: Logger,
): Promise<void> {
  const controller = new AbortController();
  const { gone } = channels;
  const output = { overflowed: false };
  const stop = () => {
    channels.stdin?.discard();
    if (!controller.signal.aborted) controller.abort(gone.reason);
  };
  if (gone.aborted) stop();
  else gone.addEventListener("abort", stop, { once: true });

  channels.stdin?.holdUntil(() => channels.waitForRoom(OUTPUT_HIGH_WATER));
  const guarded = (write: ((chunk: Uint8Array) => void) | undefined) =>
    write === undefined
      ? undefined
      : (chunk: Uint8Array) => {
          if (controller.signal.aborted) return;
          write(chunk);
          if (channels.backlog() > OUTPUT_BACKLOG_LIMIT) {
            output.overflowed = true;
            channels.stdin?.discard();
            controller.abort(new Error("the client is not reading the output"));
          }
        };
  const stdout = options.stdout ? guarded(channels.stdout) : undefined;
  const stderr = options.stderr && !options.tty ? guarded(channels.stderr) : undefined;
  const io: ExecIO = {
    ...(options.stdin && channels.stdin !== undefined ? { stdin: channels.stdin } : {}),
    ...(stdout === undefined ? {} : { stdout }),
    ...(stderr === undefined ? {} : { stderr }),
    tty: options.tty,
    ...(options.tty && channels.resize !== undefined ? { resize: channels.resize } : {}),
    signal: controller.signal,
  };

  const outcome: Promise<KubeStatus> = Promise.resolve()
    .then(() => run(io))
    .then(
      ({ exitCode }) => (exitCode === undefined || exitCode === 0 ? successStatus() : exitStatus(exitCode)),
      (err: unknown) => failureStatus(err instanceof Error ? err.message : String(err)),
    );
  const clientGone = new Promise<undefined>((resolve) => {
    if (gone.aborted) resolve(undefined);
    else gone.addEventListener("abort", () => resolve(undefined), { once: true });
  });
  let status = await Promise.race([outcome, clientGone]);
  if (output.overflowed)
    status = failureStatus("the client did not read the command's output; the command was stopped");
  if (gone.aborted) {
    status = undefined;
    logger.debug("the client went away before the command ended");
  } else if (status?.status === "Failure") {
    logger.debug({ reason: status.reason, message: status.message }, "command failed");
  }
  stop();
  await channels.finish(status);
}
