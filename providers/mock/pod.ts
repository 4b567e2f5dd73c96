/**
 * One pod as a simulated device runs it: the latest desired workload, what is applied, each app's
 * state machine (ContainerCreating → running → [crash → CrashLoopBackOff → running]… → terminated)
 * and the status that follows from it. Owns its timers; tells its owner of every change.
 */
import type { Logger } from "pino";
import type {
  AppSpec,
  AppState,
  AppStatus,
  PodRef,
  Workload,
  WorkloadStatus,
} from "../../src/provider/types.ts";
import { retryDelay } from "../../src/base/backoff.ts";
import { StringTable } from "../../src/base/intern.ts";
import { AppLog } from "./app-log.ts";
import type { Clock } from "../../src/base/clock.ts";
import { matchesImage, type MockConfig } from "./schema.ts";
import type { PersistedPod } from "./state-file.ts";

export interface MockPodEnv {
  readonly clock: Clock;
  readonly config: MockConfig;
  readonly logger: Logger;
  /** Called after every app transition the pod makes on its own (timers). */
  readonly changed: (pod: MockPod) => void;
}

/** One app as logs, exec and stats see it (read-only; the pod owns it). */
export interface MockContainer {
  readonly spec: AppSpec;
  readonly state: AppState;
  readonly lastState?: AppState;
  readonly restartCount: number;
  /** The current instance's log (the last one's while a crashed app waits to restart). */
  readonly log: AppLog;
  /** The instance before the last restart, when there was one. */
  readonly previousLog?: AppLog;
}

/**
 * One app as the device runs it. A class with every field made in its constructor, so V8 keeps them
 * all inside the object, and the running state kept as its start time alone, made whole when read.
 * An object literal whose timers were added later kept them in an array of their own (40 bytes), and
 * a kept `{ kind: "running", startedAt }` with its Date was 136 bytes a pod (a 5,000-pod heap
 * snapshot, `bench/heap-owners.ts`).
 */
class AppRun implements MockContainer {
  readonly spec: AppSpec;
  lastState: AppState | undefined = undefined;
  restartCount: number;
  log: AppLog;
  previousLog: AppLog | undefined = undefined;
  /** Whether `log` belongs to an instance that has started: the next start is a new instance. */
  instanceStarted = false;
  timer: unknown = undefined;
  /** Writes the app's periodic log lines (`appLogIntervalMs`). */
  ticker: unknown = undefined;
  /** The state while not running; undefined while running since {@link AppRun.#startedAt}. */
  #notRunning: AppState | undefined = undefined;
  /** When the running instance started, in epoch milliseconds. */
  #startedAt = 0;

  constructor(spec: AppSpec, restartCount: number, log: AppLog, state: AppState) {
    this.spec = spec;
    this.restartCount = restartCount;
    this.log = log;
    this.state = state;
  }

  /** A new object at each read while running (its Date included): callers may keep it. */
  get state(): AppState {
    return this.#notRunning ?? { kind: "running", startedAt: new Date(this.#startedAt) };
  }

  set state(state: AppState) {
    if (state.kind === "running") {
      this.#startedAt = state.startedAt.getTime();
      this.#notRunning = undefined;
    } else {
      this.#notRunning = state;
    }
  }

  get running(): boolean {
    return this.#notRunning === undefined;
  }
}

/** The state of every app not yet started: one object for all. */
const CONTAINER_CREATING: AppState = Object.freeze({ kind: "waiting", reason: "ContainerCreating" });

/**
 * The lines every instance of an image logs as it starts ("pulling", "started") kept once per
 * image: a fleet of replicas held two copies per pod (50 bytes a pod, a 5,000-pod heap snapshot).
 */
const startLines = new StringTable({ generationSize: 1_024 });

/** Whether two app specs are the same (compared when a workload is applied, never stored per app). */
const sameSpec = (a: AppSpec, b: AppSpec) => JSON.stringify(a) === JSON.stringify(b);

