/**
 * Quick reads of the twins devicelet expects to change soon (after it wrote a desired document or
 * sent a command, or an event said the twin changed): the first read after 200 ms, each read
 * without a change twice as late up to 2 s, a change starting over, until `watchForMs` passed
 * since the last change (or since the last `watch` call). One read per device at a time; reads
 * take their budget like every other call, so watches never exceed the twin-read quota.
 *
 *   const watches = new TwinWatches({ watchForMs: 30_000, now, read: async (id) => changed, logger });
 *   watches.watch("gw-1");
 *   watches.stop();
 */
import type { Logger } from "pino";
import { systemClock } from "../../src/base/clock.ts";

export const WATCH_FIRST_MS = 200;
export const WATCH_MAX_MS = 2_000;

export interface TwinWatchesOptions {
  readonly watchForMs: number;
  readonly now: () => number;
  /**
   * Reads the twin: `changed` when anything devicelet reads changed, `gone` when the device no
   * longer exists (the watch ends). Rejects on a failed read (the watch goes on, slower).
   */
  readonly read: (deviceId: string) => Promise<"changed" | "same" | "gone">;
  readonly logger: Logger;
}

interface Watch {
  until: number;
  delay: number;
  timer: unknown;
  busy: boolean;
  poked: boolean;
}

export class TwinWatches {
  readonly #o: TwinWatchesOptions;
  readonly #watches = new Map<string, Watch>();
  #stopped = false;

  constructor(options: TwinWatchesOptions) {
    this.#o = options;
  }

  has(deviceId: string): boolean {
    return this.#watches.has(deviceId);
  }

  /** Starts watching the device, or starts its watch over (fast reads, the full period). */
  watch(deviceId: string): void {
    if (this.#stopped) return;
    const until = this.#o.now() + this.#o.watchForMs;
    const w = this.#watches.get(deviceId);
    if (w === undefined) {
      const fresh: Watch = { until, delay: WATCH_FIRST_MS, timer: undefined, busy: false, poked: false };
      this.#watches.set(deviceId, fresh);
      this.#schedule(deviceId, fresh);
      return;
    }
    w.until = until;
    w.delay = WATCH_FIRST_MS;
    if (w.busy) w.poked = true;
    else {
      systemClock.clearTimeout(w.timer);
      this.#schedule(deviceId, w);
    }
  }

  /** Ends the device's watch, if any (an event brought what it was waiting for). */
  end(deviceId: string): void {
    const w = this.#watches.get(deviceId);
    if (w === undefined) return;
    systemClock.clearTimeout(w.timer);
    this.#watches.delete(deviceId);
  }

  /** Ends every watch. */
  stop(): void {
    this.#stopped = true;
    for (const w of this.#watches.values()) systemClock.clearTimeout(w.timer);
    this.#watches.clear();
  }

  #schedule(deviceId: string, w: Watch): void {
    w.timer = systemClock.setTimeout(() => void this.#read(deviceId, w), w.delay);
  }

  async #read(deviceId: string, w: Watch): Promise<void> {
    w.busy = true;
    try {
      const outcome = await this.#o.read(deviceId);
      if (outcome === "changed") {
        w.until = this.#o.now() + this.#o.watchForMs;
        w.delay = WATCH_FIRST_MS;
      } else w.delay = Math.min(WATCH_MAX_MS, w.delay * 2);
      if (outcome === "gone") w.until = 0;
    } catch (err) {
      w.delay = Math.min(WATCH_MAX_MS, w.delay * 2);
      this.#o.logger.debug({ device: deviceId, err: (err as Error).message }, "watched twin read failed");
    } finally {
      w.busy = false;
    }
    if (w.poked) {
      w.poked = false;
      w.delay = WATCH_FIRST_MS;
    }
    if (this.#stopped || this.#watches.get(deviceId) !== w) return;
    if (this.#o.now() >= w.until) this.#watches.delete(deviceId);
    else this.#schedule(deviceId, w);
  }
}
