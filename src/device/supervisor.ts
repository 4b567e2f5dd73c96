/**
 * One app of a pod as a supervised child process, the way the kubelet treats a container: files
 * written under the app's root, `command` + `args` spawned in its own process group, exits turned
 * into `terminated` states (Completed / Error; StartError when it cannot start), restarts per the
 * pod's restart policy with exponential back-off (`CrashLoopBackOff` while waiting; the first
 * restart is immediate, as the kubelet's), graceful stop (SIGTERM to the group, SIGKILL after the
 * grace period), and the output kept in a bounded ring for logs.
 *
 * A start that fails is that app's state, never an exception: a NUL byte in the command, an
 * argument or an env value waits `CreateContainerConfigError` (as the kubelet does for a config it
 * cannot use; retried with back-off, the message names the variable, never its value); a binary
 * that is missing or not executable (spawn's asynchronous ENOENT / EACCES), or any other spawn
 * failure, terminates with `StartError` and exit code 128, as a container runtime reports it, and
 * the restart policy applies. `start()` and retries never reject.
 *
 * With `runAs` (an agent running as root, an app whose securityContext sets another uid or gid;
 * security.ts) the process runs as that uid and gid with no supplementary groups, and its folder
 * and files are owned by them. With `launch` (setpriv.ts) the command runs behind that prefix,
 * which sets uid, gid, groups, no_new_privs and capabilities itself and execs the app in place;
 * `runAs` then only owns the files.
 *
 * A pid file next to the app's root lets a restarted agent kill a process group it left behind;
 * the process is recognised by the `DEVICELET_POD_UID`/`DEVICELET_APP` variables in its
 * environment, never by its pid alone.
 */
import { spawn, type ChildProcess, type ChildProcessByStdio } from "node:child_process";
import { readFile, rm, writeFile } from "node:fs/promises";
import { constants } from "node:os";
import type { Readable } from "node:stream";
import type { Logger } from "pino";
import type { DesiredApp, DesiredPod, ReportedApp, ReportedAppState } from "../protocol/types.ts";
import type { Clock } from "../base/clock.ts";
import { AppLog } from "./log-ring.ts";
import { FileError, writeAppFiles, type FetchBytes, type FileOwner } from "./pod-files.ts";
import {
  restartDelay,
  shouldRestart,
  terminatedState,
  type BackoffOptions,
  type RuntimeEvent,
} from "./runtime.ts";

export interface SupervisorOptions {
  readonly podUid: string;
  /** `namespace/name`, for messages. */
  readonly podName: string;
  readonly app: DesiredApp;
  readonly restartPolicy: DesiredPod["restartPolicy"];
  /** The app's root: files go under it and it is the working directory. */
  readonly root: string;
  readonly pidFile: string;
  /** Environment before the app's own (PATH and the like). */
  readonly baseEnv: Readonly<Record<string, string>>;
  readonly backoff: BackoffOptions;
  /** A run at least this long resets the back-off. */
  readonly resetAfterMs: number;
  /** Output kept of the running instance, and of the one before it (`kubectl logs --previous`). */
  readonly logBytes: number;
  readonly previousLogBytes: number;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly fetcher?: FetchBytes;
  /**
   * The uid and gid to run the app as, when the agent (root) switches to them
   * (security.ts); its folder and files are then owned by them. Default: the agent's own.
   */
  readonly runAs?: FileOwner;
  /** Argv prefix the command runs behind (setpriv …, `--`), which switches uid and gid itself. */
  readonly launch?: readonly string[];
  readonly onChange: () => void;
  readonly onEvent: (event: RuntimeEvent) => void;
}

export class AppSupervisor {
  readonly log: AppLog;
  readonly env: Readonly<Record<string, string>>;
  readonly #o: SupervisorOptions;
  #status: ReportedAppState = { state: "waiting", reason: "ContainerCreating" };
  #last: ReportedAppState | undefined;
  #restarts = 0;
  #started = false;
  #final = false;
  #failures = 0;
  #stopping = false;
  #child: ChildProcess | undefined;
  #exited: Promise<void> = Promise.resolve();
  #startedAtMs = 0;
  #timer: unknown;
  /** A launch in progress (files being written, process being spawned). */
  #launching: Promise<void> | undefined;

