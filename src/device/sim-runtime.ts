/**
 * A {@link Runtime} that runs no processes: each app "starts" after a configurable time (with
 * jitter), a configurable fraction of starts crash (exit code 1) and are restarted per restart
 * policy with back-off, and pods beyond the device's capacity are refused at admission as the
 * kubelet would. One timer per pending start or restart, none while idle, so thousands of
 * simulated devices fit in one process.
 *
 * For `kubectl logs`, `exec` and `top`: a running app "writes" a line every `logIntervalMs`
 * (written lazily when read, or by a timer while someone follows), exec runs a few simulated
 * commands (sim-exec.ts), and stats are synthetic but plausible (CPU counters that grow with
 * uptime, memory fixed per app name).
 *
 *   const runtime = new SimRuntime({ appStartMs: 50, appStartJitterMs: 20, failureRate: 0.1 });
 */
import type { DesiredPod, ReportedApp, ReportedAppState, ReportedPod, Tombstone } from "../protocol/types.ts";
import { systemClock, type Clock } from "../base/clock.ts";
import { parseQuantity, unitValue } from "../base/quantity.ts";
import { AppLog } from "./log-ring.ts";
import { simulatedExec } from "./sim-exec.ts";
import {
  admit,
  podPhase,
  refusedPod,
  restartDelay,
  shouldRestart,
  terminatedState,
  RuntimeRefusal,
  type AdmissionRefusal,
  type AppLogView,
  type BackoffOptions,
  type ExecRequest,
  type ExecResult,
  type Runtime,
  type RuntimeExec,
  type RuntimeStats,
} from "./runtime.ts";

export interface SimRuntimeOptions {
  /** Time from apply to running; 0 starts apps within `apply`. Default 0. */
  readonly appStartMs?: number;
  /** Up to this much more, uniformly. Default 0. */
  readonly appStartJitterMs?: number;
  /** Fraction (0–1) of app starts that crash. Default 0. */
  readonly failureRate?: number;
  /** cpu, memory, pods: admission limits. */
  readonly capacity?: Readonly<Record<string, string | undefined>>;
  /** Restart back-off. Default 1 s doubling to 30 s (shorter than the kubelet's, for benchmarks). */
  readonly backoff?: BackoffOptions;
  readonly random?: () => number;
  readonly clock?: Clock;
  /** A running app writes a synthetic log line this often. Default 5 s. */
  readonly logIntervalMs?: number;
}

interface SimApp {
  readonly name: string;
  readonly image: string;
  status: ReportedAppState;
  lastStatus: ReportedAppState | undefined;
  restartCount: number;
  started: boolean;
  final: boolean;
  failures: number;
  timer: unknown;
  readonly log: AppLog;
  /** Running since (clock ms), for synthetic lines and stats; undefined while not running. */
  runningSince: number | undefined;
  /** Synthetic lines written so far in this run. */
  lines: number;
  /** CPU this app uses while it runs, in cores (0.005–0.05, fixed per app name). */
  readonly cores: number;
  /** Resident memory while it runs, in bytes before a small wobble (16–80 MiB, fixed per app name). */
  readonly memoryBytes: number;
}

interface SimPod {
  readonly pod: DesiredPod;
  readonly refusal: AdmissionRefusal | undefined;
  readonly apps: SimApp[];
}

export class SimRuntime implements Runtime {
  readonly #o: SimRuntimeOptions;
  readonly #clock: Clock;
  readonly #random: () => number;
  readonly #pods = new Map<string, SimPod>();
  readonly #listeners: (() => void)[] = [];
  readonly #bootMs: number;
  /** Device CPU counter (core-ns) and when it was last advanced. */
  #nodeCpu = { ns: 0, at: 0 };

  constructor(options: SimRuntimeOptions = {}) {
    this.#o = options;
    this.#clock = options.clock ?? systemClock;
    this.#random = options.random ?? Math.random;
    this.#bootMs = this.#clock.now();
    this.#nodeCpu.at = this.#bootMs;
  }

