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
 */
import { spawn } from "node:child_process";
import { rm } from "node:fs/promises";
import path from "node:path";
import type { Logger } from "pino";
import type { DesiredPod, ReportedPod, Tombstone } from "../protocol/types.ts";
import { systemClock, type DeviceClock } from "./link.ts";
import { LogRing } from "./log-ring.ts";
import type { FetchBytes } from "./pod-files.ts";
import {
  admit,
  kubeletBackoff,
  podPhase,
  refusedPod,
  type AdmissionRefusal,
  type BackoffOptions,
  type ExecResult,
  type Runtime,
  type RuntimeEvent,
} from "./runtime.ts";
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
  /** Output kept per app for logs; default 256 KiB. */
  readonly logBytes?: number;
  /** Environment every app starts from; default just PATH (apps do not inherit the agent's). */
  readonly baseEnv?: Readonly<Record<string, string>>;
  /** Longest an exec may run; default 30 s. */
  readonly execTimeoutMs?: number;
  readonly fetcher?: FetchBytes;
  readonly clock?: DeviceClock;
}

interface PodEntry {
  readonly pod: DesiredPod;
  readonly apps: readonly AppSupervisor[];
  readonly refusal: AdmissionRefusal | undefined;
}

export class ProcessRuntime implements Runtime {
  readonly #o: ProcessRuntimeOptions;
  readonly #clock: DeviceClock;
  readonly #pods = new Map<string, PodEntry>();
  readonly #changeListeners: (() => void)[] = [];
  readonly #eventListeners: ((e: RuntimeEvent) => void)[] = [];

  constructor(options: ProcessRuntimeOptions) {
    this.#o = options;
    this.#clock = options.clock ?? systemClock;
  }

  async apply(pods: readonly DesiredPod[], tombstones: readonly Tombstone[]): Promise<void> {
    const graceOf = new Map(tombstones.map((t) => [t.uid, t.gracePeriodSeconds]));
    const wanted = pods.filter((p) => !graceOf.has(p.uid));
    const wantedUids = new Set(wanted.map((p) => p.uid));
    const admitted = new Set(
      [...this.#pods.values()].filter((e) => !e.refusal && wantedUids.has(e.pod.uid)).map((e) => e.pod.uid),
    );
    const refused = admit(wanted, this.#o.capacity ?? {}, admitted);
    const work: Promise<void>[] = [];
    for (const entry of this.#pods.values()) {
      if (!wantedUids.has(entry.pod.uid)) work.push(this.#remove(entry, graceOf.get(entry.pod.uid)));
    }
    for (const pod of wanted) {
      const existing = this.#pods.get(pod.uid);
      const refusal = refused.get(pod.uid) ?? checkCommands(pod);
      if (existing && existing.pod.hash === pod.hash && !existing.refusal === !refusal) continue;
      work.push(
        (async () => {
          if (existing) await this.#remove(existing);
          await this.#add(pod, refusal);
        })(),
      );
    }
    await Promise.all(work);
    this.#changed();
  }

  report(): ReportedPod[] {
    return [...this.#pods.values()].map((e) => {
      if (e.refusal) return refusedPod(e.pod, e.refusal);
      return {
        uid: e.pod.uid,
        hash: e.pod.hash,
        phase: podPhase(e.apps.map((a) => a.phaseInput)),
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
    const [file = "", ...rest] = args;
    const output = new LogRing(64 * 1024);
    return new Promise((resolve) => {
      const child = spawn(file, rest, {
        cwd: path.join(this.#o.workDir, podUid, app),
        env: supervisor.env,
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

  async restartApp(podUid: string, app: string): Promise<void> {
    const entry = this.#pods.get(podUid);
    await this.#app(podUid, app).restart((entry?.pod.terminationGracePeriodSeconds ?? 30) * 1000);
  }

  async stop(): Promise<void> {
    await Promise.all([...this.#pods.values()].map((e) => this.#remove(e)));
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
              logBytes: this.#o.logBytes ?? 256 * 1024,
              clock: this.#clock,
              logger: this.#o.logger,
              ...(this.#o.fetcher ? { fetcher: this.#o.fetcher } : {}),
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

  /** Stops every app (tombstone grace, else the pod's), forgets the pod and deletes its folder. */
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
