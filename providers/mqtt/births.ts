/**
 * Keeps each device's last birth in the durable store (generations.ts), so that its node survives a
 * devicelet restart while the device is away. A write that fails (an API server too busy to answer
 * in time, as when thousands of devices are born at once) is tried again with backoff, with the
 * device's latest birth, until it is stored, a newer birth replaces it, or the device is retired.
 * Without this, a birth that failed to store stayed unstored until the device's next birth, which
 * may be the next reconnect storm, the worst moment for more writes.
 *
 *   const births = new Births({ allocator, logger });
 *   births.save("gw-1", birth.device);   // now, and again later if it fails
 *   births.forget("gw-1");               // retired: no retry may write its record again
 *   births.stop();
 */
import type { Logger } from "pino";
import { retryDelay } from "../../src/base/backoff.ts";
import type { BirthDevice, GenerationAllocator } from "./generations.ts";
import { WarnLimiter, type MqttMetrics } from "./metrics.ts";

/**
 * One warning of failed births per this long: when a fleet registers at once, thousands fail
 * together (2,820 of 5,000 in one run), and a line each buried the log. The line says how many
 * failures it stands for and how many births wait; `unstoredBirths` in the metrics has the latter.
 */
const WARN_EVERY_MS = 10_000;

export interface BirthsOptions {
  readonly allocator: Pick<GenerationAllocator, "saveDevice">;
  readonly logger: Logger;
  /** Told how many births wait to be stored (`unstoredBirths`). */
  readonly metrics?: Pick<MqttMetrics, "set">;
  /** The first retry waits between half of this and all of it; later ones double, up to `maxMs`. */
  readonly baseMs?: number;
  readonly maxMs?: number;
}

interface Unsaved {
  device: BirthDevice;
  failures: number;
  timer: NodeJS.Timeout | undefined;
}

export class Births {
  readonly #o: BirthsOptions;
  /** Devices whose latest birth is not stored yet, while a write is due or under way. */
  readonly #unsaved = new Map<string, Unsaved>();
  readonly #warn = new WarnLimiter({ intervalMs: WARN_EVERY_MS });
  #stopped = false;

  constructor(options: BirthsOptions) {
    this.#o = options;
  }

  /** Births waiting for a retry (metrics, tests). */
  get pending(): number {
    return this.#unsaved.size;
  }

  /** Stores the device's birth now; a failure is tried again later, with the latest birth then. */
  save(deviceId: string, device: BirthDevice): void {
    const unsaved = this.#unsaved.get(deviceId);
    if (unsaved) {
      clearTimeout(unsaved.timer);
      unsaved.device = device;
      unsaved.timer = undefined;
    }
    this.#write(deviceId, unsaved ?? { device, failures: 0, timer: undefined });
  }

  /** The device was retired: no write of its birth happens after this. */
  forget(deviceId: string): void {
    clearTimeout(this.#unsaved.get(deviceId)?.timer);
    this.#unsaved.delete(deviceId);
    this.#tellUnstored();
  }

  stop(): void {
    this.#stopped = true;
    for (const u of this.#unsaved.values()) clearTimeout(u.timer);
    this.#unsaved.clear();
    this.#tellUnstored();
  }

  /** The metrics' `unstoredBirths`: what `#unsaved` holds now. */
  #tellUnstored(): void {
    this.#o.metrics?.set("unstoredBirths", this.#unsaved.size);
  }

  #write(deviceId: string, unsaved: Unsaved): void {
    if (this.#stopped) return;
    const { device } = unsaved;
    this.#unsaved.set(deviceId, unsaved);
    this.#tellUnstored();
    this.#o.allocator.saveDevice(deviceId, device).then(
      () => {
        // Done, unless it was forgotten meanwhile or a newer birth is under way.
        if (this.#unsaved.get(deviceId) === unsaved && unsaved.device === device) {
          this.#unsaved.delete(deviceId);
          this.#tellUnstored();
        }
      },
      (err: unknown) => {
        if (this.#unsaved.get(deviceId) !== unsaved || unsaved.device !== device) return;
        unsaved.failures++;
        const delayMs = retryDelay({
          failures: unsaved.failures,
          baseMs: this.#o.baseMs ?? 30_000,
          maxMs: this.#o.maxMs ?? 300_000,
          jitter: "equal",
        });
        const suppressed = this.#warn.admit("births");
        if (suppressed !== undefined)
          this.#o.logger.warn(
            {
              err,
              device: deviceId,
              failures: unsaved.failures,
              retryInMs: Math.round(delayMs),
              suppressed,
              waiting: this.#unsaved.size,
            },
            "storing the device's birth failed; trying again",
          );
        unsaved.timer = setTimeout(() => {
          unsaved.timer = undefined;
          this.#write(deviceId, unsaved);
        }, delayMs);
        unsaved.timer.unref();
      },
    );
  }
}