  apply(pods: readonly DesiredPod[], tombstones: readonly Tombstone[]): Promise<void> {
    const wanted = new Set(pods.map((p) => p.uid));
    for (const t of tombstones) wanted.delete(t.uid);
    for (const [uid, state] of this.#pods) {
      if (!wanted.has(uid)) this.#forget(uid, state);
    }
    const admitted = new Set([...this.#pods.values()].filter((s) => !s.refusal).map((s) => s.pod.uid));
    const refused = admit(pods, this.#o.capacity ?? {}, admitted);
    for (const pod of pods) {
      if (!wanted.has(pod.uid)) continue;
      const existing = this.#pods.get(pod.uid);
      const refusal = refused.get(pod.uid);
      if (
        existing &&
        existing.pod.hash === pod.hash &&
        (existing.refusal === undefined) === (refusal === undefined)
      )
        continue;
      if (existing) this.#forget(pod.uid, existing);
      const state: SimPod = {
        pod,
        refusal,
        apps: pod.apps.map((a) => newApp(a.name, a.image, () => this.#clock.now())),
      };
      this.#pods.set(pod.uid, state);
      if (!refusal) for (const app of state.apps) this.#start(state, app);
    }
    this.#changed();
    return Promise.resolve();
  }

  report(): ReportedPod[] {
    return [...this.#pods.values()].map((s) => {
      if (s.refusal) return refusedPod(s.pod, s.refusal);
      const apps: ReportedApp[] = s.apps.map((a) => ({
        name: a.name,
        image: a.image,
        status: a.status,
        ...(a.lastStatus ? { lastStatus: a.lastStatus } : {}),
        ready: a.status.state === "running",
        restartCount: a.restartCount,
      }));
      return { uid: s.pod.uid, hash: s.pod.hash, phase: podPhase(s.apps), apps };
    });
  }

  /** Uids of pods with at least one app running. */
  runningPods(): string[] {
    return [...this.#pods.values()]
      .filter((s) => s.apps.some((a) => a.status.state === "running"))
      .map((s) => s.pod.uid);
  }

  onChange(cb: () => void): void {
    this.#listeners.push(cb);
  }

  logs(podUid: string, app: string, options: { tailLines?: number } = {}): Promise<string> {
    const found = this.#app(podUid, app);
    this.#catchUp(found);
    return Promise.resolve(found.log.text(options.tailLines));
  }

  /** A one-shot `exec` command: the simulated command's output (sim-exec.ts), stdin empty. */
  async exec(podUid: string, app: string, args: readonly string[]): Promise<ExecResult> {
    const run = this.startExec(podUid, app, { command: args, stdin: false });
    const output: Buffer[] = [];
    run.stdout.on("data", (c: Buffer) => output.push(c));
    run.stderr.on("data", (c: Buffer) => output.push(c));
    const exitCode = await run.exited;
    return { exitCode, output: Buffer.concat(output).toString("utf8") };
  }

  /**
   * The app's log, with the synthetic lines of a running app written up to now; a follower gets
   * new ones as they come due (one timer per follower, none otherwise).
   */
  appLog(podUid: string, name: string): AppLogView {
    const app = this.#sessionApp(podUid, name);
    return {
      read: (query) => {
        this.#catchUp(app);
        return app.log.read(query);
      },
      follow: (line, end) => {
        const interval = this.#o.logIntervalMs ?? 5_000;
        let timer: unknown;
        const tick = () => {
          this.#catchUp(app);
          timer = this.#clock.setTimeout(tick, interval);
        };
        const stop = app.log.follow(line, () => {
          this.#clock.clearTimeout(timer);
          end();
        });
        if (app.log.running) timer = this.#clock.setTimeout(tick, interval);
        return () => {
          this.#clock.clearTimeout(timer);
          stop();
        };
      },
    };
  }

  startExec(podUid: string, name: string, request: ExecRequest): RuntimeExec {
    const app = this.#sessionApp(podUid, name);
    const pod = this.#pods.get(podUid)?.pod;
    if (app.runningSince === undefined || !pod)
      throw new RuntimeRefusal("NotFound", `app "${name}" of pod ${podUid} is not running`);
    const env = pod.apps.find((a) => a.name === name)?.env ?? {};
    return simulatedExec(request, {
      env: { PATH: "/usr/local/bin:/usr/bin:/bin", HOSTNAME: pod.name, ...env },
      hostname: pod.name,
      clock: this.#clock,
    });
  }

  /**
   * Synthetic but plausible: each running app uses a fixed fraction of a core and 16–80 MiB
   * (both chosen from its name), so its CPU counter grows with its uptime; the device adds 2 % of
   * a core and 200 MiB of its own, its counter only ever grows, and what is left of its memory
   * capacity is available.
   */
  stats(): Promise<RuntimeStats> {
    const now = this.#clock.now();
    const running = [...this.#pods.values()].map((s) => ({
      podUid: s.pod.uid,
      apps: s.apps.filter((a) => a.runningSince !== undefined),
    }));
    const cores = running.reduce((sum, p) => sum + p.apps.reduce((n, a) => n + a.cores, 0), 0.02);
    this.#nodeCpu = {
      ns: this.#nodeCpu.ns + Math.round((now - this.#nodeCpu.at) * 1e6 * cores),
      at: now,
    };
    const wobble = (a: SimApp) => Math.round(a.memoryBytes * (1 + 0.05 * Math.sin(now / 60_000)));
    const pods = running
      .filter((p) => p.apps.length > 0)
      .map((p) => ({
        podUid: p.podUid,
        apps: p.apps.map((a) => {
          const since = a.runningSince ?? now;
          const memory = wobble(a);
          return {
            app: a.name,
            startTime: new Date(since).toISOString(),
            cpu: { usageCoreNanoSeconds: Math.round((now - since) * 1e6 * a.cores) },
            memory: { workingSetBytes: memory, rssBytes: memory },
          };
        }),
      }));
    const used =
      200 * 1024 * 1024 + running.reduce((n, p) => n + p.apps.reduce((m, a) => m + wobble(a), 0), 0);
    const capacityText = this.#o.capacity?.memory;
    const quantity = capacityText === undefined ? undefined : parseQuantity(capacityText);
    const total = quantity ? Number(unitValue(quantity)) : undefined;
    return Promise.resolve({
      node: {
        startTime: new Date(this.#bootMs).toISOString(),
        cpu: { usageCoreNanoSeconds: this.#nodeCpu.ns },
        memory: {
          workingSetBytes: used,
          usageBytes: used,
          ...(total === undefined ? {} : { availableBytes: Math.max(0, total - used) }),
        },
      },
      pods,
    });
  }

  restartApp(podUid: string, name: string): Promise<void> {
    const app = this.#app(podUid, name);
    const state = this.#pods.get(podUid);
    if (!state) throw new Error(`NotFound: pod ${podUid}`);
    this.#clock.clearTimeout(app.timer);
    if (app.status.state === "running") {
      app.lastStatus = terminatedState({
        exitCode: 143,
        startedAt: app.status.startedAt,
        finishedAt: this.#now(),
        message: "restarted on request",
      });
    }
    app.restartCount++;
    app.final = false;
    this.#start(state, app);
    this.#changed();
    return Promise.resolve();
  }

  stop(): Promise<void> {
    for (const [uid, state] of this.#pods) this.#forget(uid, state);
    this.#changed();
    return Promise.resolve();
  }

  #start(state: SimPod, app: SimApp): void {
    if (app.runningSince !== undefined) this.#stopped(app);
    app.status = { state: "waiting", reason: "ContainerCreating" };
    const delay = (this.#o.appStartMs ?? 0) + (this.#o.appStartJitterMs ?? 0) * this.#random();
    if (delay <= 0) this.#started(state, app);
    else {
      app.timer = this.#clock.setTimeout(() => {
        app.timer = undefined;
        this.#started(state, app);
        this.#changed();
      }, delay);
    }
  }

  #started(state: SimPod, app: SimApp): void {
    const now = this.#now();
    app.log.begin();
    app.lines = 0;
    if (this.#random() >= (this.#o.failureRate ?? 0)) {
      app.status = { state: "running", startedAt: now };
      app.started = true;
      app.runningSince = this.#clock.now();
      app.log.appendLine(`${app.name} started`, app.runningSince);
      return;
    }
    const crashed = terminatedState({
      exitCode: 1,
      startedAt: now,
      finishedAt: now,
      message: "simulated crash",
    });
    app.started = true;
    app.log.appendLine(`${app.name} crashed: simulated failure`, this.#clock.now(), "stderr");
    app.log.end();
    if (!shouldRestart(state.pod.restartPolicy, 1)) {
      app.status = crashed;
      app.final = true;
      return;
    }
    app.failures++;
    const delay = restartDelay(app.failures, this.#o.backoff ?? { initialMs: 1_000, maxMs: 30_000 });
    app.lastStatus = crashed;
    app.status = {
      state: "waiting",
      reason: "CrashLoopBackOff",
      message: `back-off ${Math.round(delay / 1000)}s restarting failed app ${app.name}`,
    };
    app.timer = this.#clock.setTimeout(() => {
      app.timer = undefined;
      app.restartCount++;
      this.#start(state, app);
      this.#changed();
    }, delay);
  }

  #forget(uid: string, state: SimPod): void {
    for (const app of state.apps) {
      if (app.timer !== undefined) this.#clock.clearTimeout(app.timer);
      this.#stopped(app);
    }
    this.#pods.delete(uid);
  }

  /** The app is no longer running: its log instance ends (followers with it). */
  #stopped(app: SimApp): void {
    this.#catchUp(app);
    app.runningSince = undefined;
    app.log.end();
  }

