/**
 * HttpProvider: devicelet's provider contract for devices that poll over HTTP (protocol.ts).
 *
 * The provider never calls a device. It holds, per pod, the latest workload and, once the pod is
 * deleted, a tombstone; each device poll is answered with what that device should run and stop,
 * and its report is turned into pod status. So every contract call only changes what is held and
 * writes it to the store, and returns: it never waits for a device, online or not.
 *
 *   createPod ──► held pods ──(store)      device ── POST /sync { what I run } ──► provider
 *                     │                        ◄── { run: [...], stop: [...] } ───┘
 *                     └──► status callback ◄── report
 *
 * Capabilities: StatusNotifier and DeletionNotifier (from each report), DeviceInventory (a device
 * is known from its first poll, offline after `offlineAfterSeconds` of silence) and Lifecycle
 * (start reads the state and listens, stop closes).
 */
import {
  podKey,
  systemClock,
  unsupported,
  notFound,
  type Clock,
  type DeletePodOptions,
  type DeletionNotifier,
  type DeviceInfo,
  type DeviceInventory,
  type DeviceWatcher,
  type Lifecycle,
  type PodLifecycleProvider,
  type PodRef,
  type ProviderContext,
  type ProviderPod,
  type StatusNotifier,
  type Workload,
  type WorkloadStatus,
} from "devicelet/provider";
import { isAllowed, type HttpProviderConfig } from "./config.ts";
import { DeviceRegistry } from "./devices.ts";
import type { SyncRequest, SyncResponse } from "./protocol.ts";
import { listenForDevices, type SyncServer } from "./server.ts";
import { GroupCommit, parseState, STATE_KEY, type HeldPod, type PersistedState } from "./state.ts";
import { podStatus } from "./status.ts";

