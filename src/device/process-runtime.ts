/**
 * The reference gateway runtime: every app of every pod is a supervised child process
 * ({@link AppSupervisor}), with its files under `<workDir>/<podUid>/<app>/`.
 *
 *   const runtime = new ProcessRuntime({ workDir: "/var/lib/devicelet/pods", logger });
 *   await runtime.apply([pod], []);      // spawns; progress through onChange
 *   runtime.report();                    // phases, app states, restart counts, exit codes
 *
 * `image` names the app and its version; what runs is `command` + `args` (a process runtime has no
 * image entrypoint to fall back on), so a pod with an app without `command` is refused: reported
 * Pending with reason `NoCommand`. Pods beyond the configured capacity are refused with the
 * kubelet's admission reasons (`OutOfpods`, `OutOfcpu`, `OutOfmemory`), also Pending, and start
 * once they fit. Resource limits are not enforced.
 *
 * Stopping (docs/protocol.md § 4): `apply` begins every stop and returns; it does not wait out
 * grace periods. A pod being stopped stays in `report()`, reason `Terminating`, until its apps
 * have exited. A replaced pod (same uid, new hash) is stopped with the grace period of the version
 * now wanted, as the kubelet kills a container whose spec changed with the pod spec it has now,
 * and that version starts once the old one is gone. A later, shorter grace period (a tombstone
 * with 0, say) shortens a stop under way; a longer one never lengthens it.
 *
 * Each app's `securityContext` is applied or refuses the pod (security.ts): Pending, every app
 * waiting `CreateContainerConfigError` with a message naming the field, as the kubelet reports a
 * context it cannot honour (e.g. runAsNonRoot with a root user). An agent running as root runs an
 * app with `runAsUser`/`runAsGroup` as that uid and gid, and its folder and files are theirs.
 * no_new_privs, capabilities and supplementary groups are set by util-linux `setpriv`, looked up
 * on PATH once when the runtime is made (setpriv.ts); `exec` runs through it the same way.
 *
 * For logs and exec sessions (io-sessions.ts) and stats: `appLog` is the app's captured output
 * (log-ring.ts: 1 MiB of the running instance and 256 KiB of the one before by default),
 * `startExec` runs a command as the app runs (process-exec.ts), and `stats` reads /proc for each
 * app's process group (proc-stats.ts).
 */
import { spawn } from "node:child_process";
import { rm } from "node:fs/promises";
import path from "node:path";
import type { Logger } from "pino";
import type { DesiredApp, DesiredPod, ReportedPod, Tombstone } from "../protocol/types.ts";
import { systemClock, type Clock } from "../base/clock.ts";
import { LogRing } from "./log-ring.ts";
import { spawnExec } from "./process-exec.ts";
import { ProcReader } from "./proc-stats.ts";
import type { FetchBytes, FileOwner } from "./pod-files.ts";
import {
  admit,
  kubeletBackoff,
  podPhase,
  refusedPod,
  RuntimeRefusal,
  type AdmissionRefusal,
  type AppLogView,
  type BackoffOptions,
  type ExecRequest,
  type ExecResult,
  type Runtime,
  type RuntimeEvent,
  type RuntimeExec,
  type RuntimeStats,
} from "./runtime.ts";
import { planSecurity, processIdentity, type AgentIdentity } from "./security.ts";
import { AppSupervisor } from "./supervisor.ts";

