/** The simulated devices: their specs, presence (through gateways) and DeviceInfo as the engine sees it. */
import { invalidInput, notFound } from "../../src/provider/errors.ts";
import type { DeviceInfo } from "../../src/provider/types.ts";
import type { Clock } from "../../src/base/clock.ts";
import type { MockDeviceSpec } from "./schema.ts";

interface DeviceState {
  readonly spec: MockDeviceSpec;
  /** The device's own link; it is online only if its gateways are too. */
  connected: boolean;
  /** When presence last changed; an online device is seen "now". */
  lastSeen: number;
  /** When the simulated device booted (the fleet was made, or the device added): its node's startTime. */
  readonly bootAt: number;
}

export class DeviceFleet {
  #devices = new Map<string, DeviceState>();
  #clock: Clock;

  constructor(specs: readonly MockDeviceSpec[], clock: Clock) {
    this.#clock = clock;
    const now = clock.now();
    for (const spec of specs)
      this.#devices.set(spec.id, { spec, connected: spec.connected, lastSeen: now, bootAt: now });
  }

  get size(): number {
    return this.#devices.size;
  }

  has(id: string): boolean {
    return this.#devices.has(id);
  }

  address(id: string): string | undefined {
    return this.#devices.get(id)?.spec.address;
  }

  /**
   * The device's spec, when it boots, and when devicelet last heard from it: now while it is
   * online, the moment it went away otherwise. Undefined for an unknown device.
   */
  describe(id: string): { spec: MockDeviceSpec; bootAt: number; seenAt: number } | undefined {
    const d = this.#devices.get(id);
    if (!d) return undefined;
    return { spec: d.spec, bootAt: d.bootAt, seenAt: this.online(id) ? this.#clock.now() : d.lastSeen };
  }

  /**
   * Forgets a device for good.
   * @throws ProviderError NotFound for an unknown device, InvalidInput while devices are behind it.
   */
  remove(id: string): void {
    if (!this.#devices.has(id)) throw notFound(`mock: unknown device ${id}`);
    const behind = [...this.#devices.values()].filter((d) => d.spec.gateway === id).map((d) => d.spec.id);
    if (behind.length > 0) throw invalidInput(`mock: devices ${behind.join(", ")} are reached through ${id}`);
    this.#devices.delete(id);
  }

  /** Online when the device and every gateway it is reached through are connected. */
  online(id: string, seen = new Set<string>()): boolean {
    const d = this.#devices.get(id);
    if (!d?.connected || seen.has(id)) return false;
    seen.add(id);
    return d.spec.gateway === undefined || this.online(d.spec.gateway, seen);
  }

  onlineCount(): number {
    return [...this.#devices.keys()].filter((id) => this.online(id)).length;
  }

  /**
   * Sets a device's own link and returns every device whose presence changed as a result
   * (itself and devices behind it), each with its new lastSeen.
   * @throws ProviderError NotFound for an unknown device.
   */
  setConnected(id: string, connected: boolean): { id: string; online: boolean }[] {
    const device = this.#devices.get(id);
    if (!device) throw notFound(`mock: unknown device ${id}`);
    if (device.connected === connected) return [];
    const before = [...this.#devices.keys()].map((d) => [d, this.online(d)] as const);
    device.connected = connected;
    const now = this.#clock.now();
    return before.flatMap(([d, was]) => {
      const online = this.online(d);
      if (online === was) return [];
      const state = this.#devices.get(d);
      if (state) state.lastSeen = now;
      return [{ id: d, online }];
    });
  }

  /** A fresh DeviceInfo (the caller owns it). */
  info(id: string): DeviceInfo {
    const d = this.#devices.get(id);
    if (!d) throw notFound(`mock: unknown device ${id}`);
    const { spec } = d;
    const online = this.online(spec.id);
    return {
      id: spec.id,
      deviceClass: spec.deviceClass,
      os: spec.os,
      arch: spec.arch,
      ...(spec.zone === undefined ? {} : { zone: spec.zone }),
      ...(spec.gateway === undefined ? {} : { gateway: spec.gateway }),
      labels: { ...spec.labels },
      capacity: { ...spec.capacity },
      addresses: spec.address === undefined ? [] : [{ type: "InternalIP", address: spec.address }],
      connected: online,
      lastSeen: new Date(online ? this.#clock.now() : d.lastSeen),
      nodeInfo: {
        osImage: `mock ${spec.os}`,
        kernelVersion: "mock",
        machineID: spec.id,
        bootID: `mock-${spec.id}`,
      },
    };
  }

  list(): DeviceInfo[] {
    return [...this.#devices.keys()].map((id) => this.info(id));
  }
}