export class HttpProvider
  implements PodLifecycleProvider, StatusNotifier, DeletionNotifier, DeviceInventory, Lifecycle
{
  readonly name = "http-example";
  /** Plain containers: image, command, args and env. Anything else a pod uses is refused by devicelet. */
  readonly supports = [] as const;
  readonly #config: HttpProviderConfig;
  readonly #context: ProviderContext;
  readonly #log: ProviderContext["logger"];
  readonly #clock: Clock;
  /** By pod uid: a re-created pod of the same name is another pod. */
  readonly #pods = new Map<string, HeldPod>();
  readonly #devices: DeviceRegistry;
  readonly #commit: GroupCommit;
  /** Last status sent per uid, without its time: the callback is called on changes only. */
  readonly #sent = new Map<string, string>();
  #onStatus: (status: WorkloadStatus) => void = () => undefined;
  #onDeleted: (pod: PodRef) => void = () => undefined;
  #watcher?: DeviceWatcher;
  #server?: SyncServer;
  #stopping?: Promise<void>;

  constructor(config: HttpProviderConfig, context: ProviderContext, clock: Clock = systemClock) {
    this.#config = config;
    this.#context = context;
    this.#log = context.logger.child({ provider: this.name });
    this.#clock = clock;
    this.#devices = new DeviceRegistry({
      clock,
      offlineAfterMs: config.offlineAfterSeconds * 1000,
      changed: (id) => this.#deviceChanged(id),
    });
    this.#commit = new GroupCommit(() => context.store.set(STATE_KEY, JSON.stringify(this.#snapshot())));
  }

  /** The URL devices poll; set once `start` resolved. */
  get url(): string | undefined {
    return this.#server?.url;
  }

  async start(signal: AbortSignal): Promise<void> {
    const state = parseState(await this.#context.store.get(STATE_KEY));
    this.#devices.restore(state.devices);
    for (const pod of state.pods) this.#pods.set(pod.workload.pod.uid, pod);
    signal.throwIfAborted();
    const { host, port } = this.#config.listen;
    this.#server = await listenForDevices({
      host,
      port,
      logger: this.#log,
      sync: (...a) => this.#sync(...a),
    });
    this.#log.info({ url: this.#server.url, pods: this.#pods.size }, "listening for devices");
  }

  /** Closes the server (polls being answered finish first) and goes quiet. Idempotent. */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      await this.#server?.close();
      this.#devices.stop();
      // No callback once stop resolved; and nothing to flush: every change was stored before the
      // call or poll that made it returned.
      this.#onStatus = () => undefined;
      this.#onDeleted = () => undefined;
      this.#watcher = undefined;
    })();
    return this.#stopping;
  }

  /** @throws ProviderError NotFound for a device that never polled, Unsupported for Secret env. */
  async createPod(workload: Workload): Promise<void> {
    if (!this.#devices.has(workload.deviceId)) throw notFound(`no device ${workload.deviceId} has polled`);
    if (workload.apps.some((a) => a.secretEnv.length > 0))
      throw unsupported("this example speaks plain HTTP and will not send values from Secrets");
    const held = this.#pods.get(workload.pod.uid);
    if (held?.tombstone || held?.workload.hash === workload.hash) return; // deleted, or nothing new
    // Latest wins: a device that is away gets only the last workload, on its next poll.
    this.#pods.set(workload.pod.uid, held ? { ...held, workload } : { workload, delivered: false });
    await this.#commit.commit();
    this.#emit(workload.pod.uid);
  }

  updatePod(workload: Workload): Promise<void> {
    return this.createPod(workload);
  }

  async deletePod(pod: PodRef, options: DeletePodOptions): Promise<void> {
    const held = this.#pods.get(pod.uid);
    if (!held) return;
    const grace = Math.min(options.gracePeriodSeconds, held.tombstone?.gracePeriodSeconds ?? Infinity);
    held.tombstone = { gracePeriodSeconds: grace };
    if (!held.delivered) return this.#finish(held); // never reached a device: nothing to stop
    await this.#commit.commit();
    this.#emit(pod.uid); // apps no longer ready
  }

  getPodStatus(pod: PodRef): Promise<WorkloadStatus | undefined> {
    return Promise.resolve(this.#pods.has(pod.uid) ? this.#status(pod.uid) : undefined);
  }

  listPods(): Promise<readonly ProviderPod[]> {
    return Promise.resolve(
      [...this.#pods.values()].map(({ workload }) => ({
        pod: workload.pod,
        nodeName: workload.nodeName,
        hash: workload.hash,
        terminationGracePeriodSeconds: workload.terminationGracePeriodSeconds,
      })),
    );
  }

  notifyStatus(callback: (status: WorkloadStatus) => void): void {
    this.#onStatus = callback;
  }

  notifyDeleted(callback: (pod: PodRef) => void): void {
    this.#onDeleted = callback;
  }

  listDevices(): Promise<readonly DeviceInfo[]> {
    return Promise.resolve(this.#devices.list());
  }

  watchDevices(watcher: DeviceWatcher): void {
    this.#watcher = watcher;
  }

  /**
   * One poll of one device: record what it runs, finish the deletes it carried out, and answer
   * what it should run. The answer goes out once what the poll changed is stored.
   */
  async #sync(deviceId: string, request: SyncRequest, address: string): Promise<SyncResponse | undefined> {
    if (!isAllowed(this.#config.devices.allow, deviceId)) {
      this.#log.debug({ device: deviceId, address }, "refused a device not in devices.allow");
      return undefined;
    }
    let changed = this.#devices.polled(deviceId, { description: request.device, address });
    const reports = new Map(request.pods.map((p) => [p.uid, p]));
    const mine = [...this.#pods.values()].filter((p) => p.workload.deviceId === deviceId);
    const stopped: HeldPod[] = [];
    for (const pod of mine) {
      const report = reports.get(pod.workload.pod.uid);
      if (pod.tombstone && !report) {
        stopped.push(pod); // the device stopped it (or never had it)
        this.#forget(pod);
        continue;
      }
      // A pod is recorded as sent before it is sent, so that a restart never forgets to stop it.
      changed ||= !pod.delivered || JSON.stringify(report) !== JSON.stringify(pod.report);
      pod.delivered = true;
      pod.report = report;
    }
    if (changed || stopped.length > 0) await this.#commit.commit();
    for (const pod of stopped) this.#onDeleted(pod.workload.pod);
    for (const pod of mine) this.#emit(pod.workload.pod.uid);
    // What is held now: a pod created during the write is not recorded as sent yet, it goes next time.
    const sent = [...this.#pods.values()].filter((p) => p.workload.deviceId === deviceId && p.delivered);
    const run = sent.filter((p) => !p.tombstone);
    const stop = sent.filter((p) => p.tombstone);
    return {
      pollSeconds: this.#config.pollSeconds,
      run: run.map(({ workload }) => ({
        uid: workload.pod.uid,
        hash: workload.hash,
        apps: workload.apps.map(({ name, image, command, args, env }) => ({
          name,
          image,
          command,
          args,
          env,
        })),
      })),
      stop: stop.map((p) => ({
        uid: p.workload.pod.uid,
        gracePeriodSeconds: p.tombstone?.gracePeriodSeconds ?? 0,
      })),
    };
  }

  /** Forgets a deleted pod for good, then tells the engine. */
  async #finish(pod: HeldPod): Promise<void> {
    this.#forget(pod);
    await this.#commit.commit();
    this.#onDeleted(pod.workload.pod);
  }

  #forget(pod: HeldPod): void {
    this.#pods.delete(pod.workload.pod.uid);
    this.#sent.delete(pod.workload.pod.uid);
    this.#log.debug({ pod: podKey(pod.workload.pod) }, "pod deleted");
  }

  #deviceChanged(deviceId: string): void {
    this.#watcher?.changed(this.#devices.info(deviceId));
    for (const pod of this.#pods.values())
      if (pod.workload.deviceId === deviceId) this.#emit(pod.workload.pod.uid);
  }

  #status(uid: string): WorkloadStatus | undefined {
    const pod = this.#pods.get(uid);
    if (!pod) return undefined;
    const { deviceId } = pod.workload;
    return podStatus({
      pod,
      deviceConnected: this.#devices.connected(deviceId),
      now: new Date(this.#clock.now()),
    });
  }

  /** Calls the status callback if the pod's status changed since it was last called for it. */
  #emit(uid: string): void {
    const status = this.#status(uid);
    if (!status) return;
    const signature = JSON.stringify({ ...status, observedAt: undefined });
    if (this.#sent.get(uid) === signature) return;
    this.#sent.set(uid, signature);
    this.#onStatus(status);
  }

  #snapshot(): PersistedState {
    return { version: 1, pods: [...this.#pods.values()], devices: this.#devices.known() };
  }
}