export class MockPod {
  /** The latest workload devicelet gave (queued while the device is offline). */
  workload: Workload;
  /** How many times createPod created this pod's uid (more than 1: created again after removal). */
  creates = 1;
  /** Set by deletePod: the device must stop this pod; the record stays until it has. */
  tombstone?: { gracePeriodSeconds: number };
  /**
   * What an offline device is assumed to run: the status it had when it went offline, computed at
   * the first offline look (the provider looks at every pod of a device as it goes). Not kept while
   * the device is online, when nothing reads it: about 330 bytes a pod (a 5,000-pod heap snapshot).
   */
  #lastOnline?: WorkloadStatus;
  /** Whether a status was computed while the device was online (else offline means never applied). */
  #seenOnline = false;
  #env: MockPodEnv;
  #apps: AppRun[] = [];
  #appliedHash?: string;
  #everStarted = false;
  #stopTimer?: unknown;
  #stopped = false;

  constructor(workload: Workload, env: MockPodEnv) {
    this.workload = workload;
    this.#env = env;
  }

  /**
   * The pod's ref, made at each call from the workload (a pod's uid, and so its name, never
   * changes): a ref kept per pod is 48 bytes the workload already holds.
   */
  get ref(): PodRef {
    const { namespace, name, uid } = this.workload.pod;
    return { namespace, name, uid };
  }

  get deviceId(): string {
    return this.workload.deviceId;
  }
  /** Hash of the workload the device runs; undefined while it runs nothing of this pod. */
  get appliedHash(): string | undefined {
    return this.#appliedHash;
  }
  /** The device has stopped every app (after a tombstone). */
  get stopped(): boolean {
    return this.#stopped;
  }

