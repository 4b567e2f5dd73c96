/**
 * Counters of the MQTT provider, their periodic log line, and a rate limit for the warnings bad
 * input causes. `metrics()` returns a fresh plain snapshot; nothing here blocks or allocates per
 * message beyond a counter.
 *
 *   const m = new MqttMetrics(context.metrics);   // rejections and expiries also go to devicelet's metrics
 *   m.reject("schema"); m.inc("received");
 *   m.snapshot().rejected.schema; // 1
 *   const timer = logMetricsEvery({ intervalSeconds: 300, snapshot: () => m.snapshot(), logger });
 */
import type { Logger } from "pino";
import type { ProviderMetrics } from "../../src/provider/types.ts";

/** Why a message from a device was rejected: the codec's reasons plus the provider's own. */
export type RejectReason =
  | "empty"
  | "oversized"
  | "not-json"
  | "schema"
  | "wrong-device"
  | "unknown-topic"
  | "unsupported-protocol"
  /** Accepted by the codec but unusable here (e.g. a report before any birth, a handler error). */
  | "invalid";

/**
 * What `MqttProvider.metrics()` returns. All counters only grow for the life of the process;
 * `subscriptions` and `unstoredBirths` are levels (what holds now).
 */
export interface MqttMetricsSnapshot {
  /** Messages received from devices (every topic under `devicelet/v1/+/…`), before validation. */
  readonly received: number;
  /** Messages rejected, by reason. */
  readonly rejected: Readonly<Record<RejectReason, number>>;
  /**
   * Out-of-order or replayed messages dropped by (bootId, seq), acks of another epoch, and session
   * output already seen or for no open session.
   */
  readonly stale: number;
  /** A `lost` will from a boot other than the device's current one, ignored. */
  readonly staleWills: number;
  /** Distinct device ids refused by the allow-list. */
  readonly unknownDevices: number;
  /** Messages from refused devices. */
  readonly refusedMessages: number;
  /**
   * Messages of devices another shard owns (`ProviderContext.owns`), dropped unread: their
   * discovery `state`, a read-back document, or traffic that raced a subscription change.
   */
  readonly notOwned: number;
  /** Topic filters for devices' traffic the broker holds for devicelet now (subscriptions.ts). */
  readonly subscriptions: number;
  /** Devices whose latest birth the durable store has not taken yet, and will be tried again (births.ts). */
  readonly unstoredBirths: number;
  /** SUBSCRIBE packets sent for devices' traffic, the read-back's included (subscriptions.ts). */
  readonly subscribePackets: number;
  /** Desired documents published (retained). */
  readonly published: number;
  /** Desired documents not sent because they exceed the device's largest message. */
  readonly tooLarge: number;
  /** Durable-store writes (generation reservations, device records). */
  readonly storeWrites: number;
  readonly commandsSent: number;
  readonly commandsCompleted: number;
  readonly commandsFailed: number;
  readonly commandsExpired: number;
  /** Commands refused because the device's queue was full. */
  readonly commandsRefused: number;
  /** Tombstones the device confirmed (pods finished deleting). */
  readonly tombstonesCleared: number;
  /** Device events turned into Kubernetes Events. */
  readonly deviceEvents: number;
  /**
   * Devices whose retained report devicelet asked the broker for again: behind and quiet, their
   * last messages perhaps dropped by a broker queue that overflowed (reread.ts).
   */
  readonly rereads: number;
  /**
   * Devices taken to be away whose retained `state` and `reported` devicelet asked for again once a
   * wave of devices coming back had passed: their births may have been dropped in it (reread.ts).
   */
  readonly awayRereads: number;
  readonly connects: number;
  readonly disconnects: number;
  /** Pod statuses pushed to the engine. */
  readonly statusUpdates: number;
  /** Logs and exec sessions opened with devices (docs/protocol.md § 3.9). */
  readonly sessionsOpened: number;
  /** Stats samples kept (docs/protocol.md § 3.10). */
  readonly statsSamples: number;
}

type Level = "subscriptions" | "unstoredBirths";
type Counter = Exclude<keyof MqttMetricsSnapshot, "rejected" | Level>;