export interface ProcessRuntimeOptions {
  /** Pod folders go here; created as needed. */
  readonly workDir: string;
  readonly logger: Logger;
  /** cpu, memory, pods: admission limits. */
  readonly capacity?: Readonly<Record<string, string | undefined>>;
  /** Restart back-off; default the kubelet's 10 s doubling to 5 min. */
  readonly backoff?: BackoffOptions;
  /** A run at least this long resets the back-off; default 10 min. */
  readonly resetAfterMs?: number;
  /** Output kept per app for logs, of the running instance; default 1 MiB. */
  readonly logBytes?: number;
  /** Output kept per app of the instance before (`kubectl logs --previous`); default 256 KiB. */
  readonly previousLogBytes?: number;
  /** Where /proc is, for stats (tests); default /proc. */
  readonly proc?: ProcReader;
  /** Environment every app starts from; default just PATH (apps do not inherit the agent's). */
  readonly baseEnv?: Readonly<Record<string, string>>;
  /** Longest an exec may run; default 30 s. */
  readonly execTimeoutMs?: number;
  readonly fetcher?: FetchBytes;
  readonly clock?: Clock;
  /** Who the agent runs as, for `securityContext` (security.ts); default this process's uid and gid. */
  readonly identity?: AgentIdentity;
  /** Primary group of a uid, for `runAsUser` without `runAsGroup`; default /etc/passwd. */
  readonly groupOf?: (uid: number) => number | undefined;
}

interface PodEntry {
  readonly pod: DesiredPod;
  readonly apps: readonly AppSupervisor[];
  readonly refusal: AdmissionRefusal | undefined;
  /** Set once its stop has begun: when the grace period ends (clock ms), and when it is gone. */
  stopping?: { deadline: number; readonly gone: Promise<void> };
}

/** The version of a pod to start once its stopping predecessor (same uid) is gone. */
interface NextVersion {
  readonly pod: DesiredPod;
  readonly refusal: AdmissionRefusal | undefined;
}

export class ProcessRuntime implements Runtime {
  readonly #o: ProcessRuntimeOptions;
  readonly #clock: Clock;
  readonly #identity: AgentIdentity;
  readonly #pods = new Map<string, PodEntry>();
  readonly #next = new Map<string, NextVersion>();
  readonly #changeListeners: (() => void)[] = [];
  readonly #eventListeners: ((e: RuntimeEvent) => void)[] = [];
  #proc: ProcReader | undefined;
  /** The last CPU counter sent per app instance (`podUid/app/startTime`). */
  #cpuSeen = new Map<string, number>();