  constructor(options: SupervisorOptions) {
    this.#o = options;
    this.log = new AppLog({
      maxBytes: options.logBytes,
      previousBytes: options.previousLogBytes,
      now: () => options.clock.now(),
    });
    this.env = {
      ...options.baseEnv,
      ...options.app.env,
      DEVICELET_POD_UID: options.podUid,
      DEVICELET_APP: options.app.name,
      DEVICELET_APP_DIR: options.root,
    };
  }

  /** The uid and gid the app runs as when not the agent's own (exec runs as them too). */
  get runAs(): FileOwner | undefined {
    return this.#o.runAs;
  }

  /** `command` behind the app's launch prefix, and what `spawn` must add (exec runs the same way). */
  launch(command: readonly string[]): { file: string; args: string[]; ids: { uid?: number; gid?: number } } {
    const { launch, runAs } = this.#o;
    const [file = "", ...args] = [...(launch ?? []), ...command];
    return { file, args, ids: runAs && !launch ? { uid: runAs.uid, gid: runAs.gid } : {} };
  }

  get name(): string {
    return this.#o.app.name;
  }

  /** The running process's pid, which is also its process group's id (it leads its own group). */
  get processGroup(): number | undefined {
    return this.#status.state === "running" ? this.#child?.pid : undefined;
  }

  /** When the running instance started. */
  get startedAt(): string | undefined {
    return this.#status.state === "running" ? this.#status.startedAt : undefined;
  }