  /** Makes the device run `workload`: changed or new apps restart after `appStartDelayMs`. */
  apply(): void {
    const { clock } = this.#env;
    const next = this.workload.apps.map((spec): AppRun => {
      const old = this.#apps.find((a) => a.spec.name === spec.name);
      if (old && sameSpec(old.spec, spec)) return old;
      if (old) {
        this.#clear(old);
        old.log.close(); // that instance ended: its followers end, it becomes the previous one
      }
      const log = new AppLog();
      log.append(clock.now(), startLines.intern(`[mock] pulling ${spec.image}`));
      const run = new AppRun(spec, old ? old.restartCount + 1 : 0, log, CONTAINER_CREATING);
      if (old) {
        run.lastState = this.#terminated(old, 0, "Completed");
        run.previousLog = old.log;
      }
      this.#after(run, this.#env.config.appStartDelayMs, () => {
        this.#start(run);
      });
      return run;
    });
    for (const gone of this.#apps.filter((a) => !next.includes(a))) {
      this.#clear(gone);
      gone.log.close();
    }
    this.#apps = next;
    this.#appliedHash = this.workload.hash;
  }

  /**
   * Stops every app after `delayMs` (0: now, as a SIGKILL would), then calls `done`. A second call
   * only matters when it is quicker; `done` is called once.
   */
  stop(delayMs: number, done: () => void): void {
    if (this.#stopped) {
      done();
      return;
    }
    if (this.#stopTimer !== undefined) {
      if (delayMs > 0) return;
      this.#env.clock.clearTimeout(this.#stopTimer);
    }
    for (const app of this.#apps) this.#clear(app);
    const finish = () => {
      this.#stopTimer = undefined;
      const [code, reason] = delayMs === 0 ? [137, "Error"] : [0, "Completed"];
      for (const app of this.#apps) {
        const wasRunning = app.running;
        app.state = this.#terminated(app, code, reason);
        if (wasRunning) app.log.append(this.#env.clock.now(), `[mock] stopped (exit code ${code})`);
        app.log.close();
      }
      this.#stopped = true;
      done();
    };
    if (delayMs === 0) finish();
    else this.#stopTimer = this.#env.clock.setTimeout(finish, delayMs);
  }

  /** Cancels every timer and ends log followers (provider stop). */
  dispose(): void {
    for (const app of this.#apps) {
      this.#clear(app);
      app.log.close();
    }
    if (this.#stopTimer !== undefined) this.#env.clock.clearTimeout(this.#stopTimer);
    this.#stopTimer = undefined;
  }

  /** The app named `name` as the device runs it; undefined before the pod was applied. */
  container(name: string): MockContainer | undefined {
    return this.#apps.find((a) => a.spec.name === name);
  }

  /** Every app the device runs or ran for this pod (none before it was applied). */
  containers(): readonly MockContainer[] {
    return this.#apps;
  }

  /**
   * The pod's status. Online, it is computed from the apps; offline, it is the one the device
   * went offline with, as `deviceConnected: false`, or Pending/DeviceOffline if never seen online.
   */
  status(connected: boolean, podIP: string | undefined): WorkloadStatus {
    const observedAt = new Date(this.#env.clock.now());
    if (!connected) {
      if (this.#seenOnline) this.#lastOnline ??= this.#online(podIP, observedAt);
      if (this.#lastOnline) return { ...this.#lastOnline, deviceConnected: false, observedAt };
      return {
        pod: this.ref,
        phase: "Pending",
        reason: "DeviceOffline",
        message: `device ${this.deviceId} is offline; the workload is queued until it reconnects`,
        apps: this.workload.apps.map((a) => ({
          name: a.name,
          image: a.image,
          state: { kind: "waiting", reason: "DeviceOffline" },
          ready: false,
          restartCount: 0,
        })),
        deviceConnected: false,
        observedAt,
      };
    }
    this.#lastOnline = undefined;
    this.#seenOnline = true;
    return this.#online(podIP, observedAt);
  }

  /** The status the apps give, as the device reports it while online. */
  #online(podIP: string | undefined, observedAt: Date): WorkloadStatus {
    const apps = this.#apps.map((a): AppStatus => ({
      name: a.spec.name,
      image: a.spec.image,
      state: a.state,
      ready: a.running && !this.tombstone,
      restartCount: a.restartCount,
      ...(a.lastState ? { lastState: a.lastState } : {}),
    }));
    const base = { pod: this.ref, apps, deviceConnected: true, observedAt, ...(podIP ? { podIP } : {}) };
    if (this.#appliedHash === undefined) {
      return { ...base, phase: "Pending", reason: "Queued", message: "not yet applied on the device" };
    }
    if (apps.length > 0 && apps.every((a) => a.state.kind === "terminated")) {
      const failed = apps.some((a) => a.state.kind === "terminated" && a.state.exitCode !== 0);
      return { ...base, phase: failed ? "Failed" : "Succeeded" };
    }
    if (!this.#everStarted) return { ...base, phase: "Pending", reason: "ContainerCreating" };
    return { ...base, phase: "Running" };
  }

  /** What the state file keeps of this pod. */
  persisted(): PersistedPod {
    return {
      workload: this.workload,
      ...(this.tombstone ? { tombstone: this.tombstone } : {}),
      ...(this.#appliedHash === undefined
        ? {}
        : {
            running: {
              hash: this.#appliedHash,
              apps: this.#apps.map((a) => {
                const { state } = a;
                return {
                  spec: a.spec,
                  restartCount: a.restartCount,
                  ...("startedAt" in state && state.startedAt
                    ? { startedAt: state.startedAt.getTime() }
                    : {}),
                };
              }),
            },
          }),
    };
  }

  /** Rebuilds a pod from the state file: apps that had started run on (failing ones fail again). */
  static restore(p: PersistedPod, env: MockPodEnv): MockPod {
    const pod = new MockPod(p.workload, env);
    if (p.tombstone) pod.tombstone = { ...p.tombstone };
    if (p.running) {
      pod.#appliedHash = p.running.hash;
      pod.#apps = p.running.apps.map((a) => {
        const run = new AppRun(a.spec, a.restartCount, new AppLog(), CONTAINER_CREATING);
        if (a.startedAt === undefined) {
          pod.#after(run, env.config.appStartDelayMs, () => {
            pod.#start(run);
          });
        } else {
          pod.#start(run, new Date(a.startedAt), false);
        }
        return run;
      });
    }
    return pod;
  }

  #start(run: AppRun, startedAt = new Date(this.#env.clock.now()), notify = true): void {
    const { config, clock } = this.#env;
    run.state = { kind: "running", startedAt };
    this.#everStarted = true;
    if (run.instanceStarted) {
      // A restart is a new instance with a log of its own, as the kubelet keeps one file per instance.
      run.previousLog = run.log;
      run.log = new AppLog();
    }
    run.instanceStarted = true;
    run.log.append(clock.now(), startLines.intern(`[mock] started ${run.spec.image}`));
    if (config.failImages.some((p) => matchesImage(p, run.spec.image))) {
      this.#after(run, config.failAfterMs, () => {
        this.#crash(run);
      });
    }
    if (config.appLogIntervalMs > 0) this.#tick(run, 1);
    if (notify) this.#env.changed(this);
  }

  /** Exit code 1; restarted after a doubling back-off unless restartPolicy is Never. */
  #crash(run: AppRun): void {
    const { config, clock } = this.#env;
    const exited = this.#terminated(run, 1, "Error");
    run.log.append(clock.now(), `[mock] ${run.spec.image} exited with code 1 (failImages)`);
    run.log.close(); // `kubectl logs -f` ends with the instance
    if (this.workload.restartPolicy === "Never") {
      run.state = exited;
    } else {
      // The kubelet's CrashLoopBackOff: doubling per restart, capped, no jitter.
      const backoff = retryDelay({
        failures: run.restartCount + 1,
        baseMs: config.crashBackoffMs,
        maxMs: config.crashBackoffMaxMs,
        jitter: "none",
      });
      run.lastState = exited;
      run.state = {
        kind: "waiting",
        reason: "CrashLoopBackOff",
        message: `back-off ${backoff}ms restarting failed container=${run.spec.name} pod=${this.ref.name}`,
      };
      this.#after(run, backoff, () => {
        run.restartCount += 1;
        this.#start(run);
      });
    }
    this.#env.logger.debug(
      {
        pod: `${this.ref.namespace}/${this.ref.name}`,
        device: this.deviceId,
        app: run.spec.name,
        restartCount: run.restartCount,
      },
      "mock: app crashed",
    );
    this.#env.changed(this);
  }

  #terminated(run: AppRun, exitCode: number, reason: string): AppState {
    const finishedAt = new Date(this.#env.clock.now());
    const { state } = run;
    return state.kind === "running"
      ? { kind: "terminated", exitCode, reason, startedAt: state.startedAt, finishedAt }
      : { kind: "terminated", exitCode, reason, finishedAt };
  }

  #after(run: AppRun, ms: number, fn: () => void): void {
    this.#clear(run);
    run.timer = this.#env.clock.setTimeout(() => {
      run.timer = undefined;
      fn();
    }, ms);
  }

  /** The app's own output: one line every `appLogIntervalMs` while this instance runs. */
  #tick(run: AppRun, n: number): void {
    const { clock, config } = this.#env;
    run.ticker = clock.setTimeout(() => {
      run.ticker = undefined;
      if (!run.running || this.#stopped) return;
      run.log.append(clock.now(), `[mock] ${run.spec.image} heartbeat ${n}`);
      this.#tick(run, n + 1);
    }, config.appLogIntervalMs);
  }

  #clear(run: AppRun): void {
    if (run.timer !== undefined) this.#env.clock.clearTimeout(run.timer);
    run.timer = undefined;
    if (run.ticker !== undefined) this.#env.clock.clearTimeout(run.ticker);
    run.ticker = undefined;
  }
}
