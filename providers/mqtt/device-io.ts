/**
 * DeviceIo: the MQTT provider's logs, exec and stats capabilities (src/provider/types.ts), in
 * front of the sessions (io-sessions.ts) and the stats samples (stats.ts). It finds the device and
 * app of a pod (the pod's uid in a device's desired document; the container's name is the app's),
 * then answers without waiting on a device that cannot answer:
 * - unknown pod or container: `notFound`;
 * - the device's birth does not announce logs / exec / tty: `unsupported`, nothing published;
 * - device not online: `transient` "device gw-1 is offline (last seen …)", except logs with a
 *   cached copy, served with a notice saying so;
 * - too many sessions on the device: `transient`.
 *
 *   const io = new DeviceIo({ desired, registry, sessions, stats, logCache, maxSessions: 8 });
 *   const stream = await io.logs(pod, "sensor", { tailLines: 10, signal });
 */
import { transient, notFound, unsupported } from "../../src/provider/errors.ts";
import { SESSION_DEFAULTS } from "../../src/protocol/types.ts";
import type { DeviceStats, ExecIO, LogOptions, LogStream, PodRef } from "../../src/provider/types.ts";
import type { DesiredStore } from "./desired.ts";
import type { DeviceRegistry } from "./devices.ts";
import { TextQueue } from "./io-queue.ts";
import type { IoSessions } from "./io-sessions.ts";
import { cachedView, type LogCache } from "./log-cache.ts";
import type { DeviceStatsStore } from "./stats.ts";

export interface DeviceIoOptions {
  readonly desired: Pick<DesiredStore, "deviceOf" | "device">;
  readonly registry: Pick<DeviceRegistry, "get" | "effectivePresence">;
  readonly sessions: Pick<IoSessions, "logs" | "exec">;
  readonly stats: Pick<DeviceStatsStore, "get">;
  readonly logCache: LogCache;
  /** devicelet's own cap on sessions per device (config `sessions.maxPerDevice`). */
  readonly maxSessions: number;
  /** Whether devicelet's broker connection is up. */
  readonly connected: () => boolean;
}

type Capability = "logs" | "exec";

export class DeviceIo {
  readonly #o: DeviceIoOptions;

  constructor(options: DeviceIoOptions) {
    this.#o = options;
  }

  async logs(pod: PodRef, container: string, options: LogOptions): Promise<LogStream> {
    const { deviceId, podUid } = this.#locate(pod, container);
    const maxSessions = this.#admit(deviceId, "logs");
    const away = this.#away(deviceId);
    if (away !== undefined) {
      const cached = options.previous === true ? undefined : this.#o.logCache.get(podUid, container);
      if (!cached) throw transient(away);
      const chunks = new TextQueue({ onReturn: () => undefined });
      chunks.push(cachedView(cached, options));
      chunks.end();
      return {
        notice: `device ${deviceId} is offline; log as received at ${cached.at.toISOString()}`,
        chunks,
      };
    }
    return this.#o.sessions.logs({ deviceId, podUid, app: container, maxSessions, options });
  }

  async exec(
    pod: PodRef,
    container: string,
    command: readonly string[],
    io: ExecIO,
  ): Promise<{ readonly exitCode: number }> {
    const { deviceId, podUid } = this.#locate(pod, container);
    if (command.length === 0) throw unsupported("exec needs a command");
    if (command.length > 64)
      throw unsupported(`a command of ${command.length} arguments is over the 64 allowed`);
    const maxSessions = this.#admit(deviceId, "exec");
    if (io.tty && this.#o.registry.get(deviceId)?.birth?.capabilities.tty !== true) {
      throw unsupported(
        `device ${deviceId} has no terminal for exec (its birth does not announce capabilities.tty)`,
      );
    }
    const away = this.#away(deviceId);
    if (away !== undefined) throw transient(away);
    return this.#o.sessions.exec({ deviceId, podUid, app: container, maxSessions, command, io });
  }

  stats(deviceId: string): DeviceStats {
    const stats = this.#o.stats.get(deviceId);
    if (!stats) throw notFound(`mqtt: no device ${deviceId}`);
    return stats;
  }

  /** The device and uid of a pod this provider holds, with the container checked. */
  #locate(pod: PodRef, container: string): { deviceId: string; podUid: string } {
    const deviceId = this.#o.desired.deviceOf(pod.uid);
    const d = deviceId === undefined ? undefined : this.#o.desired.device(deviceId);
    const entry = d?.pods.get(pod.uid);
    const known = entry !== undefined || d?.tombstones.has(pod.uid) === true;
    if (deviceId === undefined || !known) {
      throw notFound(`pod ${pod.namespace}/${pod.name} is not on any device of this provider`);
    }
    if (entry && !entry.desired.apps.some((a) => a.name === container)) {
      throw notFound(`container ${container} is not valid for pod ${pod.name}`);
    }
    return { deviceId, podUid: pod.uid };
  }

  /** Why a session cannot be opened now, or undefined when it can. */
  #away(deviceId: string): string | undefined {
    const { registry } = this.#o;
    if (registry.effectivePresence(deviceId) !== "online") {
      const seen = registry.get(deviceId)?.lastSeen;
      return `device ${deviceId} is offline (last seen ${seen ? seen.toISOString() : "never"})`;
    }
    if (!this.#o.connected())
      return `devicelet is not connected to the MQTT broker; device ${deviceId} cannot be reached`;
    return undefined;
  }

  /** The device's session limit, once its birth announces `capability`. */
  #admit(deviceId: string, capability: Capability): number {
    const caps = this.#o.registry.get(deviceId)?.birth?.capabilities;
    if (caps?.[capability] !== true) {
      throw unsupported(
        `device ${deviceId} does not serve ${capability} (its birth does not announce capabilities.${capability})`,
      );
    }
    return Math.min(this.#o.maxSessions, caps.maxSessions ?? SESSION_DEFAULTS.maxSessions);
  }
}
