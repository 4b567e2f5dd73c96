/**
 * MockProvider: simulated devices that honour the full provider contract in memory, with presence,
 * offline queueing (latest wins), tombstones, crash loops, injected failures and an optional state
 * file, and every capability the kubelet API calls (logs, exec, attach, port-forward, stats; see
 * capabilities.ts). The engine's tests and the demo run against it; see index.ts for usage.
 */
import type { Logger } from "pino";
import { invalidInput, transient } from "../../src/provider/errors.ts";
import type {
  AttachCapability,
  DeletePodOptions,
  DeletionNotifier,
  DeviceInfo,
  DeviceWatcher,
  DeviceInventory,
  DeviceStats,
  DeviceSync,
  DeviceSyncReporter,
  ExecCapability,
  ExecIO,
  ForwardedConnection,
  LogOptions,
  LogsCapability,
  LogStream,
  PodFeature,
  PodLifecycleProvider,
  PodRef,
  PortForwardCapability,
  ProviderPod,
  Lifecycle,
  StatsCapability,
  StatusNotifier,
  Workload,
  WorkloadStatus,
} from "../../src/provider/types.ts";
import { podKey } from "../../src/provider/types.ts";
import { systemClock, type Clock } from "../../src/base/clock.ts";
import type { MockProviderDeps, MockStats } from "./provider-types.ts";
import { MockPod, type MockPodEnv } from "./pod.ts";
import { MockCapabilities } from "./capabilities.ts";
import { DeviceFleet } from "./fleet.ts";
import { expandDevices, MOCK_DEFAULT_SUPPORTS, type MockConfig } from "./schema.ts";
import { StateFile, type PersistedState } from "./state-file.ts";
import { MockSyncBook } from "./sync.ts";

/**
 * How many removed pods' create counts `stats().createsByUid` keeps, so that a pod created again
 * after it was removed (resurrected) shows a count of 2. A held pod's count is kept on the pod;
 * removed ones are forgotten oldest first past this many, so pods that come and go for the life of
 * the process cost nothing once gone (and neither does the state file).
 */
export const REMOVED_CREATES_KEPT = 1_024;

