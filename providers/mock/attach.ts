/**
 * `kubectl attach` and `kubectl port-forward` on a simulated container. Attach connects the
 * client to the app's own streams: what the app writes to its log from then on arrives on stdout,
 * and the app echoes back whatever it reads on stdin. Every port of a simulated pod is an echo
 * server: bytes sent to it come back as they are.
 */
import type { AppState, ExecIO, ForwardedConnection } from "../../src/provider/types.ts";
import { untilAborted } from "./exec.ts";
import type { MockContainer } from "./pod.ts";

const encoder = new TextEncoder();

/**
 * Streams the container's output to `io` until the client goes (`io.signal`) or the running
 * instance ends; resolves with the instance's exit code when it ended. `container()` is read again
 * at the end, to see how the instance ended.
 */
export async function attachToApp(
  container: () => MockContainer | undefined,
  io: ExecIO,
): Promise<{ readonly exitCode?: number }> {
  const first = container();
  if (!first) return {};
  const instance = first.log;
  const write = (text: string) => {
    if (!io.signal.aborted) io.stdout?.(encoder.encode(io.tty ? text.replace(/\r?\n/g, "\r\n") : text));
  };
  const done = new AbortController();
  const signal = AbortSignal.any([io.signal, done.signal]);
  const echo = (async () => {
    if (!io.stdin) return;
    for await (const chunk of untilAborted(io.stdin, signal)) {
      if (!io.signal.aborted) (io.stdout ?? io.stderr)?.(chunk);
    }
  })();
  // tailLines 0 and follow: only what the app writes from now on, until the instance's log closes.
  for await (const line of instance.read({ tailLines: 0, follow: true, signal })) write(line);
  done.abort();
  await echo.catch(() => undefined);
  if (io.signal.aborted) return {};
  const now = container();
  return exitCodeOf(now?.state.kind === "terminated" ? now.state : now?.lastState);
}

const exitCodeOf = (state: AppState | undefined): { readonly exitCode?: number } =>
  state?.kind === "terminated" ? { exitCode: state.exitCode } : {};

/** Sends every byte of the connection back to the client; resolves when either side ended it. */
export async function echoConnection(connection: ForwardedConnection): Promise<void> {
  for await (const chunk of untilAborted(connection.data, connection.signal)) connection.write(chunk);
}
