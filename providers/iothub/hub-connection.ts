/**
 * Azure IoT Hub presented as the MQTT provider's transport ({@link TransportConnection}), so every
 * part of providers/mqtt runs unchanged over it. docs/iothub.md ("Mapping onto IoT Hub") is the
 * contract; src/device/iothub-link.ts is the device's half.
 *
 * - Sweeps: the selected devices' twins are read by query, page by page, at most every
 *   `sweepIntervalMs`, into a cache per device (twin-view.ts). Watches: after devicelet writes a
 *   desired document or sends a command to a device, that twin is read quickly (every 200 ms,
 *   growing to 2 s) until `watchForMs` passed without a change: this makes a bound pod Running
 *   fast without spending the query quota.
 * - Events (optional feed): a twin change event that follows the cached view directly is applied
 *   to it without a read, and ends the device's watch (the events carry its changes from there);
 *   one that does not (a gap, an unknown device), and a connection state event, cost one read.
 *   So heartbeats cost no reads, and with the feed a pod start costs about one read.
 * - What changed arrives as broker messages would: `…/state`, `…/reported`, `…/ack` (in that order,
 *   not retained). An `online` device whose heartbeat stopped (2 × its interval + the margin, by
 *   local time) or that the hub reports `Disconnected` gets its will delivered as its state, once.
 * - `subscribe` delivers every known device's desired document, state and report that a new
 *   filter matches, as retained messages, after it resolves (a broker after SUBACK), from a
 *   completed sweep. The read-back marker (`…/_bridge/sync/…`) comes back after them.
 * - `publish` writes desired documents (hub-publish.ts), invokes methods for commands and notices,
 *   and takes the service's own clearing of `state`/`reported` (it cannot write reported) and other
 *   bridge topics as done. Log and exec sessions are refused.
 * - The hub keeps devicelet's state like a persistent session: every (re)connect says
 *   `sessionPresent: true`, so nothing is subscribed or published again.
 *
 *   const conn = new HubConnection({ service, selection: { query: "tags.fleet = 'line-1'" },
 *     sweepIntervalMs: 10_000, watchForMs: 30_000, methodResponseTimeoutSeconds: 10,
 *     presenceMarginMs: 15_000, graceMs: 60_000, logger });
 *   conn.onMessage((topic, payload, retained) => ...);
 *   await conn.start(signal);               // resolves after the first complete sweep
 *   await conn.publish(topics.desired("gw-1"), payload, { qos: 1, retain: true });
 *   conn.operations();                      // hub operations by class
 *   await conn.stop();                      // also closes the service
 */
import type { Logger } from "pino";
import { retryDelay } from "../../src/base/backoff.ts";
import { sleepOn, systemClock } from "../../src/base/clock.ts";
import { IOTHUB_MAPPING } from "../../src/protocol/iothub-twin.ts";
import { TOPIC_ROOT } from "../../src/protocol/topics.ts";
import type { PublishOptions, TransportConnection } from "../mqtt/connection.ts";
import type { OperationClass } from "./budget.ts";
import type { EventFeed, HubEvent } from "./event-feed-types.ts";
import { HubServiceError, MAX_QUERY_PAGE, type HubService, type ServiceTwin } from "./hub-service.ts";
import { HubHealth } from "./hub-health.ts";
import { TwinWatches } from "./watches.ts";
import { HubPublisher } from "./hub-publish.ts";
import {
  changedTexts,
  effectiveState,
  filterMatches,
  isLost,
  markLost,
  nextView,
  patchedView,
  textsChanged,
  type TwinView,
} from "./twin-view.ts";

export interface HubConnectionOptions {
  /** The hub's service API. The connection owns it from here: `stop` closes it. */
  readonly service: HubService;
  /** Which devices: a query condition (`tags.fleet = 'line-1'`) and/or ids, both must hold. */
  readonly selection: { readonly query?: string; readonly ids?: readonly string[] };
  /** Least time between the starts of two sweeps. */
  readonly sweepIntervalMs: number;
  /** How long a watched twin keeps being read after its last change. */
  readonly watchForMs: number;
  /** Direct methods' response timeout (at least 5). */
  readonly methodResponseTimeoutSeconds: number;
  /** Added to two heartbeat intervals before a silent device is lost; at least one sweep interval. */
  readonly presenceMarginMs: number;
  /** How long the hub may fail to answer before health turns not ready. */
  readonly graceMs: number;
  /** The device-to-cloud stream; started and stopped with the connection. */
  readonly events?: EventFeed;
  readonly logger: Logger;
  /** Local milliseconds (presence timing, health). */
  readonly now?: () => number;
}