export class MockProvider
  implements
    PodLifecycleProvider,
    StatusNotifier,
    DeletionNotifier,
    DeviceInventory,
    LogsCapability,
    ExecCapability,
    AttachCapability,
    PortForwardCapability,
    StatsCapability,
    Lifecycle,
    DeviceSyncReporter
{
  readonly name = "mock";
  readonly supports: readonly PodFeature[];
  readonly config: MockConfig;
  #log: Logger;
  #clock: Clock;
  #random: () => number;
  #fleet: DeviceFleet;
  #pods = new Map<string, MockPod>();
  #byDevice = new Map<string, Set<MockPod>>();
  /** Create counts of removed pods, oldest first, at most {@link REMOVED_CREATES_KEPT}. */
  #removedCreates = new Map<string, number>();
  #counters = {
    creates: 0,
    applied: 0,
    updates: 0,
    deletes: 0,
    deleted: 0,
    noops: 0,
    createErrors: 0,
    statusNotifications: 0,
  };
  #onStatus: ((s: WorkloadStatus) => void)[] = [];
  #onDeleted: ((p: PodRef) => void)[] = [];
  #onDevice: DeviceWatcher[] = [];
  #store?: StateFile;
  #timers = new Set<unknown>();
  #podEnv: MockPodEnv;
  readonly #capabilities: MockCapabilities;
  #sync: MockSyncBook;
  #stopping?: Promise<void>;
  readonly #fail: ((error: Error) => void) | undefined;

  /** Use {@link createMockProvider}, which validates the config and fills its defaults. */
  constructor(config: MockConfig, deps: MockProviderDeps) {
    this.config = config;
    this.supports = config.supports ?? MOCK_DEFAULT_SUPPORTS;
    this.#log = deps.logger.child({ provider: "mock" });
    this.#clock = deps.clock ?? systemClock;
    this.#random = deps.random ?? Math.random;
    this.#fail = deps.fail;
    this.#fleet = new DeviceFleet(expandDevices(config), this.#clock);
    this.#sync = new MockSyncBook(this.#clock);
    this.#podEnv = {
      clock: this.#clock,
      config,
      logger: this.#log,
      changed: (pod) => {
        this.#emit(pod);
        this.#store?.schedule(); // start times and restart counts survive a restart
      },
    };
    this.#capabilities = new MockCapabilities({
      config,
      clock: this.#clock,
      logger: this.#log,
      fleet: this.#fleet,
      pod: (uid) => this.#pods.get(uid),
      devicePods: (id) => this.#byDevice.get(id) ?? [],
    });
    if (config.stateFile !== undefined) {
      // One file per shard: the engines of a sharded devicelet each have a mock of their own.
      const file = deps.shard === undefined ? config.stateFile : `${config.stateFile}.shard-${deps.shard}`;
      this.#store = new StateFile(file, {
        logger: this.#log,
        clock: this.#clock,
        snapshot: () => this.#snapshot(),
      });
    }
  }

  /** Loads the state file (if any), re-applies what devices still need, starts the offline schedule. */
  async start(signal: AbortSignal): Promise<void> {
    const state = await this.#store?.load();
    if (state) this.#restore(state);
    for (const o of this.config.offline) {
      this.#after(o.afterMs, () => {
        this.setConnected(o.device, false);
      });
      if (o.forMs !== undefined) {
        this.#after(o.afterMs + o.forMs, () => {
          this.setConnected(o.device, true);
        });
      }
    }
    for (const r of this.config.removals) this.#after(r.afterMs, () => this.removeDevice(r.device));
    const fatalAfter = this.config.fatalErrorAfterMs;
    if (fatalAfter !== undefined) {
      this.#after(fatalAfter, () =>
        this.#fail?.(new Error(`mock: fatal error injected ${fatalAfter} ms after start`)),
      );
    }
    signal.addEventListener("abort", () => void this.stop(), { once: true });
    if (signal.aborted) await this.stop();
    this.#log.info({ devices: this.#fleet.size, pods: this.#pods.size }, "mock provider started");
  }

  /** Cancels all simulation timers and writes the state file. Idempotent; also run on abort. */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      for (const t of this.#timers) this.#clock.clearTimeout(t);
      this.#timers.clear();
      for (const pod of this.#pods.values()) pod.dispose();
      await this.#store?.flush().catch((err: unknown) => {
        this.#log.error({ err }, "mock: final state write failed");
      });
    })();
    return this.#stopping;
  }

  /** Writes the state file now (no-op without one). */
  async flush(): Promise<void> {
    await this.#store?.flush();
  }

  /**
   * Creates (or, offline, queues) the pod. The hash already held is a no-op; another hash for a
   * held uid is an update. Throws Transient at `createErrorRate`, before changing anything.
   * @throws ProviderError InvalidInput for a device not in the config.
   */
  createPod(workload: Workload): Promise<void> {
    return settle(() => {
      if (this.config.createErrorRate > 0 && this.#random() < this.config.createErrorRate) {
        this.#counters.createErrors++;
        throw transient(`mock: injected create failure for ${workload.pod.namespace}/${workload.pod.name}`);
      }
      if (!this.#fleet.has(workload.deviceId))
        throw invalidInput(`mock: unknown device ${workload.deviceId}`);
      const held = this.#pods.get(workload.pod.uid);
      if (held) {
        this.#update(held, workload);
        return;
      }
      const pod = new MockPod(workload, this.#podEnv);
      const { uid } = workload.pod;
      pod.creates = (this.#removedCreates.get(uid) ?? 0) + 1;
      this.#removedCreates.delete(uid);
      this.#counters.creates++;
      this.#pods.set(uid, pod);
      this.#devicePods(pod.deviceId).add(pod);
      this.#log.debug({ pod: podKey(pod.ref), device: pod.deviceId }, "mock: pod created");
      if (this.#fleet.online(pod.deviceId)) this.#apply(pod);
      else this.#emit(pod, true);
      this.#sync.changed(pod.deviceId, this.#pending(pod.deviceId));
      this.#store?.schedule();
    });
  }

  /** A pod it does not hold (its state was lost) is created, as the contract asks. */
  updatePod(workload: Workload): Promise<void> {
    const pod = this.#pods.get(workload.pod.uid);
    if (!pod) return this.createPod(workload);
    return settle(() => {
      this.#update(pod, workload);
    });
  }

  #update(pod: MockPod, workload: Workload): void {
    if (pod.tombstone) return; // being deleted; a pod is never brought back
    if (pod.workload.hash === workload.hash) {
      this.#counters.noops++;
      return;
    }
    this.#counters.updates++;
    pod.workload = workload; // latest wins: an offline device gets only this one
    if (this.#fleet.online(pod.deviceId)) this.#apply(pod);
    this.#sync.changed(pod.deviceId, this.#pending(pod.deviceId));
    this.#store?.schedule();
  }

  /**
   * Tombstones the pod (durably, when there is a state file), then stops it on the device; while the
   * device is offline the tombstone waits for reconnect. notifyDeleted fires once it is stopped.
   * A pod it does not hold (never created, or deleted already) resolves and is reported deleted at
   * once, as the MQTT provider does: there is nothing to stop, and the engine waits for the notice.
   */
  async deletePod(ref: PodRef, options: DeletePodOptions): Promise<void> {
    const pod = this.#pods.get(ref.uid);
    if (!pod) {
      const gone: PodRef = { namespace: ref.namespace, name: ref.name, uid: ref.uid };
      for (const cb of this.#onDeleted) this.#call(cb, gone);
      return;
    }
    const grace = Math.min(options.gracePeriodSeconds, pod.tombstone?.gracePeriodSeconds ?? Infinity);
    const first = !pod.tombstone;
    if (first) this.#counters.deletes++;
    pod.tombstone = { gracePeriodSeconds: grace };
    if (first) this.#sync.changed(pod.deviceId, true);
    await this.#store?.flush();
    if (this.#fleet.online(pod.deviceId) || pod.appliedHash === undefined || !this.#fleet.has(pod.deviceId)) {
      this.#stopPod(pod);
    }
  }

  getPodStatus(ref: PodRef): Promise<WorkloadStatus | undefined> {
    const pod = this.#pods.get(ref.uid);
    return Promise.resolve(pod && this.#status(pod));
  }

  listPods(): Promise<readonly ProviderPod[]> {
    return Promise.resolve(
      [...this.#pods.values()].map((p) => ({
        pod: p.ref,
        nodeName: p.workload.nodeName,
        hash: p.workload.hash,
        terminationGracePeriodSeconds: p.workload.terminationGracePeriodSeconds,
      })),
    );
  }

  notifyStatus(callback: (status: WorkloadStatus) => void): void {
    this.#onStatus.push(callback);
  }

  notifyDeleted(callback: (pod: PodRef) => void): void {
    this.#onDeleted.push(callback);
  }

  listDevices(): Promise<readonly DeviceInfo[]> {
    return Promise.resolve(this.#fleet.list());
  }

  watchDevices(watcher: DeviceWatcher): void {
    this.#onDevice.push(watcher);
  }

  /**
   * One app's simulated log (app-log.ts); while the device is away, what devicelet had when it
   * went, with a notice. Throws NotFound (pod, container), Unsupported (no previous instance),
   * InvalidInput (waiting to start), Transient (never ran on an offline device).
   */
  getContainerLogs(ref: PodRef, container: string, options: LogOptions): Promise<LogStream> {
    return this.#capabilities.getContainerLogs(ref, container, options);
  }

  /** One of exec.ts's simulated commands; refusals in capabilities.ts. */
  execInContainer(
    ref: PodRef,
    container: string,
    command: readonly string[],
    io: ExecIO,
  ): Promise<{ readonly exitCode: number }> {
    return this.#capabilities.execInContainer(ref, container, command, io);
  }

  /** The app's new output on stdout, stdin echoed back (attach.ts). */
  attachToContainer(ref: PodRef, container: string, io: ExecIO): Promise<{ readonly exitCode?: number }> {
    return this.#capabilities.attachToContainer(ref, container, io);
  }

  /** Every port of a simulated pod echoes what it is sent. */
  portForward(ref: PodRef, port: number, connection: ForwardedConnection): Promise<void> {
    return this.#capabilities.portForward(ref, port, connection);
  }

  /** Synthetic usage of the device and its running apps (stats.ts). Throws NotFound for an unknown device. */
  getStats(deviceId: string): Promise<DeviceStats> {
    return this.#capabilities.getStats(deviceId);
  }

  /**
   * Takes a device (and every device behind it as gateway) offline or back online. Online again,
   * it applies the latest queued workloads once and carries out tombstones.
   * @throws ProviderError NotFound for an unknown device.
   */
  setConnected(deviceId: string, connected: boolean): void {
    for (const { id, online } of this.#fleet.setConnected(deviceId, connected))
      this.#presenceChanged(id, online);
  }

  /**
   * Removes a device for good (decommissioned in the mock's registry): its pods are dropped without
   * being run again and the engine is told the device is gone, so it deletes the device's node.
   * @throws ProviderError NotFound for an unknown device, InvalidInput while devices are behind it.
   */
  removeDevice(deviceId: string): void {
    this.#fleet.remove(deviceId);
    for (const pod of [...this.#devicePods(deviceId)]) {
      pod.dispose();
      this.#forget(pod);
    }
    this.#byDevice.delete(deviceId);
    this.#store?.schedule();
    this.#log.info({ device: deviceId }, "mock: device removed");
    for (const watcher of this.#onDevice) this.#call((id: string) => watcher.gone(id), deviceId);
  }

  stats(): MockStats {
    const pods = [...this.#pods.values()];
    return {
      ...this.#counters,
      createsByUid: this.#createsByUid(),
      pods: pods.length,
      queued: pods.filter((p) => !p.tombstone && p.appliedHash !== p.workload.hash).length,
      tombstones: pods.filter((p) => p.tombstone).length,
      devicesOnline: this.#fleet.onlineCount(),
    };
  }

  #presenceChanged(id: string, online: boolean): void {
    this.#log.info({ device: id, connected: online }, "mock: device presence changed");
    const info = this.#fleet.info(id);
    for (const watcher of this.#onDevice) this.#call((d: DeviceInfo) => watcher.changed(d), info);
    for (const pod of [...this.#devicePods(id)]) {
      if (online) this.#reconcile(pod);
      else this.#emit(pod, true);
    }
  }

  /** What a device does on (re)connect or restore: carry out the tombstone, or apply the latest. */
  #reconcile(pod: MockPod): void {
    if (pod.tombstone) this.#stopPod(pod);
    else if (pod.appliedHash !== pod.workload.hash) this.#apply(pod);
    else this.#emit(pod);
  }

  #apply(pod: MockPod): void {
    this.#counters.applied++;
    pod.apply();
    this.#emit(pod);
    this.#store?.schedule();
  }

  #stopPod(pod: MockPod): void {
    const grace = pod.tombstone?.gracePeriodSeconds ?? 0;
    if (pod.appliedHash === undefined || !this.#fleet.has(pod.deviceId)) {
      this.#finish(pod); // nothing ever ran on a device
      return;
    }
    const delayMs = grace === 0 ? 0 : Math.min(grace * 1000, this.config.appStopDelayMs);
    pod.stop(delayMs, () => {
      if (this.#fleet.online(pod.deviceId)) this.#finish(pod); // else: on reconnect
    });
    if (delayMs > 0 && !pod.stopped) this.#emit(pod); // apps no longer ready while they stop
  }

  #finish(pod: MockPod): void {
    if (this.#pods.get(pod.ref.uid) !== pod) return;
    this.#emit(pod);
    pod.dispose();
    this.#forget(pod);
    this.#devicePods(pod.deviceId).delete(pod);
    this.#counters.deleted++;
    this.#store?.schedule();
    this.#log.debug({ pod: podKey(pod.ref), device: pod.deviceId }, "mock: pod deleted");
    this.#sync.check(pod.deviceId, this.#pending(pod.deviceId));
    for (const cb of this.#onDeleted) this.#call(cb, pod.ref);
  }

  /** Pushes the pod's status; while the device is offline only when `force`d (a transition). */
  #emit(pod: MockPod, force = false): void {
    this.#sync.check(pod.deviceId, this.#pending(pod.deviceId));
    if (!force && !this.#fleet.online(pod.deviceId)) return;
    const status = this.#status(pod);
    this.#counters.statusNotifications++;
    for (const cb of this.#onStatus) this.#call(cb, status);
  }

  /** Whether any pod of the device waits for it: a version not applied, or a delete not done. */
  #pending(deviceId: string): boolean {
    for (const p of this.#byDevice.get(deviceId) ?? []) {
      if (p.tombstone !== undefined || p.appliedHash !== p.workload.hash) return true;
    }
    return false;
  }

  /** Each change asked of a device is a generation; applied once none of its pods waits (sync.ts). */
  deviceSync(deviceId: string): DeviceSync | undefined {
    return this.#sync.get(deviceId);
  }

  notifyDeviceSync(callback: (deviceId: string) => void): void {
    this.#sync.onChange(callback);
  }

  #status(pod: MockPod): WorkloadStatus {
    return pod.status(this.#fleet.online(pod.deviceId), this.#fleet.address(pod.deviceId));
  }

  /** Drops a removed pod's record, keeping its create count among the last removed ones. */
  #forget(pod: MockPod): void {
    const { uid } = pod.ref;
    this.#pods.delete(uid);
    this.#removedCreates.set(uid, pod.creates);
    this.#keepLastRemoved();
  }

  #keepLastRemoved(): void {
    for (const oldest of this.#removedCreates.keys()) {
      if (this.#removedCreates.size <= REMOVED_CREATES_KEPT) break;
      this.#removedCreates.delete(oldest);
    }
  }

  /** Creates per uid: the held pods' and the last removed ones'. */
  #createsByUid(): Record<string, number> {
    const counts = Object.fromEntries(this.#removedCreates);
    for (const [uid, pod] of this.#pods) counts[uid] = pod.creates;
    return counts;
  }

  #restore(state: PersistedState): void {
    Object.assign(this.#counters, state.counters);
    // A file written before the total was kept: its counts were never forgotten, so they sum to it.
    this.#counters.creates =
      state.counters.creates ?? Object.values(state.createsByUid).reduce((a, b) => a + b, 0);
    for (const p of state.pods) {
      const pod = MockPod.restore(p, this.#podEnv);
      this.#pods.set(pod.ref.uid, pod);
      this.#devicePods(pod.deviceId).add(pod);
    }
    for (const [uid, n] of Object.entries(state.createsByUid)) {
      const pod = this.#pods.get(uid);
      if (pod) pod.creates = n;
      else this.#removedCreates.set(uid, n);
    }
    this.#keepLastRemoved(); // an older file kept every removed pod's count
    for (const pod of [...this.#pods.values()]) {
      if (this.#fleet.online(pod.deviceId) || (pod.tombstone && !this.#fleet.has(pod.deviceId)))
        this.#reconcile(pod);
    }
    this.#log.info({ pods: state.pods.length, path: this.config.stateFile }, "mock: state restored");
  }

  #snapshot(): PersistedState {
    return {
      version: 1,
      pods: [...this.#pods.values()].map((p) => p.persisted()),
      createsByUid: this.#createsByUid(),
      counters: {
        creates: this.#counters.creates,
        applied: this.#counters.applied,
        updates: this.#counters.updates,
        deletes: this.#counters.deletes,
      },
    };
  }

  #devicePods(id: string): Set<MockPod> {
    let set = this.#byDevice.get(id);
    if (!set) this.#byDevice.set(id, (set = new Set()));
    return set;
  }

  #after(ms: number, fn: () => void): void {
    const t = this.#clock.setTimeout(() => {
      this.#timers.delete(t);
      fn();
    }, ms);
    this.#timers.add(t);
  }

  #call<T>(cb: (arg: T) => void, arg: T): void {
    try {
      cb(arg);
    } catch (err) {
      this.#log.error({ err }, "mock: callback threw");
    }
  }
}

/** Runs `fn` now; its result or throw becomes a promise (sync work behind an async contract). */
const settle = <T>(fn: () => T): Promise<T> => {
  try {
    return Promise.resolve(fn());
  } catch (err) {
    return Promise.reject(err instanceof Error ? err : new Error(String(err)));
  }
};
