/**
 * The mock's logs, exec, attach, port-forward and stats capabilities (types.ts), over the pods and
 * devices MockProvider holds: which pod and app a call means, the refusals the kubelet API turns
 * into clear messages (unknown, offline, no exec on this device class, no terminal, not running),
 * then app-log.ts, exec.ts, attach.ts or stats.ts for the work itself. No call waits on a device.
 */
import type { Logger } from "pino";
import type { Clock } from "../../src/base/clock.ts";
import { invalidInput, notFound, transient, unsupported } from "../../src/provider/errors.ts";
import type {
  DeviceStats,
  ExecIO,
  ForwardedConnection,
  LogOptions,
  LogStream,
  PodRef,
} from "../../src/provider/types.ts";
import { attachToApp, echoConnection } from "./attach.ts";
import { runSimulatedCommand } from "./exec.ts";
import type { DeviceFleet } from "./fleet.ts";
import type { MockContainer, MockPod } from "./pod.ts";
import type { MockConfig } from "./schema.ts";
import { deviceStats, type NodeCounter } from "./stats.ts";

/** What the capabilities read of the provider; they change nothing in it. */
export interface CapabilityEnv {
  readonly config: MockConfig;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly fleet: DeviceFleet;
  /** The pod held under `uid`, tombstoned ones included. */
  readonly pod: (uid: string) => MockPod | undefined;
  readonly devicePods: (deviceId: string) => Iterable<MockPod>;
}

export class MockCapabilities {
  readonly #env: CapabilityEnv;
  /** Each device's node CPU counter at its last getStats, so it never goes back (stats.ts). */
  readonly #nodeCounters = new Map<string, NodeCounter>();

  constructor(env: CapabilityEnv) {
    this.#env = env;
  }

