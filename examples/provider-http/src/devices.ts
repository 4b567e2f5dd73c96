/**
 * The devices the provider has met, and whether each is online. A device is known from its first
 * poll on; it is online while it polls, and offline once `offlineAfterMs` passed without a poll.
 * There is no connection to lose with HTTP polling: silence is the only sign a device is away.
 *
 * A restart of devicelet is no outage of the devices: the devices read back from the state count
 * as online, as if each had just polled, and go offline only if they then stay silent.
 *
 *   const devices = new DeviceRegistry({ clock, offlineAfterMs: 10_000, changed: (id) => ... });
 *   devices.polled("gw-1", { description, address });   // online now, for offlineAfterMs
 */
import type { Clock, DeviceInfo } from "devicelet/provider";
import { isIP } from "node:net";
import type { DeviceDescription } from "./protocol.ts";
import type { KnownDevice } from "./state.ts";

interface Device {
  description: DeviceDescription;
  connected: boolean;
  lastSeen?: Date;
  address?: string;
  offlineTimer?: unknown;
}

export class DeviceRegistry {
  readonly #devices = new Map<string, Device>();
  readonly #clock: Clock;
  readonly #offlineAfterMs: number;
  readonly #changed: (deviceId: string) => void;

  /** `changed` is called when a device appears, goes on or offline, or describes itself anew. */
  constructor(o: { clock: Clock; offlineAfterMs: number; changed: (deviceId: string) => void }) {
    this.#clock = o.clock;
    this.#offlineAfterMs = o.offlineAfterMs;
    this.#changed = o.changed;
  }

  /** Devices read back from the state: online until `offlineAfterMs` passes without a poll. */
  restore(devices: readonly KnownDevice[]): void {
    for (const d of devices) {
      this.#devices.set(d.id, { description: d.description, connected: true });
      this.#armOfflineTimer(d.id);
    }
  }

  has(deviceId: string): boolean {
    return this.#devices.has(deviceId);
  }

  connected(deviceId: string): boolean {
    return this.#devices.get(deviceId)?.connected ?? false;
  }

  /**
   * Records a poll: the device is online for another `offlineAfterMs`. Returns true when the
   * device is new or describes itself differently, i.e. when the state should be written.
   */
  polled(deviceId: string, poll: { description: DeviceDescription; address: string }): boolean {
    const known = this.#devices.get(deviceId);
    const described = JSON.stringify(known?.description) !== JSON.stringify(poll.description);
    const device: Device = known ?? { description: poll.description, connected: false };
    const wasConnected = device.connected;
    device.description = poll.description;
    device.connected = true;
    device.lastSeen = new Date(this.#clock.now());
    device.address = poll.address.replace(/^::ffff:/, ""); // an IPv4 client of a dual-stack socket
    this.#devices.set(deviceId, device);
    this.#armOfflineTimer(deviceId);
    if (!wasConnected || described) this.#changed(deviceId);
    return described;
  }

  #armOfflineTimer(deviceId: string): void {
    const device = this.#devices.get(deviceId);
    if (!device) return;
    this.#clock.clearTimeout(device.offlineTimer);
    device.offlineTimer = this.#clock.setTimeout(() => {
      device.connected = false;
      this.#changed(deviceId);
    }, this.#offlineAfterMs);
  }

  known(): KnownDevice[] {
    return [...this.#devices].map(([id, d]) => ({ id, description: d.description }));
  }

  list(): DeviceInfo[] {
    return [...this.#devices.keys()].map((id) => this.info(id));
  }

  /** The device as the engine sees it (a node). Only for a device that {@link has} says is known. */
  info(deviceId: string): DeviceInfo {
    const d = this.#devices.get(deviceId);
    if (!d) throw new Error(`unknown device ${deviceId}`);
    return {
      id: deviceId,
      deviceClass: d.description.deviceClass,
      os: d.description.os,
      arch: d.description.arch,
      labels: {},
      capacity: d.description.capacity,
      addresses: d.address && isIP(d.address) ? [{ type: "InternalIP", address: d.address }] : [],
      connected: d.connected,
      ...(d.lastSeen ? { lastSeen: d.lastSeen } : {}),
    };
  }

  /** Cancels the offline timers. */
  stop(): void {
    for (const d of this.#devices.values()) this.#clock.clearTimeout(d.offlineTimer);
  }
}
