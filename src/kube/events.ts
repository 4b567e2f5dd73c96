/**
 * {@link EventRecorder}: Kubernetes Events for `kubectl describe`, written so that a noisy device
 * cannot flood the API server.
 *
 * - Aggregation: a repeat of the same (object, type, reason, series) within `aggregationWindowMs`
 *   (10 min) does not create a new Event; it patches the existing one's `count`, `lastTimestamp`
 *   and `message` (the latest wins), as the kubelet's event correlator does. `series` (default
 *   none) keeps apart what must show as separate lines, e.g. `Started` per container.
 * - Rate limit: at most `maxWritesPerMinute` (default 12, burst the same) writes per involved
 *   object. Records beyond that are folded into the series and written when the object's budget
 *   refills, so the final count is still right while the number of writes stays bounded.
 * - Fleet rate limit: at most `qps` writes a second in all (default 50, burst 100: the kubelet's
 *   `eventRecordQPS` and `eventBurst`). Series beyond wait their turn, oldest first, and are
 *   written as the budget refills, so a thousand devices reporting at once cannot put a thousand
 *   Events ahead of the pod statuses and deletes that share the API server with them. Nor can a
 *   slow API server: at most {@link EVENT_WRITES_IN_FLIGHT} (8) writes are in flight at once.
 * - Best effort: `record` never throws or blocks; a failed write is logged and not retried (the
 *   next record of the series writes again). Memory is bounded by `maxSeries` (LRU), and holds
 *   only what is still of use: a series past its window, written, and an object's budget idle for
 *   a minute (full again) are let go at the next record, so the objects of a churning fleet (pods
 *   deleted long ago) are not kept.
 *
 *   const events = new EventRecorder({ client, logger });
 *   events.record({ object: { kind: "Pod", namespace, name, uid, apiVersion: "v1" },
 *                   type: "Warning", reason: "MandatoryConfigMapNotFound", message: "configmap app missing" });
 *   await events.flush();   // tests and shutdown: wait for writes in flight
 */
import type { Logger } from "pino";
import { systemClock, type Clock } from "../base/clock.ts";
import type { KubeClient } from "./client.ts";
import { isClientClosed, isNotFound } from "./errors.ts";
import { toKubeTime } from "./microtime.ts";
import type { ObjectReference } from "./types.ts";

export interface EventToRecord {
  /** The object the event is about; `uid` makes a re-created object a new series. */
  readonly object: ObjectReference;
  readonly type: "Normal" | "Warning";
  /** UpperCamelCase, machine-readable (`MandatorySecretNotFound`, `DeviceOffline`). */
  readonly reason: string;
  /** For humans; truncated to 1024 characters. */
  readonly message: string;
  /** Records of one reason with different series are separate Events (e.g. one per container). */
  readonly series?: string;
}

export interface EventRecorderOptions {
  readonly client: Pick<KubeClient, "createEvent" | "patchEvent">;
  readonly logger: Logger;
  readonly aggregationWindowMs?: number;
  readonly maxWritesPerMinute?: number;
  /** Event writes per second for all objects together; default 50. */
  readonly qps?: number;
  /** Event writes that may go at once above `qps`; default 100. */
  readonly burst?: number;
  /** Event writes in flight at most; default {@link EVENT_WRITES_IN_FLIGHT}. */
  readonly maxInFlight?: number;
  readonly maxSeries?: number;
  /** Wall clock (epoch ms) and timers; injectable for tests. */
  readonly clock?: Clock;
}

interface Series {
  readonly objectKey: string;
  readonly ref: ObjectReference;
  readonly type: EventToRecord["type"];
  readonly reason: string;
  readonly series: string;
  message: string;
  count: number;
  first: number;
  last: number;
  /** Set once created; then later writes patch it. */
  eventName: string | undefined;
  eventNamespace: string | undefined;
  dirty: boolean;
  inFlight: boolean;
}

interface FleetBudget {
  readonly qps: number;
  readonly burst: number;
  tokens: number;
  updated: number;
  timer: unknown;
  /** Series waiting for a token, oldest first. */
  readonly waiting: Set<Series>;
}

interface ObjectBudget {
  tokens: number;
  updated: number;
  timer: unknown;
  /** Series held back until the timer fires. */
  readonly deferred: Set<Series>;
}

/**
 * Event writes in flight at most. Events go on the API client's default lane, whose 32 requests in
 * flight are pod work's (`MAX_IN_FLIGHT` in access.ts). The fleet's rate alone did not keep them
 * from taking that room: when the API server is slow, a write holds its place longer, and at a
 * reconnect storm of 5,000 devices (answers in 0.1 to 0.25 s, each device's Event at the 50 a
 * second allowed) Events held about half the lane while pod statuses waited behind them. With 8,
 * Events still go at the fleet's rate while the API server answers within 0.16 s; slower than
 * that, they yield, and wait here as series, where repeats fold into one write.
 */
export const EVENT_WRITES_IN_FLIGHT = 8;

