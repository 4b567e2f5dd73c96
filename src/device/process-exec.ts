/**
 * An exec session's command as the process runtime runs it (process-runtime.ts decides the argv,
 * identity, folder and environment, the app's own): a child process in a process group of its
 * own, so that killing the group takes everything the command started and leaves the app alone.
 *
 *   const exec = spawnExec({ file, args, ids, cwd, env, request });
 *   exec.stdout.pipe(…); await exec.exited;   // the exit code
 *
 * A command that cannot be started exits 127 (not found) or 126, with the reason on stderr as a
 * shell says it. When the command exits, whatever it left running in its group is killed, as at
 * a container's exit. There is no time limit: the session's idle timeout ends a forgotten one.
 */
import { spawn } from "node:child_process";
import { constants } from "node:os";
import { PassThrough } from "node:stream";
import type { ExecRequest, RuntimeExec } from "./runtime.ts";

export interface ExecSpawn {
  readonly file: string;
  readonly args: readonly string[];
  /** uid and gid to switch to (an agent running as root), else empty. */
  readonly ids: { readonly uid?: number; readonly gid?: number };
  readonly cwd: string;
  readonly env: Readonly<Record<string, string>>;
  readonly request: ExecRequest;
}

export function spawnExec(o: ExecSpawn): RuntimeExec {
  const { file, args, ids, request } = o;
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  const child = spawn(file, [...args], {
    cwd: o.cwd,
    env: o.env,
    ...ids,
    detached: true,
    stdio: ["pipe", "pipe", "pipe"],
  });
  // Without the client's input the command reads end of file at once, as with `kubectl exec` without -i.
  if (!request.stdin) child.stdin.end();
  child.stdout.pipe(stdout);
  child.stderr.pipe(stderr, { end: false });
  let killed = false;
  const kill = () => {
    killed = true;
    if (child.pid === undefined) return;
    try {
      process.kill(-child.pid, "SIGKILL");
    } catch {
      // Gone already.
    }
  };
  const exited = new Promise<number>((resolve) => {
    let failed: number | undefined;
    child.once("error", (err: NodeJS.ErrnoException) => {
      failed = err.code === "ENOENT" ? 127 : 126;
      const what = request.command[0] ?? "";
      const why = err.code === "ENOENT" ? "command not found" : (err.code ?? err.message);
      stderr.write(`${what}: ${why}\n`);
      stderr.end();
      stdout.end();
      resolve(failed);
    });
    child.once("close", (code, signal) => {
      stderr.end();
      // Whatever the command left running in its group goes with it, as at a container's exit.
      if (!killed) kill();
      if (failed === undefined) resolve(code ?? 128 + signalNumber(signal));
    });
  });
  return { stdin: request.stdin ? child.stdin : null, stdout, stderr, exited, kill };
}

const signalNumber = (signal: NodeJS.Signals | null): number =>
  signal === null ? 0 : constants.signals[signal];
