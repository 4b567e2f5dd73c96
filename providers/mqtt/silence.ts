/**
 * Devices that went quiet without a will: a node born from a retained birth must be able to become
 * lost (docs/protocol.md § 5, "Silence"). A device's last will is held by the broker; when the
 * broker loses it (restarted without persistence, session state dropped) or devicelet only ever
 * read the retained `online` of a device that is gone, no `lost` will ever come. So a device
 * counted online that devicelet has not heard a live message from for `silentAfterMs` — counted
 * from the later of its last live message and devicelet's latest connection to the broker, since
 * nothing can be heard while devicelet is disconnected — is made lost. Devices re-publish
 * `reported` at least every 10 minutes (§ 3.3), so the default of 30 minutes is three missed
 * refreshes. A sleeping device is exempt until its `wakeAt` (or devicelet's connection, if later)
 * plus `wakeToleranceMs`; one that gave no `wakeAt` is exempt. A device made lost this way that
 * is heard from again is online again (DeviceRegistry.revive).
 *
 *   const watch = new SilenceWatch({ registry, silentAfterMs: 1_800_000, wakeToleranceMs: 600_000,
 *     connectedSince: () => conn.connectedAt, onSilent: (id) => mark(id) });
 *   watch.start();   // sweeps on a timer until stop()
 */
import type { DeviceRegistry } from "./devices.ts";

export interface SilenceOptions {
  readonly registry: DeviceRegistry;
  /** 0 disables the watch. */
  readonly silentAfterMs: number;
  readonly wakeToleranceMs: number;
  /** When devicelet's current broker connection began (epoch ms); undefined while disconnected. */
  readonly connectedSince: () => number | undefined;
  /** A device was made lost (its children are lost with it). */
  readonly onSilent: (deviceId: string, why: string) => void;
  readonly now?: () => number;
}

/**
 * Ids of the devices to make lost at `now`, with why. Pure: reads the registry, changes nothing.
 * `floor` is when devicelet's broker connection began.
 */
export function silentDevices(
  registry: Pick<DeviceRegistry, "ids" | "get">,
  o: { now: number; floor: number; silentAfterMs: number; wakeToleranceMs: number },
): [string, string][] {
  const out: [string, string][] = [];
  for (const id of registry.ids()) {
    const e = registry.get(id);
    if (!e) continue;
    if (e.presence === "online") {
      const since = Math.max(e.heardAt ?? o.floor, o.floor);
      if (o.now - since >= o.silentAfterMs)
        out.push([id, `nothing heard from the device for ${Math.round((o.now - since) / 1000)} s`]);
    } else if (e.presence === "sleeping" && e.wakeAt !== undefined) {
      const wake = Date.parse(e.wakeAt);
      if (Number.isNaN(wake)) continue;
      if (o.now >= Math.max(wake, o.floor) + o.wakeToleranceMs)
        out.push([id, `the device did not wake by ${e.wakeAt} (tolerance ${o.wakeToleranceMs / 1000} s)`]);
    }
  }
  return out;
}

const MIN_SWEEP_MS = 1_000;
const MAX_SWEEP_MS = 60_000;

export class SilenceWatch {
  readonly #o: SilenceOptions;
  readonly #now: () => number;
  #timer: NodeJS.Timeout | undefined;

  constructor(options: SilenceOptions) {
    this.#o = options;
    this.#now = options.now ?? Date.now;
  }

  /** Sweeps every few seconds (a tenth of the shorter limit, 1–60 s); no-op when disabled. */
  start(): void {
    if (this.#o.silentAfterMs <= 0 || this.#timer) return;
    const period = Math.min(
      MAX_SWEEP_MS,
      Math.max(MIN_SWEEP_MS, Math.min(this.#o.silentAfterMs, this.#o.wakeToleranceMs || Infinity) / 10),
    );
    this.#timer = setInterval(() => this.sweep(), period);
    this.#timer.unref();
  }

  /** Makes every device due lost now; returns their ids. Nothing while disconnected. */
  sweep(): string[] {
    const floor = this.#o.connectedSince();
    if (floor === undefined || this.#o.silentAfterMs <= 0) return [];
    const due = silentDevices(this.#o.registry, {
      now: this.#now(),
      floor,
      silentAfterMs: this.#o.silentAfterMs,
      wakeToleranceMs: this.#o.wakeToleranceMs,
    });
    const made: string[] = [];
    for (const [id, why] of due) {
      if (!this.#o.registry.markSilent(id)) continue;
      made.push(id);
      this.#o.onSilent(id, why);
    }
    return made;
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }
}
