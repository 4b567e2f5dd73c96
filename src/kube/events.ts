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
 * - Best effort: `record` never throws or blocks; a failed write is logged and not retried (the
 *   next record of the series writes again). Memory is bounded by `maxSeries` (LRU).
 *
 *   const events = new EventRecorder({ client, logger });
 *   events.record({ object: { kind: "Pod", namespace, name, uid, apiVersion: "v1" },
 *                   type: "Warning", reason: "MandatoryConfigMapNotFound", message: "configmap app missing" });
 *   await events.flush();   // tests and shutdown: wait for writes in flight
 */
import type { Logger } from "pino";
import { systemClock, type Clock } from "../base/clock.ts";
import type { KubeClient } from "./client.ts";
import { isNotFound } from "./errors.ts";
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

interface ObjectBudget {
  tokens: number;
  updated: number;
  timer: unknown;
  /** Series held back until the timer fires. */
  readonly deferred: Set<Series>;
}

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
  readonly #inFlight = new Set<Promise<void>>();
  #closed = false;

  constructor(options: EventRecorderOptions) {
    this.#client = options.client;
    this.#log = options.logger.child({ component: "events" });
    this.#clock = options.clock ?? systemClock;
    this.#window = options.aggregationWindowMs ?? 10 * 60_000;
    this.#perMinute = Math.max(1, options.maxWritesPerMinute ?? 12);
    this.#maxSeries = options.maxSeries ?? 10_000;
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
    for (const budget of this.#budgets.values()) {
      if (budget.timer !== undefined) this.#clock.clearTimeout(budget.timer);
      budget.timer = undefined;
    }
    await this.flush();
  }

  #pump(series: Series): void {
    if (this.#closed || series.inFlight || !series.dirty) return;
    if (!this.#takeWrite(series)) return;
    series.dirty = false;
    series.inFlight = true;
    const write = this.#write(series).finally(() => {
      series.inFlight = false;
      this.#inFlight.delete(write);
      // Records that arrived during the write go out now (or when the budget allows).
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
      this.#log.warn({ err, reason: series.reason, object: series.objectKey }, "event write failed");
    }
  }

  /** Per-object token bucket; when empty, defers the series and arms one timer for the object. */
  #takeWrite(series: Series): boolean {
    const now = this.#clock.now();
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
    while (this.#series.size > this.#maxSeries) {
      const oldest = this.#series.keys().next();
      if (oldest.done) break;
      this.#series.delete(oldest.value);
    }
    // An idle object's budget is full again after a minute; forgetting it then changes nothing.
    if (this.#budgets.size > this.#maxSeries) {
      const now = this.#clock.now();
      for (const [key, budget] of this.#budgets) {
        if (this.#budgets.size <= this.#maxSeries) break;
        if (budget.timer === undefined && now - budget.updated >= 60_000) this.#budgets.delete(key);
      }
    }
  }
}