  /**
   * One app's simulated log (app-log.ts), as the kubelet serves it. While the device is away, what
   * devicelet had when it went (no follow), with a notice saying so.
   * @throws ProviderError NotFound (pod or container), Unsupported (no previous instance),
   *   InvalidInput (the app is waiting to start), Transient (queued for an offline device).
   */
  getContainerLogs(ref: PodRef, container: string, options: LogOptions): Promise<LogStream> {
    return settle(() => {
      const { pod, app } = this.#container(ref, container);
      const log = options.previous ? app.previousLog : app.log;
      // The kubelet answers 400 here; the contract's word for it is Unsupported (no previous instance).
      if (!log)
        throw unsupported(
          `mock: previous terminated container "${container}" in pod "${ref.name}" not found`,
        );
      const device = this.#env.fleet.describe(pod.deviceId);
      if (device === undefined || this.#env.fleet.online(pod.deviceId)) return { chunks: log.read(options) };
      return {
        chunks: log.read({ ...options, upTo: device.seenAt }),
        notice: `device ${pod.deviceId} is offline; log as cached at ${new Date(device.seenAt).toISOString()}`,
      };
    });
  }

  /**
   * Runs one of the simulated commands of exec.ts (`echo`, `cat`, `env`, `sh -c "exit 3"`…).
   * @throws ProviderError NotFound, Unsupported (a device class in `exec.refuseDeviceClasses`; a
   *   terminal while `exec.tty` is false), Transient (device offline), InvalidInput (the app is
   *   not running, or no command).
   */
  async execInContainer(
    ref: PodRef,
    container: string,
    command: readonly string[],
    io: ExecIO,
  ): Promise<{ readonly exitCode: number }> {
    const { app } = this.#running(ref, container, io.tty, "exec");
    if (command.length === 0) throw invalidInput("mock: exec needs a command");
    const hostname = ref.name;
    return {
      exitCode: await runSimulatedCommand(command, { app: app.spec, hostname, io, clock: this.#env.clock }),
    };
  }

  /**
   * Attaches to the app (attach.ts): its new log lines on stdout, stdin echoed back; ends when the
   * client goes or the app instance ends. Refused as exec is.
   */
  async attachToContainer(
    ref: PodRef,
    container: string,
    io: ExecIO,
  ): Promise<{ readonly exitCode?: number }> {
    const { pod } = this.#running(ref, container, io.tty, "attach");
    return attachToApp(() => pod.container(container), io);
  }

  /**
   * Every port of a simulated pod echoes what it is sent.
   * @throws ProviderError NotFound (pod), Transient (device offline).
   */
  async portForward(ref: PodRef, port: number, connection: ForwardedConnection): Promise<void> {
    const pod = this.#env.pod(ref.uid);
    if (!pod || pod.stopped) throw notFound(`mock: no pod ${ref.namespace}/${ref.name}`);
    if (!this.#env.fleet.online(pod.deviceId)) throw transient(`mock: device ${pod.deviceId} is offline`);
    this.#env.logger.debug({ pod: `${ref.namespace}/${ref.name}`, port }, "mock: port forward");
    await echoConnection(connection);
  }

  /**
   * Synthetic usage (stats.ts) of the device and its running apps, measured now, or when it went
   * away for an offline device. Pods annotated `devicelet.dev/no-stats` are left out.
   * @throws ProviderError NotFound for an unknown device.
   */
  getStats(deviceId: string): Promise<DeviceStats> {
    return settle(() => {
      const device = this.#env.fleet.describe(deviceId);
      if (!device) throw notFound(`mock: unknown device ${deviceId}`);
      const previous = this.#nodeCounters.get(deviceId);
      const { stats, counter } = deviceStats({
        pods: this.#env.devicePods(deviceId),
        at: device.seenAt,
        bootAt: device.bootAt,
        config: this.#env.config.stats,
        ...(device.spec.capacity["memory"] === undefined
          ? {}
          : { memoryCapacity: device.spec.capacity["memory"] }),
        ...(previous === undefined ? {} : { previous }),
      });
      this.#nodeCounters.set(deviceId, counter);
      return stats;
    });
  }

  /**
   * The pod and one of its apps as the device runs them.
   * @throws ProviderError NotFound (pod or container), InvalidInput (the app is waiting to start,
   *   as the kubelet answers 400), Transient (the device is offline and has not run it yet).
   */
  #container(ref: PodRef, name: string): { pod: MockPod; app: MockContainer } {
    const pod = this.#env.pod(ref.uid);
    const app = pod?.container(name);
    if (pod && app) return { pod, app };
    if (!pod || !pod.workload.apps.some((a) => a.name === name))
      throw notFound(`mock: no container ${name} in pod ${ref.namespace}/${ref.name}`);
    if (this.#env.fleet.online(pod.deviceId))
      throw invalidInput(
        `mock: container "${name}" in pod "${ref.name}" is waiting to start: ContainerCreating`,
      );
    throw transient(`mock: device ${pod.deviceId} is offline and has not run container "${name}" yet`);
  }

  /** A running app that exec or attach may reach, with the refusals both share. */
  #running(ref: PodRef, name: string, tty: boolean, what: string): { pod: MockPod; app: MockContainer } {
    const found = this.#container(ref, name);
    const device = this.#env.fleet.describe(found.pod.deviceId);
    const deviceClass = device?.spec.deviceClass ?? "";
    if (this.#env.config.exec.refuseDeviceClasses.includes(deviceClass))
      throw unsupported(`mock: device ${found.pod.deviceId} is a ${deviceClass}, which has no ${what}`);
    if (tty && !this.#env.config.exec.tty) throw unsupported("mock devices have no terminal");
    if (!this.#env.fleet.online(found.pod.deviceId))
      throw transient(`mock: device ${found.pod.deviceId} is offline`);
    if (found.app.state.kind !== "running")
      throw invalidInput(`mock: container "${name}" in pod "${ref.name}" is not running`);
    return found;
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