  /** For the pod phase: current state, whether it ever ran, whether it is done for good. */
  get phaseInput(): { status: ReportedAppState; started: boolean; final: boolean } {
    return { status: this.#status, started: this.#started, final: this.#final };
  }

  report(): ReportedApp {
    return {
      name: this.#o.app.name,
      image: this.#o.app.image,
      status: this.#status,
      ...(this.#last ? { lastStatus: this.#last } : {}),
      ready: this.#status.state === "running",
      restartCount: this.#restarts,
    };
  }

  /** Writes the files and spawns the process; resolves once it runs or failed to start. */
  start(): Promise<void> {
    return this.#launchNow();
  }

  /** SIGTERM to the process group, SIGKILL after `graceMs`; no restarts afterwards. */
  async stop(graceMs: number): Promise<void> {
    this.#stopping = true;
    this.#o.clock.clearTimeout(this.#timer);
    this.#timer = undefined;
    // A launch under way either sees `stopping` and gives up, or spawns a process to stop here.
    await this.#launching;
    const child = this.#child;
    if (!child?.pid) return;
    this.#event("Normal", "Killing", `Stopping app ${this.#o.app.name}`);
    signalGroup(child.pid, "SIGTERM");
    const kill = this.#o.clock.setTimeout(() => signalGroup(child.pid, "SIGKILL"), graceMs);
    await this.#exited;
    this.#o.clock.clearTimeout(kill);
  }

  /** Stops the app and starts it again now (a `restart-app` command). */
  async restart(graceMs: number): Promise<void> {
    await this.stop(graceMs);
    this.#stopping = false;
    this.#final = false;
    this.#failures = 0;
    this.#last = this.#status.state === "terminated" ? this.#status : this.#last;
    this.#restarts++;
    await this.#launchNow();
  }

  #launchNow(): Promise<void> {
    const launching = this.#launch()
      .catch((err: unknown) => this.#unexpected(err))
      .finally(() => {
        if (this.#launching === launching) this.#launching = undefined;
      });
    this.#launching = launching;
    return launching;
  }

  async #launch(): Promise<void> {
    this.#timer = undefined;
    if (this.#stopping) return;
    const { app, root } = this.#o;
    try {
      await killLeftover(this.#o.pidFile, this.#o.podUid, app.name);
      if (app.files.some((f) => "ref" in f) && this.#status.state === "waiting") {
        this.#status = { state: "waiting", reason: "FetchingFiles" };
        this.#o.onChange();
      }
      await writeAppFiles(root, app.files, {
        ...(this.#o.fetcher ? { fetcher: this.#o.fetcher } : {}),
        ...(this.#o.runAs ? { owner: this.#o.runAs } : {}),
      });
      const nul = nulByteIn(app.command, app.args, this.env);
      if (nul) throw new AppConfigError(nul);
    } catch (err) {
      const message = (err as Error).message;
      const reason =
        err instanceof FileError
          ? err.reason
          : err instanceof AppConfigError
            ? "CreateContainerConfigError"
            : "CreateContainerError";
      this.#status = { state: "waiting", reason, message };
      this.#event("Warning", "Failed", `Error: ${message}`);
      this.#retryAfter(restartDelay(++this.#failures, this.#o.backoff));
      this.#o.onChange();
      return;
    }
    // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition -- stop() may run while we await
    if (this.#stopping) return;
    const { file, args: argv, ids } = this.launch([...app.command, ...app.args]);
    let child: ChildProcessByStdio<null, Readable, Readable>;
    try {
      child = spawn(file, argv, {
        cwd: root,
        env: this.env,
        ...ids,
        detached: true,
        stdio: ["ignore", "pipe", "pipe"],
      });
    } catch (err) {
      // Thrown, not emitted: invalid arguments, or errors libuv does not defer (EINVAL, E2BIG…).
      this.#startFailed(undefined, spawnFailure(err));
      return;
    }
    this.#child = child;
    // A new instance: what the last one wrote becomes its `previous` log.
    const instance = this.log.begin();
    // Its log ends once its output has (not at exit: the last lines may still be in the pipes).
    child.once("close", () => this.log.end(instance));
    let exited!: () => void;
    this.#exited = new Promise((resolve) => (exited = resolve));
    child.stdout.on("data", (chunk: Buffer) => this.log.append(chunk, "stdout"));
    child.stderr.on("data", (chunk: Buffer) => this.log.append(chunk, "stderr"));
    let spawned = false;
    await new Promise<void>((resolve) => {
      child.once("spawn", () => {
        spawned = true;
        this.#startedAtMs = this.#o.clock.now();
        this.#status = { state: "running", startedAt: new Date(this.#startedAtMs).toISOString() };
        this.#started = true;
        if (child.pid)
          void writeFile(this.#o.pidFile, JSON.stringify({ pid: child.pid })).catch(() => undefined);
        this.#event("Normal", "Started", `Started app ${app.name}`);
        this.#o.onChange();
        resolve();
      });
      child.on("error", (err) => {
        if (spawned) return;
        this.#startFailed(child, spawnFailure(err));
        exited();
        resolve();
      });
      child.once("exit", (code, signal) => {
        const exitCode = code ?? 128 + (signal ? constants.signals[signal] : 0);
        this.#exit(child, exitCode, undefined, signal ? `killed by ${signal}` : undefined);
        exited();
      });
    });
  }

  /** A process that never ran: `StartError`, exit code 128, then the restart policy. */
  #startFailed(child: ChildProcess | undefined, message: string): void {
    this.#event("Warning", "Failed", `Error: ${message}`);
    this.#o.logger.warn({ pod: this.#o.podName, app: this.#o.app.name, message }, "app failed to start");
    this.#exit(child, 128, "StartError", message);
  }

  /** Something no path above expected: kept as the app's state, retried, never thrown. */
  #unexpected(err: unknown): void {
    const message = err instanceof Error ? err.message : String(err);
    this.#o.logger.error({ pod: this.#o.podName, app: this.#o.app.name, err: message }, "app launch failed");
    this.#status = { state: "waiting", reason: "CreateContainerError", message };
    this.#event("Warning", "Failed", `Error: ${message}`);
    if (!this.#stopping) this.#retryAfter(restartDelay(++this.#failures, this.#o.backoff));
    this.#o.onChange();
  }

  /** `child` undefined: spawn threw, there is no process. */
  #exit(child: ChildProcess | undefined, exitCode: number, reason?: string, message?: string): void {
    if (this.#child !== child) return;
    this.#child = undefined;
    // Like a container's PID 1: when the app goes, whatever it left in its group goes too.
    if (child?.pid) signalGroup(child.pid, "SIGKILL");
    void rm(this.#o.pidFile, { force: true }).catch(() => undefined);
    const now = this.#o.clock.now();
    const ran = this.#status.state === "running";
    const term = terminatedState({
      exitCode,
      finishedAt: new Date(now).toISOString(),
      ...(ran ? { startedAt: new Date(this.#startedAtMs).toISOString() } : {}),
      ...(reason === undefined ? {} : { reason }),
      ...(message === undefined ? {} : { message }),
    });
    if (this.#stopping || !shouldRestart(this.#o.restartPolicy, exitCode)) {
      this.#status = term;
      this.#final = true;
      this.#o.onChange();
      return;
    }
    if (ran && now - this.#startedAtMs >= this.#o.resetAfterMs) this.#failures = 0;
    this.#failures++;
    const delay = this.#failures === 1 ? 0 : restartDelay(this.#failures - 1, this.#o.backoff);
    this.#last = term;
    this.#status = {
      state: "waiting",
      reason: "CrashLoopBackOff",
      message: `back-off ${Math.ceil(delay / 1000)}s restarting failed app=${this.#o.app.name} pod=${this.#o.podName}`,
    };
    if (delay > 0) this.#event("Warning", "BackOff", "Back-off restarting failed app");
    this.#retryAfter(delay, true);
    this.#o.onChange();
  }

  #retryAfter(delayMs: number, countsAsRestart = false): void {
    this.#timer = this.#o.clock.setTimeout(() => {
      if (countsAsRestart) this.#restarts++;
      void this.#launchNow();
    }, delayMs);
  }

  #event(type: RuntimeEvent["type"], reason: string, message: string): void {
    this.#o.onEvent({ type, reason, message, podUid: this.#o.podUid, app: this.#o.app.name });
  }
}

/** A spec the process cannot be started with at all (a NUL byte); the kubelet's config error. */
class AppConfigError extends Error {
  override readonly name = "AppConfigError";
}

/** Where a NUL byte makes the command, arguments or environment unusable; never the value itself. */
function nulByteIn(
  command: readonly string[],
  args: readonly string[],
  env: Readonly<Record<string, string>>,
): string | undefined {
  const at = (list: readonly string[]) => list.findIndex((s) => s.includes("\0"));
  if (at(command) >= 0) return `command[${at(command)}] contains a NUL byte`;
  if (at(args) >= 0) return `args[${at(args)}] contains a NUL byte`;
  const name = Object.entries(env).find(([k, v]) => k.includes("\0") || v.includes("\0"))?.[0];
  return name === undefined ? undefined : `env ${JSON.stringify(name)} contains a NUL byte`;
}

/**
 * The message for a failed spawn: the errno and the file for system errors (what a runtime says:
 * "spawn /opt/app/run ENOENT"), a generic text for Node's argument errors, whose messages quote
 * the offending value (which may come from a Secret).
 */
function spawnFailure(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  if (typeof e.code === "string" && e.code.startsWith("ERR_")) return `cannot start the process (${e.code})`;
  const hint = e.code === "ENOENT" ? ": no such file" : e.code === "EACCES" ? ": not executable" : "";
  return `${e.message}${hint}`;
}

function signalGroup(pid: number | undefined, signal: NodeJS.Signals): void {
  // kill(0) would signal the agent's own group, kill(-1) every process it may signal.
  if (pid === undefined || !Number.isInteger(pid) || pid <= 1) return;
  try {
    process.kill(-pid, signal);
  } catch {
    // Already gone.
  }
}

/** Kills the process group an earlier agent left running for this app, if it is still there. */
async function killLeftover(pidFile: string, podUid: string, app: string): Promise<void> {
  let pid: number;
  try {
    pid = (JSON.parse(await readFile(pidFile, "utf8")) as { pid: number }).pid;
  } catch {
    return;
  }
  try {
    const environ = (await readFile(`/proc/${pid}/environ`, "utf8")).split("\0");
    if (environ.includes(`DEVICELET_POD_UID=${podUid}`) && environ.includes(`DEVICELET_APP=${app}`)) {
      signalGroup(pid, "SIGKILL");
    }
  } catch {
    // Not running any more (or not ours to read).
  }
  await rm(pidFile, { force: true });
}
