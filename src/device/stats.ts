/**
 * The device's periodic `stats` message (docs/protocol.md § 3.10): a sample right after each
 * birth, then one every `capabilities.statsIntervalSeconds`, while online only; QoS 0 and not
 * retained, since only the latest matters and a lost one is replaced by the next.
 *
 *   const stats = new StatsReporter({ intervalMs: 15_000, clock, collect: () => runtime.stats(), publish, logger });
 *   stats.start();   // at the birth
 *   stats.stop();    // link down, device stopping
 *
 * A sample that takes longer than the interval to collect is not overlapped by the next one.
 * Pods and apps beyond the message's bounds (256 pods, 32 apps each) are left out.
 */
import type { Logger } from "pino";
import type { Clock } from "../base/clock.ts";
import type { RuntimeStats } from "./runtime.ts";

export interface StatsReporterOptions {
  readonly intervalMs: number;
  readonly clock: Clock;
  readonly collect: () => Promise<RuntimeStats>;
  /** Sends one sample taken at `at` (ms since the epoch); the caller stamps and encodes it. */
  readonly publish: (sample: RuntimeStats, at: number) => Promise<void>;
  readonly logger: Logger;
}

const MAX_PODS = 256;
const MAX_APPS = 32;

export class StatsReporter {
  readonly #o: StatsReporterOptions;
  #timer: unknown;
  #running = false;
  #busy = false;

  constructor(options: StatsReporterOptions) {
    this.#o = options;
  }

  /** Sends a sample now and then every interval, until {@link stop}. */
  start(): void {
    this.stop();
    this.#running = true;
    void this.#tick();
  }

  stop(): void {
    this.#running = false;
    this.#o.clock.clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  async #tick(): Promise<void> {
    if (!this.#running) return;
    this.#timer = this.#o.clock.setTimeout(() => void this.#tick(), this.#o.intervalMs);
    if (this.#busy) return;
    this.#busy = true;
    try {
      const at = this.#o.clock.now();
      const sample = bounded(await this.#o.collect());
      // stop() may have come while the sample was taken.
      // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition
      if (this.#running) await this.#o.publish(sample, at);
    } catch (err) {
      this.#o.logger.debug({ err: (err as Error).message }, "stats sample not sent");
    } finally {
      this.#busy = false;
    }
  }
}

function bounded(sample: RuntimeStats): RuntimeStats {
  return {
    ...sample,
    pods: sample.pods.slice(0, MAX_PODS).map((p) => ({ ...p, apps: p.apps.slice(0, MAX_APPS) })),
  };
}
