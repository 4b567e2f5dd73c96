/**
 * A {@link Runtime} that runs no processes: each app "starts" after a configurable time (with
 * jitter), a configurable fraction of starts crash (exit code 1) and are restarted per restart
 * policy with back-off, and pods beyond the device's capacity are refused at admission as the
 * kubelet would. One timer per pending start or restart, none while idle, so thousands of
 * simulated devices fit in one process.
 *
 *   const runtime = new SimRuntime({ appStartMs: 50, appStartJitterMs: 20, failureRate: 0.1 });
 */
import type { DesiredPod, ReportedApp, ReportedAppState, ReportedPod, Tombstone } from "../protocol/types.ts";
import { systemClock, type Clock } from "../base/clock.ts";
import {
  admit,
  podPhase,
  refusedPod,
  restartDelay,
  shouldRestart,
  terminatedState,
  type AdmissionRefusal,
  type BackoffOptions,
  type ExecResult,
  type Runtime,
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
  log: string[];
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

  constructor(options: SimRuntimeOptions = {}) {
    this.#o = options;
    this.#clock = options.clock ?? systemClock;
    this.#random = options.random ?? Math.random;
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
      const state: SimPod = { pod, refusal, apps: pod.apps.map((a) => newApp(a.name, a.image)) };
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

  logs(podUid: string, app: string): Promise<string> {
    return Promise.resolve(this.#app(podUid, app).log.join(""));
  }

  exec(podUid: string, app: string, args: readonly string[]): Promise<ExecResult> {
    this.#app(podUid, app);
    return Promise.resolve({ exitCode: 0, output: `simulated: ${args.join(" ")}\n` });
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
    if (this.#random() >= (this.#o.failureRate ?? 0)) {
      app.status = { state: "running", startedAt: now };
      app.started = true;
      app.log.push(`${now} ${app.name} started\n`);
      if (app.log.length > 100) app.log.shift();
      return;
    }
    const crashed = terminatedState({
      exitCode: 1,
      startedAt: now,
      finishedAt: now,
      message: "simulated crash",
    });
    app.started = true;
    app.log.push(`${now} ${app.name} crashed\n`);
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
    for (const app of state.apps) if (app.timer !== undefined) this.#clock.clearTimeout(app.timer);
    this.#pods.delete(uid);
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

const newApp = (name: string, image: string): SimApp => ({
  name,
  image,
  status: { state: "waiting", reason: "ContainerCreating" },
  lastStatus: undefined,
  restartCount: 0,
  started: false,
  final: false,
  failures: 0,
  timer: undefined,
  log: [],
});