type MessageListener = (topic: string, payload: Buffer, retained: boolean) => void;

const RETAINED_KINDS = ["desired", "state", "reported"] as const;

/** `SELECT * FROM devices [WHERE …]` for a selection; ids are quoted, `'` doubled. */
export function selectionQuery(selection: HubConnectionOptions["selection"]): string {
  const conditions: string[] = [];
  const condition = selection.query?.trim();
  if (condition) conditions.push(/\sOR\s/i.test(condition) ? `(${condition})` : condition);
  if (selection.ids !== undefined)
    conditions.push(`deviceId IN [${selection.ids.map((id) => `'${id.replace(/'/g, "''")}'`).join(", ")}]`);
  return conditions.length === 0
    ? "SELECT * FROM devices"
    : `SELECT * FROM devices WHERE ${conditions.join(" AND ")}`;
}

export class HubConnection implements TransportConnection {
  readonly protocolVersion = 4 as const;
  readonly secure: boolean;
  readonly #o: HubConnectionOptions;
  readonly #service: HubService;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #sql: string;
  readonly #marginMs: number;
  readonly #views = new Map<string, TwinView>();
  /** Devices with a read under way for an event. */
  readonly #reading = new Set<string>();
  readonly #filters = new Set<string>();
  readonly #watches: TwinWatches;
  readonly #messageListeners: MessageListener[] = [];
  readonly #connectListeners: ((info: { readonly sessionPresent: boolean }) => void)[] = [];
  readonly #disconnectListeners: (() => void)[] = [];
  /** Deliveries in order: retained snapshots, live changes, marker echoes. */
  readonly #deliveries: (() => void)[] = [];
  readonly #stop = new AbortController();
  readonly #publisher: HubPublisher;
  readonly #hub: HubHealth;
  readonly #firstSweep: Promise<void>;
  #sweptOnce = false;
  #markSwept: () => void = () => undefined;
  #draining = false;
  #started = false;