  constructor(options: ProcessRuntimeOptions) {
    this.#o = options;
    this.#clock = options.clock ?? systemClock;
    this.#identity = options.identity ?? processIdentity();
    options.logger.info(
      { setpriv: this.#identity.setpriv ?? null, uid: this.#identity.uid },
      this.#identity.setpriv
        ? "apps' no_new_privs, capabilities and groups are set with setpriv"
        : "setpriv not found on PATH: pods asking for no_new_privs, capabilities or groups are refused",
    );
  }

  async apply(pods: readonly DesiredPod[], tombstones: readonly Tombstone[]): Promise<void> {
    const graceOf = new Map(tombstones.map((t) => [t.uid, t.gracePeriodSeconds]));
    const wanted = pods.filter((p) => !graceOf.has(p.uid));
    const wantedUids = new Set(wanted.map((p) => p.uid));
    const admitted = new Set(
      [...this.#pods.values()].filter((e) => !e.refusal && wantedUids.has(e.pod.uid)).map((e) => e.pod.uid),
    );
    const refused = admit(wanted, this.#o.capacity ?? {}, admitted);
    for (const uid of this.#next.keys()) if (!wantedUids.has(uid)) this.#next.delete(uid);
    for (const entry of this.#pods.values()) {
      const uid = entry.pod.uid;
      if (!wantedUids.has(uid))
        this.#beginStop(entry, graceOf.get(uid) ?? entry.pod.terminationGracePeriodSeconds);
    }
    const work: Promise<void>[] = [];
    for (const pod of wanted) {
      const existing = this.#pods.get(pod.uid);
      const refusal = refused.get(pod.uid) ?? checkCommands(pod) ?? this.#checkSecurity(pod);
      if (
        existing &&
        !existing.stopping &&
        existing.pod.hash === pod.hash &&
        !existing.refusal === !refusal
      ) {
        this.#next.delete(pod.uid);
        continue;
      }
      if (!existing || (existing.refusal && !existing.stopping)) {
        // Nothing runs for this uid: start (or start over) now.
        work.push(
          (existing ? this.#remove(existing) : Promise.resolve()).then(() => this.#add(pod, refusal)),
        );
        continue;
      }
      // Replaced, or wanted back while it stops: the new version starts once the old one is gone.
      this.#next.set(pod.uid, { pod, refusal });
      this.#beginStop(existing, pod.terminationGracePeriodSeconds);
    }
    await Promise.all(work);
    this.#changed();
  }

  /**
   * Begins stopping `entry` with `graceSeconds`, or shortens a stop under way to it; never waits.
   * Once the pod is gone, the version waiting in `#next` for its uid starts.
   */
  #beginStop(entry: PodEntry, graceSeconds: number): void {
    const deadline = this.#clock.now() + graceSeconds * 1000;
    if (entry.stopping) {
      if (deadline >= entry.stopping.deadline) return;
      entry.stopping.deadline = deadline;
      // A second stop() signals again and arms the shorter kill timer (the kubelet's shortened grace).
      for (const app of entry.apps) void app.stop(graceSeconds * 1000);
      return;
    }
    const uid = entry.pod.uid;
    const gone = this.#remove(entry, graceSeconds).then(async () => {
      const next = this.#next.get(uid);
      if (next && !this.#pods.has(uid)) {
        this.#next.delete(uid);
        await this.#add(next.pod, next.refusal);
      }
      this.#changed();
    });
    entry.stopping = { deadline, gone };
    this.#changed();
  }

  report(): ReportedPod[] {
    return [...this.#pods.values()].map((e) => {
      if (e.refusal) return refusedPod(e.pod, e.refusal);
      return {
        uid: e.pod.uid,
        hash: e.pod.hash,
        phase: podPhase(e.apps.map((a) => a.phaseInput)),
        ...(e.stopping
          ? {
              reason: "Terminating",
              message: `stopping; grace period ends at ${new Date(e.stopping.deadline).toISOString()}`,
            }
          : {}),
        apps: e.apps.map((a) => a.report()),
      };
    });
  }

  onChange(cb: () => void): void {
    this.#changeListeners.push(cb);
  }

  onEvent(cb: (event: RuntimeEvent) => void): void {
    this.#eventListeners.push(cb);
  }

  logs(podUid: string, app: string, options: { tailLines?: number } = {}): Promise<string> {
    return Promise.resolve(this.#app(podUid, app).log.text(options.tailLines));
  }

  /** Runs `args` in the app's folder with the app's environment; output bounded, time-limited. */
  exec(podUid: string, app: string, args: readonly string[]): Promise<ExecResult> {
    const supervisor = this.#app(podUid, app);
    // As the app itself, through the same setpriv: an exec is no way around the pod's securityContext.
    const { file, args: rest, ids } = supervisor.launch(args);
    const output = new LogRing(64 * 1024);
    return new Promise((resolve) => {
      const child = spawn(file, rest, {
        cwd: path.join(this.#o.workDir, podUid, app),
        env: supervisor.env,
        ...ids,
        stdio: ["ignore", "pipe", "pipe"],
        timeout: this.#o.execTimeoutMs ?? 30_000,
        killSignal: "SIGKILL",
      });
      child.stdout.on("data", (c: Buffer) => output.append(c));
      child.stderr.on("data", (c: Buffer) => output.append(c));
      child.on("error", (err: NodeJS.ErrnoException) => {
        resolve({ exitCode: err.code === "ENOENT" ? 127 : 126, output: `${err.message}\n` });
      });
      child.on("close", (code, signal) => {
        resolve({ exitCode: code ?? (signal ? 137 : 1), output: output.text() });
      });
    });
  }

  appLog(podUid: string, app: string): AppLogView {
    return this.#sessionApp(podUid, app).log;
  }

  /**
   * Starts `request.command` for an exec session as the app's own processes start: same
   * environment, working folder, uid/gid and setpriv prefix, but in a process group of its own
   * (so that `kill` takes everything it started, and the app's group is left alone), with no time
   * limit (the session's idle timeout ends it). A command that cannot be started exits 127 (not
   * found) or 126 with the reason on stderr, as a shell says it.
   */
  startExec(podUid: string, app: string, request: ExecRequest): RuntimeExec {
    const supervisor = this.#sessionApp(podUid, app);
    if (supervisor.processGroup === undefined)
      throw new RuntimeRefusal("NotFound", `app "${app}" of pod ${podUid} is not running`);
    return spawnExec({
      ...supervisor.launch(request.command),
      cwd: path.join(this.#o.workDir, podUid, app),
      env: supervisor.env,
      request,
    });
  }

  /**
   * Every running app's CPU counter and resident memory, summed over its process group (an exec
   * session's processes run in groups of their own and are not counted), and the device's.
   * Within one instance of an app its counter never goes back, even when a process of the group
   * that nobody waited for takes its time with it.
   */
  async stats(): Promise<RuntimeStats> {
    const proc = (this.#proc ??= this.#o.proc ?? new ProcReader());
    const running = [...this.#pods.values()]
      .filter((e) => !e.refusal)
      .map((e) => ({
        podUid: e.pod.uid,
        apps: e.apps.flatMap((a) => {
          const pgid = a.processGroup;
          const startTime = a.startedAt;
          return pgid === undefined || startTime === undefined ? [] : [{ app: a.name, pgid, startTime }];
        }),
      }))
      .filter((p) => p.apps.length > 0);
    const [groups, node] = await Promise.all([
      proc.groups(running.flatMap((p) => p.apps.map((a) => a.pgid))),
      proc.node(),
    ]);
    const seen = new Map<string, number>();
    const pods = running.map((p) => ({
      podUid: p.podUid,
      apps: p.apps.flatMap(({ app, pgid, startTime }) => {
        const usage = groups.get(pgid);
        if (!usage) return [];
        const key = `${p.podUid}/${app}/${startTime}`;
        const cpu = Math.max(usage.cpuNanoSeconds, this.#cpuSeen.get(key) ?? 0);
        seen.set(key, cpu);
        return [
          {
            app,
            startTime,
            cpu: { usageCoreNanoSeconds: cpu },
            memory: { workingSetBytes: usage.rssBytes, rssBytes: usage.rssBytes },
          },
        ];
      }),
    }));
    this.#cpuSeen = seen;
    return {
      node: {
        ...(node.startTime === undefined ? {} : { startTime: node.startTime }),
        ...(node.cpuNanoSeconds === undefined ? {} : { cpu: { usageCoreNanoSeconds: node.cpuNanoSeconds } }),
        ...(node.memory ? { memory: node.memory } : {}),
      },
      pods,
    };
  }

  async restartApp(podUid: string, app: string): Promise<void> {
    const entry = this.#pods.get(podUid);
    await this.#app(podUid, app).restart((entry?.pod.terminationGracePeriodSeconds ?? 30) * 1000);
  }

  async stop(): Promise<void> {
    this.#next.clear();
    const entries = [...this.#pods.values()];
    for (const e of entries) this.#beginStop(e, e.pod.terminationGracePeriodSeconds);
    await Promise.all(entries.flatMap((e) => (e.stopping ? [e.stopping.gone] : [])));
    this.#changed();
  }

  async #add(pod: DesiredPod, refusal: AdmissionRefusal | undefined): Promise<void> {
    const podDir = path.join(this.#o.workDir, pod.uid);
    const apps = refusal
      ? []
      : pod.apps.map(
          (app) =>
            new AppSupervisor({
              podUid: pod.uid,
              podName: `${pod.namespace}/${pod.name}`,
              app,
              restartPolicy: pod.restartPolicy,
              root: path.join(podDir, app.name),
              pidFile: path.join(podDir, `.${app.name}.pid`),
              baseEnv: this.#o.baseEnv ?? { PATH: process.env.PATH ?? "/usr/local/bin:/usr/bin:/bin" },
              backoff: this.#o.backoff ?? kubeletBackoff,
              resetAfterMs: this.#o.resetAfterMs ?? 600_000,
              logBytes: this.#o.logBytes ?? 1024 * 1024,
              previousLogBytes: this.#o.previousLogBytes ?? 256 * 1024,
              clock: this.#clock,
              logger: this.#o.logger,
              ...(this.#o.fetcher ? { fetcher: this.#o.fetcher } : {}),
              ...this.#runAs(app),
              onChange: () => this.#changed(),
              onEvent: (e) => this.#event(e),
            }),
        );
    this.#pods.set(pod.uid, { pod, apps, refusal });
    if (refusal) {
      this.#o.logger.warn({ pod: `${pod.namespace}/${pod.name}`, reason: refusal.reason }, refusal.message);
      this.#event({ type: "Warning", reason: refusal.reason, message: refusal.message, podUid: pod.uid });
      return;
    }
    await Promise.all(apps.map((a) => a.start()));
  }

  /** Stops every app (by default with the pod's own grace), forgets the pod, deletes its folder. */
  async #remove(entry: PodEntry, graceSeconds?: number): Promise<void> {
    const graceMs = (graceSeconds ?? entry.pod.terminationGracePeriodSeconds) * 1000;
    await Promise.all(entry.apps.map((a) => a.stop(graceMs)));
    if (this.#pods.get(entry.pod.uid) === entry) this.#pods.delete(entry.pod.uid);
    const podDir = path.join(this.#o.workDir, entry.pod.uid);
    await rm(podDir, { recursive: true, force: true, maxRetries: 3 }).catch((err: unknown) => {
      // The pod is stopped and forgotten all the same; the next agent start removes the folder.
      this.#o.logger.warn({ podDir, err: (err as Error).message }, "could not remove a pod folder");
    });
  }

  /** The first app whose security context cannot be honoured refuses the whole pod. */
  #checkSecurity(pod: DesiredPod): AdmissionRefusal | undefined {
    for (const app of pod.apps) {
      const plan = planSecurity(app, this.#identity, this.#o.groupOf);
      if (plan.kind === "refused") return { reason: "CreateContainerConfigError", message: plan.message };
    }
    return undefined;
  }

  #runAs(app: DesiredApp): { runAs?: FileOwner; launch?: readonly string[] } {
    const plan = planSecurity(app, this.#identity, this.#o.groupOf);
    if (plan.kind !== "ok") return {};
    return { ...(plan.files ? { runAs: plan.files } : {}), ...(plan.launch ? { launch: plan.launch } : {}) };
  }

  /** The app for a session; a refusal with reason NotFound when there is none. */
  #sessionApp(podUid: string, name: string): AppSupervisor {
    const app = this.#pods.get(podUid)?.apps.find((a) => a.name === name);
    if (!app) throw new RuntimeRefusal("NotFound", `no app "${name}" in pod ${podUid} on this device`);
    return app;
  }

  #app(podUid: string, name: string): AppSupervisor {
    const entry = this.#pods.get(podUid);
    const index = entry?.pod.apps.findIndex((a) => a.name === name) ?? -1;
    const app = entry?.apps[index];
    if (!app) throw new Error(`NotFound: app ${name} of pod ${podUid} is not running here`);
    return app;
  }

  #changed(): void {
    for (const cb of this.#changeListeners) cb();
  }

  #event(event: RuntimeEvent): void {
    for (const cb of this.#eventListeners) cb(event);
  }
}

/** A process runtime cannot run an image by itself: every app needs a command. */
function checkCommands(pod: DesiredPod): AdmissionRefusal | undefined {
  const app = pod.apps.find((a) => a.command.length === 0);
  if (!app) return undefined;
  return {
    reason: "NoCommand",
    message: `app ${JSON.stringify(app.name)} (image ${app.image}) has no command: the process runtime runs command and args and cannot start an image by itself`,
  };
}
