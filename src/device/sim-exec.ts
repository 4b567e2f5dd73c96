/**
 * The few commands a simulated device can exec, enough for the demo's `kubectl exec` and for
 * tests: `echo ARGS…`, `cat` (stdin to stdout), `env`, `hostname`, `true`, `false`, `exit N`,
 * `sleep SECONDS`, and any of them as `sh -c '…'` (only the first word of the script counts, so
 * `sh -c 'exit 3'` exits 3). Anything else exits 127 with "command not found" on stderr, as a shell
 * says it. No process runs: the output is written to in-memory streams.
 *
 *   const exec = simulatedExec({ command: ["sh", "-c", "exit 3"], stdin: false }, { env, hostname, clock });
 *   await exec.exited;   // 3
 */
import { PassThrough } from "node:stream";
import type { Clock } from "../base/clock.ts";
import type { ExecRequest, RuntimeExec } from "./runtime.ts";

export interface SimExecContext {
  readonly env: Readonly<Record<string, string>>;
  readonly hostname: string;
  readonly clock: Clock;
}

/** Runs `request.command` as a simulated command; see the module comment for which. */
export function simulatedExec(request: ExecRequest, context: SimExecContext): RuntimeExec {
  const stdin = request.stdin ? new PassThrough() : null;
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let finish!: (code: number) => void;
  let timer: unknown;
  let done = false;
  const exited = new Promise<number>((resolve) => {
    finish = (code) => {
      if (done) return;
      done = true;
      context.clock.clearTimeout(timer);
      stdout.end();
      stderr.end();
      stdin?.resume();
      resolve(code);
    };
  });
  const [name = "", ...args] = words(request.command);
  switch (name) {
    case "echo":
      stdout.write(`${args.join(" ")}\n`);
      finish(0);
      break;
    case "cat":
      if (args.length > 0) {
        stderr.write(`cat: ${args[0] ?? ""}: No such file or directory\n`);
        finish(1);
      } else if (!stdin) finish(0);
      else {
        stdin.on("data", (chunk: Buffer) => stdout.write(chunk));
        stdin.once("end", () => finish(0));
      }
      break;
    case "env":
      for (const [key, value] of Object.entries(context.env)) stdout.write(`${key}=${value}\n`);
      finish(0);
      break;
    case "hostname":
      stdout.write(`${context.hostname}\n`);
      finish(0);
      break;
    case "true":
      finish(0);
      break;
    case "false":
      finish(1);
      break;
    case "exit":
      finish(exitCode(args[0]));
      break;
    case "sleep": {
      const seconds = Number(args[0]);
      if (!Number.isFinite(seconds) || seconds < 0) {
        stderr.write(`sleep: invalid time interval '${args[0] ?? ""}'\n`);
        finish(1);
      } else timer = context.clock.setTimeout(() => finish(0), seconds * 1000);
      break;
    }
    default:
      stderr.write(`${name}: command not found\n`);
      finish(127);
  }
  return { stdin, stdout, stderr, exited, kill: () => finish(137) };
}

/** The words to run: a `sh -c 'script'` is its script split on blanks. */
function words(command: readonly string[]): string[] {
  const [first, flag, script] = command;
  if ((first === "sh" || first === "/bin/sh") && flag === "-c" && script !== undefined) {
    return script.trim().split(/\s+/).filter(Boolean);
  }
  return [...command];
}

/** `exit N` as a shell takes it: N modulo 256, 0 without N, 2 for something not a number. */
function exitCode(text: string | undefined): number {
  if (text === undefined) return 0;
  const n = Number(text);
  return Number.isInteger(n) ? ((n % 256) + 256) % 256 : 2;
}
