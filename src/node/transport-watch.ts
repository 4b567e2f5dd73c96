/**
 * TransportWatch: whether devicelet reaches the devices' transport (the broker), read from the
 * provider's `health()` every `pollMs` (default 2 s). Only a change of `connected` is reported,
 * with a log line; the message alone changing is kept silently. The state is what node status
 * shows as the `TransportConnected` condition and the NoSchedule taint, never as Ready.
 *
 *   const transport = new TransportWatch({ health: () => provider.health(), logger });
 *   transport.start(signal, () => requeueEveryNode());
 *   transport.state;   // undefined when the provider has no transport to report
 */
import type { Logger } from "pino";
import { systemClock, type Clock } from "../base/clock.ts";
import type { TransportState } from "./build.ts";

export interface TransportWatchOptions {
  /** The provider's health; absent: there is no transport, and nothing is watched. */
  readonly health?: (() => { readonly ready: boolean; readonly message: string }) | undefined;
  readonly pollMs?: number | undefined;
  readonly logger: Logger;
  /** Times the polls; default {@link systemClock}. */
  readonly clock?: Clock | undefined;
}

export class TransportWatch {
  readonly #o: TransportWatchOptions;
  #state: TransportState | undefined;

  /** Reads the health once, at once. */
  constructor(options: TransportWatchOptions) {
    this.#o = options;
    this.#state = this.#read();
  }

  /** The transport's state as last read; undefined when the provider has none. */
  get state(): TransportState | undefined {
    return this.#state;
  }

  /** Polls until `signal` aborts; `onChange` runs after each change of `connected`. Does not block. */
  start(signal: AbortSignal, onChange: () => void): void {
    if (!this.#o.health) return;
    const clock = this.#o.clock ?? systemClock;
    let timer: unknown;
    const poll = () => {
      if (signal.aborted) return;
      timer = clock.setTimeout(poll, this.#o.pollMs ?? 2_000);
      const next = this.#read();
      if (next?.connected === this.#state?.connected) {
        this.#state = next;
        return;
      }
      this.#state = next;
      this.#o.logger.warn(
        { connected: next?.connected, message: next?.message },
        next?.connected
          ? "transport reachable again: removing the NoSchedule taint"
          : "transport unreachable: tainting nodes NoSchedule; pods and nodes stay as they are",
      );
      onChange();
    };
    timer = clock.setTimeout(poll, this.#o.pollMs ?? 2_000);
    signal.addEventListener("abort", () => clock.clearTimeout(timer), { once: true });
  }

  #read(): TransportState | undefined {
    const health = this.#o.health?.();
    return health ? { connected: health.ready, message: health.message } : undefined;
  }
}