  constructor(options: HubConnectionOptions) {
    this.#o = options;
    this.#service = options.service;
    this.secure = options.service.secure;
    this.#log = options.logger.child({ transport: "iothub", hub: options.service.hostName });
    this.#now = options.now ?? Date.now;
    this.#sql = selectionQuery(options.selection);
    this.#marginMs = Math.max(options.presenceMarginMs, options.sweepIntervalMs);
    this.#hub = new HubHealth({
      hostName: options.service.hostName,
      graceMs: options.graceMs,
      now: this.#now,
      logger: this.#log,
      connected: () => {
        for (const l of this.#connectListeners) l({ sessionPresent: true });
      },
      lost: () => {
        for (const l of this.#disconnectListeners) l();
      },
    });
    this.#watches = new TwinWatches({
      watchForMs: options.watchForMs,
      now: this.#now,
      read: (id) => this.#watchRead(id),
      logger: this.#log,
    });
    this.#firstSweep = new Promise((resolve) => (this.#markSwept = resolve));
    this.#publisher = new HubPublisher({
      service: this.#service,
      call: (run) => this.#hub.call(run),
      absorb: (twin) => this.#absorb(twin),
      view: (id) => this.#views.get(id),
      watch: (id) => this.watch(id),
      emitAck: (id, text) => this.#live(`${TOPIC_ROOT}/${id}/ack`, text),
      methodResponseTimeoutSeconds: options.methodResponseTimeoutSeconds,
      signal: this.#stop.signal,
      clock: systemClock,
      logger: this.#log,
    });
  }

  isConnected(): boolean {
    return this.#hub.connected;
  }
  onMessage(listener: MessageListener): void {
    this.#messageListeners.push(listener);
  }
  onConnect(listener: (info: { readonly sessionPresent: boolean }) => void): void {
    this.#connectListeners.push(listener);
  }
  onDisconnect(listener: () => void): void {
    this.#disconnectListeners.push(listener);
  }

  /** Hub operations sent so far, by class. */
  operations(): Record<OperationClass, number> {
    return this.#service.operations();
  }

  /** Starts sweeping (and the event feed); resolves after the first complete sweep. Call once. */
  async start(signal: AbortSignal): Promise<void> {
    if (this.#started) throw new Error("the IoT Hub connection was already started");
    this.#started = true;
    if (signal.aborted) await this.stop();
    signal.addEventListener("abort", () => void this.stop(), { once: true });
    void this.#sweepLoop();
    this.#o.events
      ?.start(this.#stop.signal, (e) => this.#onEvent(e))
      .catch((err: unknown) => {
        this.#log.warn({ err: (err as Error).message }, "iothub event feed failed to start");
      });
    await this.#untilStopped(this.#firstSweep);
  }

  /** Ends sweeps, watches, pending retries, the event feed and the service's sockets. Idempotent. */
  async stop(): Promise<void> {
    if (this.#stop.signal.aborted) return;
    this.#stop.abort(new Error("the IoT Hub connection is stopped"));
    this.#watches.stop();
    await this.#o.events?.stop().catch(() => undefined);
    this.#hub.end();
    this.#service.close();
  }

  /**
   * Ready while the hub answers, and for `graceMs` after it stopped answering (or while the first
   * sweep is under way); not ready at once when the hub refuses the credentials (hub-health.ts).
   */
  health(): { ready: boolean; message: string } {
    return this.#hub.health(this.#o.events?.health());
  }

  /** Records the filters; retained-like values they match follow once a sweep is complete. */
  async subscribe(filters: readonly string[]): Promise<void> {
    await this.#untilStopped(this.#firstSweep);
    const fresh = filters.filter((f) => !this.#filters.has(f));
    for (const f of fresh) this.#filters.add(f);
    this.#enqueue(() => this.#deliverRetained(fresh));
  }

  unsubscribe(filters: readonly string[]): Promise<void> {
    for (const f of filters) this.#filters.delete(f);
    return Promise.resolve();
  }

  publish(topic: string, payload: Buffer, _options: PublishOptions): Promise<void> {
    if (!this.#started || this.#stop.signal.aborted)
      return Promise.reject(new Error("the IoT Hub connection is not running"));
    const [id = "", kind = "", ...rest] = topic.startsWith(`${TOPIC_ROOT}/`)
      ? topic.slice(TOPIC_ROOT.length + 1).split("/")
      : [];
    if (id === "_bridge") {
      if (kind === "sync") this.#enqueue(() => this.#emit(topic, payload, false));
      return Promise.resolve();
    }
    if (id !== "" && rest.length === 0) {
      if (kind === "desired") return this.#publisher.writeDesired(id, payload.toString("utf8"));
      if (kind === "notice") return this.#publisher.notice(id, payload);
      // The service cannot write reported properties: clearing them (retire.ts) has nothing to do.
      if (kind === "state" || kind === "reported") return Promise.resolve();
    }
    if (id !== "" && kind === "cmd" && rest.length === 1) return this.#publisher.command(id, payload);
    if (kind === "io")
      return Promise.reject(new Error("logs and exec sessions are not carried over IoT Hub"));
    return Promise.reject(new Error(`topic ${topic} is not carried over IoT Hub`));
  }

  waitingForTurn(topic: string): boolean {
    const [id = "", kind = "", ...rest] = topic.startsWith(`${TOPIC_ROOT}/`)
      ? topic.slice(TOPIC_ROOT.length + 1).split("/")
      : [];
    return kind === "desired" && rest.length === 0 && this.#publisher.waitingForTurn(id);
  }

  /** Reads the device's twin quickly until `watchForMs` passed without a change (an event came). */
  watch(deviceId: string): void {
    this.#watches.watch(deviceId);
  }

  async #watchRead(deviceId: string): Promise<"changed" | "same" | "gone"> {
    const before = this.#views.get(deviceId);
    try {
      const after = this.#absorb(await this.#hub.call(() => this.#service.getTwin(deviceId)));
      return textsChanged(before, after) ? "changed" : "same";
    } catch (err) {
      if (!(err instanceof HubServiceError && err.status === 404)) throw err;
      this.#views.delete(deviceId);
      return "gone";
    }
  }

  async #sweepLoop(): Promise<void> {
    const signal = this.#stop.signal;
    let failures = 0;
    while (!signal.aborted) {
      const began = this.#now();
      let wait: number;
      try {
        await this.#sweep();
        failures = 0;
        wait = this.#o.sweepIntervalMs - (this.#now() - began);
      } catch (err) {
        failures += 1;
        wait = retryDelay({ failures, baseMs: 500, maxMs: Math.max(500, this.#o.sweepIntervalMs) });
        this.#log.debug({ err: (err as Error).message, failures }, "iothub sweep failed");
      }
      await sleepOn(systemClock, Math.max(0, wait), signal);
    }
  }

  /** Reads every selected twin, page by page; forgets devices that left the selection. */
  async #sweep(): Promise<void> {
    const seen = new Set<string>();
    let continuation: string | undefined;
    do {
      const token = continuation;
      const page = await this.#queryPage(token);
      for (const twin of page.items) {
        seen.add(twin.deviceId);
        this.#absorb(twin);
      }
      continuation = page.continuation;
    } while (continuation !== undefined && !this.#stop.signal.aborted);
    for (const id of this.#views.keys()) if (!seen.has(id) && !this.#watches.has(id)) this.#views.delete(id);
    for (const [id, view] of this.#views) this.#checkPresence(id, view);
    if (!this.#sweptOnce) {
      this.#sweptOnce = true;
      this.#log.debug({ devices: this.#views.size }, "first iothub sweep complete");
      this.#markSwept();
    }
  }

  /**
   * One page of a sweep. A throttled page (429) waits as long as the hub asks (or a growing
   * backoff) and is asked for again with the same continuation: starting the sweep over would read
   * the first pages again and again and never reach the last ones under a strict query rate.
   */
  async #queryPage(token: string | undefined): ReturnType<HubService["query"]> {
    for (let throttled = 1; ; throttled++) {
      try {
        return await this.#hub.call(() => this.#service.query(this.#sql, token, MAX_QUERY_PAGE));
      } catch (err) {
        if (!(err instanceof HubServiceError && err.status === 429) || this.#stop.signal.aborted) throw err;
        const delay = retryDelay({
          failures: throttled,
          baseMs: 1_000,
          maxMs: 60_000,
          atLeastMs: err.retryAfterMs,
        });
        this.#log.debug({ delayMs: Math.round(delay) }, "iothub sweep page throttled; waiting");
        await sleepOn(systemClock, delay, this.#stop.signal);
      }
    }
  }

  /** Takes a twin into the cache and delivers what changed; returns the device's view. */
  #absorb(twin: ServiceTwin): TwinView {
    const previous = this.#views.get(twin.deviceId);
    if (previous?.version !== undefined && twin.version !== undefined && twin.version < previous.version)
      return previous;
    return this.#take(twin.deviceId, previous, nextView(previous, twin, this.#now()));
  }

  /** Makes `next` the device's view and delivers what changed since `previous`. */
  #take(deviceId: string, previous: TwinView | undefined, next: TwinView): TwinView {
    if (next.lost === undefined && isLost(next, this.#now(), this.#marginMs)) next = markLost(next);
    this.#views.set(deviceId, next);
    // Devices of the first sweep reach subscribers as retained values, not as changes.
    if (previous !== undefined || this.#sweptOnce)
      for (const { kind, text } of changedTexts(previous, next))
        this.#live(`${TOPIC_ROOT}/${deviceId}/${kind}`, text);
    return next;
  }

  /**
   * A twin change event: applied to the view when it follows it directly, so neither it nor a
   * heartbeat costs a read, and the device's watch ends (events carry its changes); ignored when
   * the view is already as new; otherwise one read of the twin.
   */
  #onTwinChange(deviceId: string, body: Buffer): void {
    const previous = this.#views.get(deviceId);
    let event: unknown;
    try {
      event = JSON.parse(body.toString("utf8"));
    } catch {
      event = undefined;
    }
    const version = (event as { version?: unknown } | undefined)?.version;
    if (typeof version === "number" && previous?.version !== undefined && version <= previous.version) return;
    const next = patchedView(previous, event, this.#now());
    if (next === undefined) {
      this.#readOnce(deviceId);
      return;
    }
    this.#take(deviceId, previous, next);
    this.#watches.end(deviceId);
  }

  /** One read of the twin (at most one per device at a time), for an event that could not be applied. */
  #readOnce(deviceId: string): void {
    if (this.#reading.has(deviceId) || this.#stop.signal.aborted) return;
    this.#reading.add(deviceId);
    void this.#watchRead(deviceId)
      .catch((err: unknown) => {
        this.#log.debug({ device: deviceId, err: (err as Error).message }, "twin read after an event failed");
      })
      .finally(() => this.#reading.delete(deviceId));
  }

  /** Between reads: an `online` device whose heartbeat went stale gets its will as its state. */
  #checkPresence(deviceId: string, view: TwinView): void {
    if (view.lost !== undefined || !isLost(view, this.#now(), this.#marginMs)) return;
    const lost = markLost(view);
    this.#views.set(deviceId, lost);
    this.#log.debug(
      { device: deviceId },
      "device lost: heartbeat stale or disconnected; delivering its will",
    );
    const will = effectiveState(lost);
    if (will !== undefined) this.#live(`${TOPIC_ROOT}/${deviceId}/state`, will);
  }

  #onEvent(e: HubEvent): void {
    if (e.source === "Telemetry") {
      const kind = e.properties[IOTHUB_MAPPING.kindProperty];
      if (kind === "ack" || kind === "evt" || kind === "stats")
        this.#enqueue(() => this.#emit(`${TOPIC_ROOT}/${e.deviceId}/${kind}`, e.body, false));
      return;
    }
    if (e.source === "twinChangeEvents") this.#onTwinChange(e.deviceId, e.body);
    else if (e.source === "deviceConnectionStateEvents") this.#readOnce(e.deviceId);
  }

  #deliverRetained(filters: readonly string[]): void {
    if (filters.length === 0) return;
    for (const [id, view] of this.#views) {
      for (const kind of RETAINED_KINDS) {
        const topic = `${TOPIC_ROOT}/${id}/${kind}`;
        const text = kind === "state" ? effectiveState(view) : view[kind];
        if (text !== undefined && text !== "" && filters.some((f) => filterMatches(f, topic)))
          this.#emit(topic, Buffer.from(text), true);
      }
    }
  }

  #live(topic: string, text: string): void {
    this.#enqueue(() => this.#emit(topic, Buffer.from(text), false));
  }

  #emit(topic: string, payload: Buffer, retained: boolean): void {
    if (![...this.#filters].some((f) => filterMatches(f, topic))) return;
    for (const l of this.#messageListeners) l(topic, payload, retained);
  }

  /** Deliveries run in order, each after the current call stack (a broker's packets after SUBACK). */
  #enqueue(delivery: () => void): void {
    this.#deliveries.push(delivery);
    if (this.#draining) return;
    this.#draining = true;
    setImmediate(() => {
      for (let next = this.#deliveries.shift(); next; next = this.#deliveries.shift()) {
        try {
          next();
        } catch (err) {
          this.#log.error({ err }, "a message listener threw");
        }
      }
      this.#draining = false;
    });
  }

  #untilStopped<T>(p: Promise<T>): Promise<T> {
    const signal = this.#stop.signal;
    if (signal.aborted) return Promise.reject(signal.reason as Error);
    return new Promise<T>((resolve, reject) => {
      const abort = () => reject(signal.reason as Error);
      signal.addEventListener("abort", abort, { once: true });
      p.then(resolve, reject).finally(() => signal.removeEventListener("abort", abort));
    });
  }
}
