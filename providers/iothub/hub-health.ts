/**
 * Whether IoT Hub answers, judged from devicelet's own service calls (there is no connection to
 * watch): connected from the first answer (any HTTP answer but 5xx, 401 and 403 counts), lost after
 * {@link FAILURES_TO_DISCONNECT} calls in a row got no answer or a server error, or at once when
 * the hub refuses the credentials. The health verdict is ready while connected and for `graceMs`
 * after losing it (or after starting), never when the credentials are refused.
 *
 *   const hub = new HubHealth({ hostName, graceMs, now, logger, connected: () => ..., lost: () => ... });
 *   const twin = await hub.call(() => service.getTwin(id));   // records the outcome, rethrows
 *   hub.health();   // { ready, message }
 */
import type { Logger } from "pino";
import { HubServiceError, isUnauthorized } from "./hub-service.ts";

/** Service calls failing in a row (no answer, 5xx) before the hub counts as lost. */
export const FAILURES_TO_DISCONNECT = 3;

export interface HubHealthOptions {
  readonly hostName: string;
  readonly graceMs: number;
  readonly now: () => number;
  readonly logger: Logger;
  /** The hub answered after not answering (or for the first time). */
  readonly connected: () => void;
  /** The hub stopped answering. */
  readonly lost: () => void;
}

export class HubHealth {
  readonly #o: HubHealthOptions;
  #connected = false;
  #everConnected = false;
  #failures = 0;
  /** Since when the hub has not been answering (or since construction, before the first answer). */
  #failingSince: number;
  #lastError = "";
  #unauthorized = false;
  #ended = false;

  constructor(options: HubHealthOptions) {
    this.#o = options;
    this.#failingSince = options.now();
  }

  get connected(): boolean {
    return this.#connected;
  }

  /** No more connect or lost notices (the connection stopped). */
  end(): void {
    this.#ended = true;
    this.#connected = false;
  }

  /** Runs a service call, recording whether the hub answered; the call's outcome passes through. */
  async call<T>(run: () => Promise<T>): Promise<T> {
    try {
      const result = await run();
      this.#answered();
      return result;
    } catch (err) {
      const noAnswer = err instanceof HubServiceError && (err.status === 0 || err.status >= 500);
      if (noAnswer || isUnauthorized(err)) this.#failed(err as HubServiceError);
      else if (err instanceof HubServiceError) this.#answered();
      throw err;
    }
  }

  health(feed?: { ready: boolean; message: string }): { ready: boolean; message: string } {
    const host = this.#o.hostName;
    if (this.#unauthorized)
      return { ready: false, message: `IoT Hub ${host} refused devicelet's credentials: ${this.#lastError}` };
    const feedNote = feed && !feed.ready ? `; event feed: ${feed.message}` : "";
    if (this.#connected) return { ready: true, message: `connected to IoT Hub ${host}${feedNote}` };
    const awayMs = this.#o.now() - this.#failingSince;
    const away = Math.round(awayMs / 1000);
    const why = this.#lastError ? `: ${this.#lastError}` : "";
    const ready = awayMs < this.#o.graceMs;
    if (!this.#everConnected) return { ready, message: `connecting to IoT Hub ${host} for ${away}s${why}` };
    return { ready, message: `IoT Hub ${host} not answering for ${away}s${why}` };
  }

  #answered(): void {
    this.#failures = 0;
    this.#unauthorized = false;
    this.#lastError = "";
    if (this.#connected || this.#ended) return;
    this.#connected = true;
    this.#o.logger.info({ recovered: this.#everConnected }, "IoT Hub answers");
    this.#everConnected = true;
    this.#o.connected();
  }

  #failed(err: HubServiceError): void {
    this.#failures += 1;
    this.#lastError = err.message;
    const refused = isUnauthorized(err);
    if (refused && !this.#unauthorized)
      this.#o.logger.warn({ err: err.message }, "IoT Hub refused devicelet's credentials");
    this.#unauthorized = refused;
    if (!this.#connected || this.#ended || (this.#failures < FAILURES_TO_DISCONNECT && !refused)) return;
    this.#connected = false;
    this.#failingSince = this.#o.now();
    this.#o.logger.warn({ err: err.message }, "IoT Hub is not answering");
    this.#o.lost();
  }
}