const reasons: readonly RejectReason[] = [
  "empty",
  "oversized",
  "not-json",
  "schema",
  "wrong-device",
  "unknown-topic",
  "unsupported-protocol",
  "invalid",
];

export class MqttMetrics {
  readonly #counters: Record<Counter, number> = {
    received: 0,
    stale: 0,
    staleWills: 0,
    unknownDevices: 0,
    refusedMessages: 0,
    notOwned: 0,
    subscribePackets: 0,
    published: 0,
    tooLarge: 0,
    storeWrites: 0,
    commandsSent: 0,
    commandsCompleted: 0,
    commandsFailed: 0,
    commandsExpired: 0,
    commandsRefused: 0,
    tombstonesCleared: 0,
    deviceEvents: 0,
    rereads: 0,
    awayRereads: 0,
    connects: 0,
    disconnects: 0,
    statusUpdates: 0,
    sessionsOpened: 0,
    statsSamples: 0,
  };
  readonly #levels: Record<Level, number> = { subscriptions: 0, unstoredBirths: 0 };
  readonly #rejected = Object.fromEntries(reasons.map((r) => [r, 0])) as Record<RejectReason, number>;
  readonly #sink: ProviderMetrics | undefined;

  /** `sink`: the engine's metrics (`ProviderContext.metrics`), told of rejections, expired commands and re-reads. */
  constructor(sink?: ProviderMetrics) {
    this.#sink = sink;
  }

  inc(counter: Counter, by = 1): void {
    this.#counters[counter] += by;
    if (counter === "commandsExpired") for (let i = 0; i < by; i++) this.#sink?.commandExpired();
    if (counter === "rereads") this.#sink?.reportsReread(by);
  }

  /** Sets a level (what holds now, unlike a counter it may go down). */
  set(level: Level, value: number): void {
    this.#levels[level] = value;
  }

  reject(reason: RejectReason): void {
    this.#rejected[reason]++;
    this.#sink?.messageRejected(reason);
  }

  snapshot(): MqttMetricsSnapshot {
    return { ...this.#counters, ...this.#levels, rejected: { ...this.#rejected } };
  }
}

/**
 * Logs the counters every `intervalSeconds`, skipping a line when nothing changed since the last
 * one. Returns the (unref'd) timer for the caller to clear, or undefined when the interval is 0.
 */
export function logMetricsEvery(o: {
  readonly intervalSeconds: number;
  readonly snapshot: () => MqttMetricsSnapshot;
  readonly logger: Logger;
}): NodeJS.Timeout | undefined {
  if (o.intervalSeconds <= 0) return undefined;
  let last = "";
  const timer = setInterval(() => {
    const metrics = o.snapshot();
    const now = JSON.stringify(metrics);
    if (now !== last) o.logger.info({ metrics }, "mqtt provider metrics");
    last = now;
  }, o.intervalSeconds * 1000);
  timer.unref();
  return timer;
}

/**
 * Lets one warning per key through per interval, and says how many were suppressed in between.
 * Keys are bounded: when more than `maxKeys` are tracked, the oldest are forgotten.
 */
export class WarnLimiter {
  readonly #intervalMs: number;
  readonly #maxKeys: number;
  readonly #now: () => number;
  readonly #seen = new Map<string, { at: number; suppressed: number }>();

  constructor(options: { intervalMs: number; maxKeys?: number; now?: () => number }) {
    this.#intervalMs = options.intervalMs;
    this.#maxKeys = options.maxKeys ?? 10_000;
    this.#now = options.now ?? Date.now;
  }

  /** Undefined when this warning should be dropped; otherwise how many were dropped since the last. */
  admit(key: string): number | undefined {
    const now = this.#now();
    const entry = this.#seen.get(key);
    if (entry && now - entry.at < this.#intervalMs) {
      entry.suppressed++;
      return undefined;
    }
    const suppressed = entry?.suppressed ?? 0;
    this.#seen.delete(key);
    this.#seen.set(key, { at: now, suppressed: 0 });
    if (this.#seen.size > this.#maxKeys) {
      const oldest = this.#seen.keys().next();
      if (!oldest.done) this.#seen.delete(oldest.value);
    }
    return suppressed;
  }
}