const seriesKey = (objectKey: string, type: string, reason: string, series: string) =>
  `${objectKey}\u0000${type}\u0000${reason}\u0000${series}`;

const refKey = (ref: ObjectReference) =>
  ref.uid ?? `${ref.kind ?? ""}/${ref.namespace ?? ""}/${ref.name ?? ""}`;

export class EventRecorder {
  readonly #client: EventRecorderOptions["client"];
  readonly #log: Logger;
  readonly #clock: Clock;
  readonly #window: number;
  readonly #perMinute: number;
  readonly #maxSeries: number;
  readonly #series = new Map<string, Series>();
  readonly #budgets = new Map<string, ObjectBudget>();
  readonly #fleet: FleetBudget;
  readonly #inFlight = new Set<Promise<void>>();
  readonly #maxInFlight: number;
  #closed = false;

  constructor(options: EventRecorderOptions) {
    this.#client = options.client;
    this.#log = options.logger.child({ component: "events" });
    this.#clock = options.clock ?? systemClock;
    this.#window = options.aggregationWindowMs ?? 10 * 60_000;
    this.#perMinute = Math.max(1, options.maxWritesPerMinute ?? 12);
    this.#maxSeries = options.maxSeries ?? 10_000;
    const qps = Math.max(0.001, options.qps ?? 50);
    const burst = Math.max(1, options.burst ?? 100);
    this.#maxInFlight = Math.max(1, options.maxInFlight ?? EVENT_WRITES_IN_FLIGHT);
    this.#fleet = {
      qps,
      burst,
      tokens: burst,
      updated: this.#clock.now(),
      timer: undefined,
      waiting: new Set(),
    };
  }

  /** What is held now: series, and objects with a write budget (tests). */
  held(): { readonly series: number; readonly objects: number } {
    return { series: this.#series.size, objects: this.#budgets.size };
  }

  /** Records an event; returns at once. Never throws. */
  record(event: EventToRecord): void {
    if (this.#closed) return;
    const now = this.#clock.now();
    const objectKey = refKey(event.object);
    const key = seriesKey(objectKey, event.type, event.reason, event.series ?? "");
    const message = event.message.length > 1024 ? `${event.message.slice(0, 1021)}...` : event.message;
    let series = this.#series.get(key);
    if (series && now - series.last <= this.#window) {
      series.count += 1;
      series.last = now;
      series.message = message;
      this.#series.delete(key); // LRU: move to the end
    } else {
      series = {
        objectKey,
        ref: event.object,
        type: event.type,
        reason: event.reason,
        series: event.series ?? "",
        message,
        count: 1,
        first: now,
        last: now,
        eventName: undefined,
        eventNamespace: undefined,
        dirty: false,
        inFlight: false,
      };
    }
    series.dirty = true;
    this.#series.set(key, series);
    this.#evict();
    this.#pump(series);
  }

  normal(object: ObjectReference, reason: string, message: string): void {
    this.record({ object, type: "Normal", reason, message });
  }

  warning(object: ObjectReference, reason: string, message: string): void {
    this.record({ object, type: "Warning", reason, message });
  }

  /** Resolves when no write is in flight (writes held back by the rate limit are not awaited). */
  async flush(): Promise<void> {
    while (this.#inFlight.size > 0) await Promise.allSettled([...this.#inFlight]);
  }

  /** Stops recording and cancels held-back writes; then waits for writes in flight. */
  async close(): Promise<void> {
    this.#closed = true;
    for (const budget of [...this.#budgets.values(), this.#fleet]) {
      if (budget.timer !== undefined) this.#clock.clearTimeout(budget.timer);
      budget.timer = undefined;
    }
    await this.flush();
  }

  #pump(series: Series, granted = false): void {
    if (this.#closed || series.inFlight || !series.dirty) return;
    if (!this.#takeWrite(series, granted)) return;
    series.dirty = false;
    series.inFlight = true;
    const write = this.#write(series).finally(() => {
      series.inFlight = false;
      this.#inFlight.delete(write);
      // The oldest waiting take the place this write leaves; then records that arrived during the
      // write go out (or join the line).
      this.#drain();
      if (this.#series.get(this.#keyOf(series)) === series) this.#pump(series);
    });
    this.#inFlight.add(write);
  }

  async #write(series: Series): Promise<void> {
    const snapshot = { count: series.count, last: toKubeTime(series.last), message: series.message };
    try {
      if (series.eventName !== undefined && series.eventNamespace !== undefined) {
        try {
          await this.#client.patchEvent({
            namespace: series.eventNamespace,
            name: series.eventName,
            count: snapshot.count,
            lastTimestamp: snapshot.last,
            message: snapshot.message,
          });
          return;
        } catch (err) {
          // The Event expired (the API server keeps them about an hour): start a new one.
          if (!isNotFound(err)) throw err;
          series.eventName = undefined;
        }
      }
      const created = await this.#client.createEvent({
        involvedObject: series.ref,
        type: series.type,
        reason: series.reason,
        message: snapshot.message,
        count: snapshot.count,
        firstTimestamp: toKubeTime(series.first),
        lastTimestamp: snapshot.last,
      });
      series.eventName = created.metadata.name;
      series.eventNamespace = created.metadata.namespace;
    } catch (err) {
      const fields = { err, reason: series.reason, object: series.objectKey };
      // Stopping: Events still waiting for their write when the API client closed are let go.
      if (isClientClosed(err)) this.#log.debug(fields, "event not written: devicelet is stopping");
      else this.#log.warn(fields, "event write failed");
    }
  }

  /**
   * The fleet's token bucket and places in flight, then the object's bucket: a series they do not
   * let through waits in the fleet's line or the object's. `granted`: the fleet's line already gave
   * this series a token and a place.
   */
  #takeWrite(series: Series, granted: boolean): boolean {
    const now = this.#clock.now();
    const fleet = this.#fleet;
    if (!granted) {
      this.#refill(now);
      // Behind the ones already waiting, so the oldest go first.
      if (fleet.tokens < 1 || fleet.waiting.size > 0 || this.#inFlight.size >= this.#maxInFlight) {
        fleet.waiting.add(series);
        if (fleet.tokens < 1) this.#armFleet();
        return false;
      }
    }
    if (!this.#takeObjectWrite(series, now)) {
      if (granted) fleet.tokens += 1;
      return false;
    }
    if (!granted) fleet.tokens -= 1;
    return true;
  }

  #refill(now: number): void {
    const fleet = this.#fleet;
    fleet.tokens = Math.min(fleet.burst, fleet.tokens + ((now - fleet.updated) * fleet.qps) / 1000);
    fleet.updated = now;
  }

  /**
   * Lets the fleet's line go, oldest first, while there are tokens and places in flight. A line
   * short of tokens waits for the timer; one short of places, for a write to end.
   */
  #drain(): void {
    const fleet = this.#fleet;
    if (this.#closed || fleet.waiting.size === 0) return;
    this.#refill(this.#clock.now());
    for (const next of fleet.waiting) {
      if (fleet.tokens < 1 || this.#inFlight.size >= this.#maxInFlight) break;
      fleet.waiting.delete(next);
      // Evicted, or written meanwhile (a write in flight pumps it again when it ends).
      if (this.#series.get(this.#keyOf(next)) !== next || next.inFlight || !next.dirty) continue;
      fleet.tokens -= 1;
      this.#pump(next, true);
    }
    if (fleet.waiting.size > 0 && fleet.tokens < 1) this.#armFleet();
  }

  /** One timer for the fleet's line, set for when it has a token again. */
  #armFleet(): void {
    const fleet = this.#fleet;
    if (fleet.timer !== undefined || this.#closed) return;
    const wait = Math.max(1, Math.ceil(((1 - fleet.tokens) * 1000) / fleet.qps));
    fleet.timer = this.#clock.setTimeout(() => {
      fleet.timer = undefined;
      this.#drain();
    }, wait);
  }

  /** Per-object token bucket; when empty, defers the series and arms one timer for the object. */
  #takeObjectWrite(series: Series, now: number): boolean {
    let budget = this.#budgets.get(series.objectKey);
    if (!budget) {
      budget = { tokens: this.#perMinute, updated: now, timer: undefined, deferred: new Set() };
      this.#budgets.set(series.objectKey, budget);
    }
    budget.tokens = Math.min(
      this.#perMinute,
      budget.tokens + ((now - budget.updated) * this.#perMinute) / 60_000,
    );
    budget.updated = now;
    // Least recently used first, for #evict.
    this.#budgets.delete(series.objectKey);
    this.#budgets.set(series.objectKey, budget);
    if (budget.tokens >= 1) {
      budget.tokens -= 1;
      return true;
    }
    budget.deferred.add(series);
    if (budget.timer === undefined) {
      const wait = Math.ceil(((1 - budget.tokens) * 60_000) / this.#perMinute);
      const b = budget;
      b.timer = this.#clock.setTimeout(() => {
        b.timer = undefined;
        const due = [...b.deferred];
        b.deferred.clear();
        for (const s of due) {
          if (this.#series.get(this.#keyOf(s)) === s) this.#pump(s);
        }
      }, wait);
    }
    return false;
  }

  #keyOf(series: Series): string {
    return seriesKey(series.objectKey, series.type, series.reason, series.series);
  }

  #evict(): void {
    const now = this.#clock.now();
    // Least recently recorded first. Beyond maxSeries the oldest go whatever they are; a series past
    // its window goes once written (a later record starts a new Event anyway). The sweep stops at
    // the first series still in its window.
    for (const [key, series] of this.#series) {
      const expired = now - series.last > this.#window;
      if (this.#series.size <= this.#maxSeries && !expired) break;
      if (this.#series.size <= this.#maxSeries && (series.dirty || series.inFlight)) continue;
      this.#series.delete(key);
    }
    // An idle object's budget is full again after a minute: forgetting it then changes nothing.
    for (const [key, budget] of this.#budgets) {
      if (now - budget.updated < 60_000) break;
      if (budget.timer === undefined) this.#budgets.delete(key);
    }
  }
}