  /** Writes the synthetic lines a running app has come to owe since it started (at most 100 at once). */
  #catchUp(app: SimApp): void {
    if (app.runningSince === undefined) return;
    const interval = this.#o.logIntervalMs ?? 5_000;
    const due = Math.floor((this.#clock.now() - app.runningSince) / interval);
    app.lines = Math.max(app.lines, due - 100);
    while (app.lines < due) {
      app.lines++;
      const reading = (20 + 5 * Math.sin(app.lines / 7)).toFixed(1);
      app.log.appendLine(
        `${app.name} sample ${app.lines}: temperature=${reading}C`,
        app.runningSince + app.lines * interval,
      );
    }
  }

  #sessionApp(podUid: string, name: string): SimApp {
    const app = this.#pods.get(podUid)?.apps.find((a) => a.name === name);
    if (!app) throw new RuntimeRefusal("NotFound", `no app "${name}" in pod ${podUid} on this device`);
    return app;
  }

  #app(podUid: string, name: string): SimApp {
    const app = this.#pods.get(podUid)?.apps.find((a) => a.name === name);
    if (!app) throw new Error(`NotFound: app ${name} of pod ${podUid}`);
    return app;
  }

  #changed(): void {
    for (const cb of this.#listeners) cb();
  }

  #now(): string {
    return new Date(this.#clock.now()).toISOString();
  }
}

/** A number in [0, 1) fixed by `text` (FNV-1a), so an app's synthetic usage stays the same across runs. */
function fraction(text: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) hash = Math.imul(hash ^ text.charCodeAt(i), 0x01000193);
  return (hash >>> 0) / 2 ** 32;
}

const newApp = (name: string, image: string, now: () => number): SimApp => ({
  name,
  image,
  status: { state: "waiting", reason: "ContainerCreating" },
  lastStatus: undefined,
  restartCount: 0,
  started: false,
  final: false,
  failures: 0,
  timer: undefined,
  log: new AppLog({ maxBytes: 32 * 1024, previousBytes: 8 * 1024, now }),
  runningSince: undefined,
  lines: 0,
  cores: 0.005 + 0.045 * fraction(`cpu/${name}`),
  memoryBytes: Math.round((16 + 64 * fraction(`memory/${name}`)) * 1024 * 1024),
});
