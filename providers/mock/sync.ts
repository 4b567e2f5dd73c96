/**
 * The mock provider's device sync (DeviceSyncReporter): each change the engine asks of a device
 * (a pod created, updated or deleted) is one more desired generation; the device has applied them
 * all once none of its pods waits for it. `behindSince` is when it first had one waiting.
 *
 *   const book = new MockSyncBook(clock);
 *   book.changed("dev-1", pending);   // a change asked of the device
 *   book.check("dev-1", pending);     // after the device did something
 *   book.get("dev-1");                // { desiredGeneration: 3, appliedGeneration: 2, behindSince }
 */
import type { Clock } from "../../src/base/clock.ts";
import type { DeviceSync } from "../../src/provider/types.ts";

interface Entry {
  desired: number;
  sync: DeviceSync;
}

export class MockSyncBook {
  readonly #clock: Clock;
  readonly #devices = new Map<string, Entry>();
  readonly #listeners: ((deviceId: string) => void)[] = [];

  constructor(clock: Clock) {
    this.#clock = clock;
  }

  /** Undefined for a device no change was ever asked of (it has reported nothing to compare). */
  get(deviceId: string): DeviceSync | undefined {
    return this.#devices.get(deviceId)?.sync;
  }

  onChange(listener: (deviceId: string) => void): void {
    this.#listeners.push(listener);
  }

  /** One more change asked of the device; `pending`: whether any of its pods waits for it now. */
  changed(deviceId: string, pending: boolean): void {
    const entry = this.#devices.get(deviceId) ?? {
      desired: 0,
      sync: { desiredGeneration: 0, appliedGeneration: 0 },
    };
    entry.desired++;
    this.#devices.set(deviceId, entry);
    this.check(deviceId, pending);
  }

  /** Whether any of the device's pods waits for it now; tells listeners when the sync changed. */
  check(deviceId: string, pending: boolean): void {
    const entry = this.#devices.get(deviceId);
    if (!entry) return;
    const before = entry.sync;
    const applied = pending ? before.appliedGeneration : entry.desired;
    const behind = applied < entry.desired;
    const behindSince = behind ? (before.behindSince ?? new Date(this.#clock.now())) : undefined;
    if (
      before.desiredGeneration === entry.desired &&
      before.appliedGeneration === applied &&
      before.behindSince === behindSince
    )
      return;
    entry.sync = {
      desiredGeneration: entry.desired,
      appliedGeneration: applied,
      ...(behindSince ? { behindSince } : {}),
    };
    for (const l of this.#listeners) l(deviceId);
  }
}
