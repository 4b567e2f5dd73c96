/**
 * Which devices' traffic devicelet asks the broker for. Without an ownership predicate, everything
 * devices publish (`topics.fromDevices()`: six wildcard filters), as one devicelet serving every
 * device. With one (`ProviderContext.owns`: this engine serves one shard of several replicas),
 * the broker splits the traffic: devicelet subscribes to the discovery filter `+/state` only
 * (births, wills, presence — retained, a few messages per device and connection) and, for each
 * owned device it learns of there (or from its read-back document), to that device's own filters
 * (`topics.fromDevice`: reported, ack, evt, io/+/out, stats). Another shard's reports, acks,
 * events, session output and stats never reach this connection; what still does (their `state`,
 * their documents during the read-back, anything racing a subscription change) is dropped by
 * {@link DeviceSubscriptions.admit} before it touches any state, counted as `notOwned`.
 *
 * Level-based: learning and forgetting devices change the wanted set; one pass at a time
 * subscribes and unsubscribes the difference from what the broker acknowledged, batched (a
 * device's filters never split, at most {@link MAX_FILTERS_PER_PACKET} filters and
 * {@link MAX_FILTER_BYTES_PER_PACKET} bytes of filters per SUBSCRIBE), so a start with thousands
 * of retained births costs a few packets. A failed batch is tried again with backoff and at the
 * next connect; after a connect without a session (MQTT 3.1.1 §3.2.2.2, MQTT 5 §3.2.2.1.1) every
 * filter is subscribed again. Re-subscribing a held filter is harmless: the broker replaces the
 * subscription (3.1.1 §3.8.4, MQTT 5 §3.8.4) and sends its retained message again, which Inbound
 * orders away as stale. At start a shard also unsubscribes the other wildcard filters, which a
 * persistent session of the same client id may hold from a devicelet that served every device.
 *
 *   const subs = new DeviceSubscriptions({ connection, owns, allowed, metrics, logger });
 *   await readback.run(subs.filters());        // the discovery filters, at start
 *   subs.started();
 *   conn.onMessage((t, p) => { if (subs.admit(t, p)) handle(t, p); });  // learns from `state`
 *   subs.learn(documents.keys());              // devices with a read-back document
 *   await subs.settled(10_000);                // the broker acknowledged every wanted filter
 */
import type { Logger } from "pino";
import { retryDelay } from "../../src/base/backoff.ts";
import { DEVICE_ID, TOPIC_ROOT, topics } from "../../src/protocol/topics.ts";
import { SubscriptionsRefused, type BrokerConnection } from "./connection.ts";
import type { MqttMetrics } from "./metrics.ts";

/** At most this many filters in one SUBSCRIBE or UNSUBSCRIBE (200 devices). */
export const MAX_FILTERS_PER_PACKET = 1000;
/**
 * At most this many bytes of filters in one (each 2 + its UTF-8 length + 1 options byte,
 * MQTT §3.8.3): far below any broker's packet limit; 200 devices of 10-character ids take 32 KB.
 */
export const MAX_FILTER_BYTES_PER_PACKET = 64 * 1024;
/** Devices per SUBSCRIBE of a re-read: each brings at most 1 + {@link FILTERS_PER_DEVICE} filters. */
const REREAD_DEVICES_PER_PACKET = 150;
/** Filters per owned device. */
export const FILTERS_PER_DEVICE = topics.fromDevice("x").length;

const DEVICE_PREFIX = `${TOPIC_ROOT}/`;
const DISCOVERY: readonly string[] = [topics.state("+")];
const RETRY_BASE_MS = 1_000;
const RETRY_MAX_MS = 60_000;

export interface DeviceSubscriptionsOptions {
  readonly connection: Pick<BrokerConnection, "subscribe" | "unsubscribe" | "isConnected">;
  /** `ProviderContext.owns`; absent, every device is served over the wildcard filters. */
  readonly owns?: ((deviceId: string) => boolean) | undefined;
  /** `devices.allow`: a refused device gets no filters of its own (its births are still refused). */
  readonly allowed: (deviceId: string) => boolean;
  readonly metrics: MqttMetrics;
  readonly logger: Logger;
  readonly random?: () => number;
}

/** Splits devices into SUBSCRIBE-sized groups: a device's filters always travel together. */
export function packetsOf(deviceIds: Iterable<string>): string[][] {
  const packets: string[][] = [];
  let packet: string[] = [];
  let filters = 0;
  let bytes = 0;
  for (const id of deviceIds) {
    const own = topics.fromDevice(id);
    const size = own.reduce((n, f) => n + Buffer.byteLength(f) + 3, 0);
    if (
      packet.length > 0 &&
      (filters + own.length > MAX_FILTERS_PER_PACKET || bytes + size > MAX_FILTER_BYTES_PER_PACKET)
    ) {
      packets.push(packet);
      [packet, filters, bytes] = [[], 0, 0];
    }
    packet.push(id);
    filters += own.length;
    bytes += size;
  }
  if (packet.length > 0) packets.push(packet);
  return packets;
}

/** The device a topic under `devicelet/v1/` is about; undefined for devicelet's own (`_bridge`). */
function deviceOf(topic: string): { deviceId: string; rest: string } | undefined {
  if (!topic.startsWith(DEVICE_PREFIX)) return undefined;
  const slash = topic.indexOf("/", DEVICE_PREFIX.length);
  const deviceId = topic.slice(DEVICE_PREFIX.length, slash < 0 ? undefined : slash);
  if (!DEVICE_ID.test(deviceId)) return undefined;
  return { deviceId, rest: slash < 0 ? "" : topic.slice(slash + 1) };
}

export class DeviceSubscriptions {
  readonly #o: DeviceSubscriptionsOptions;
  readonly #owns: ((deviceId: string) => boolean) | undefined;
  /** Owned devices whose filters devicelet wants held. */
  readonly #wanted = new Set<string>();
  /** Devices whose filters the broker acknowledged (and has not lost with a session). */
  readonly #held = new Set<string>();
  #discoveryHeld = false;
  #running = false;
  /** Reconciles asked for; a pass goes again when one came while it ran. */
  #asked = 0;
  #scheduled = false;
  #failures = 0;
  #retryTimer: NodeJS.Timeout | undefined;
  #stopped = false;
  readonly #waiters: (() => void)[] = [];

  constructor(options: DeviceSubscriptionsOptions) {
    this.#o = options;
    this.#owns = options.owns;
  }

  /** What to subscribe to at start (the read-back does) and again after a session was lost. */
  filters(): readonly string[] {
    return this.#owns ? DISCOVERY : topics.fromDevices();
  }

  /** Topic filters for devices' traffic the broker holds now. */
  count(): number {
    return (this.#discoveryHeld ? this.filters().length : 0) + this.#held.size * FILTERS_PER_DEVICE;
  }

  /** Devices whose own filters are held (sharded only), for tests and logs. */
  heldDevices(): readonly string[] {
    return [...this.#held];
  }

  /**
   * Whether a message is this engine's: false (counted as `notOwned`, to be dropped unread) for a
   * topic of a device another shard owns. An owned device's `state` makes its filters wanted (a
   * birth, will or presence), or no longer wanted when cleared (zero bytes: decommissioned,
   * docs/protocol.md § 5). Always true without an ownership predicate.
   */
  admit(topic: string, payload: Buffer): boolean {
    const owns = this.#owns;
    if (!owns) return true;
    const device = deviceOf(topic);
    if (!device) return true;
    if (!owns(device.deviceId)) {
      this.#o.metrics.inc("notOwned");
      return false;
    }
    if (device.rest === "state") {
      if (payload.length > 0) this.learn([device.deviceId]);
      else this.#forget(device.deviceId);
    }
    return true;
  }

  /** Devices known otherwise (a read-back document): their filters are wanted if they are owned. */
  learn(deviceIds: Iterable<string>): void {
    const owns = this.#owns;
    if (!owns) return;
    let added = false;
    for (const id of deviceIds) {
      if (this.#wanted.has(id) || !owns(id) || !this.#o.allowed(id)) continue;
      this.#wanted.add(id);
      added = true;
    }
    if (added) this.#schedule();
  }

  /**
   * The read-back subscribed the discovery filters. A shard also drops the other wildcard
   * filters, which a persistent session (same client id) may still hold from a devicelet that
   * served every device: they would bring it every device's traffic again. Unsubscribing a filter
   * that is not held is no error (MQTT 3.1.1 §3.10.4, MQTT 5 §3.11.3 reason 0x11).
   */
  started(): void {
    this.#discoveryHeld = true;
    this.#o.metrics.inc("subscribePackets");
    this.#changed();
    if (!this.#owns) return;
    const leftovers = topics.fromDevices().filter((f) => !DISCOVERY.includes(f));
    this.#o.connection.unsubscribe(leftovers).catch((err: unknown) => {
      this.#o.logger.warn({ err }, "dropping the wildcard subscriptions of an earlier session failed");
    });
  }

  /**
   * A connection came up: tries what is pending now. Without a session the broker dropped every
   * filter: the per-device ones are subscribed again (the discovery ones by {@link resubscribe}).
   */
  resume(sessionPresent: boolean): void {
    if (!sessionPresent) {
      this.#held.clear();
      this.#discoveryHeld = false;
    }
    clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
    this.#changed();
    void this.#reconcile();
  }

  /**
   * Asks the broker for the retained `state` and `reported` of `deviceIds` again: their latest
   * births or reports may have been dropped on the way (reread.ts). The devices' `state` topics are
   * subscribed beside the wildcard (or a shard's discovery filter) and unsubscribed once the broker
   * has acknowledged: the retained copies are on their way by then, and a live message in between
   * comes twice, which Inbound orders away. `reported` likewise for one devicelet serving every
   * device; a shard subscribes each held device's own filters again instead, which the broker
   * replaces and answers with their retained messages. Never rejects.
   */
  async reread(deviceIds: readonly string[]): Promise<void> {
    const { connection, logger, metrics } = this.#o;
    const owns = this.#owns;
    try {
      for (let i = 0; i < deviceIds.length; i += REREAD_DEVICES_PER_PACKET) {
        const ids = deviceIds.slice(i, i + REREAD_DEVICES_PER_PACKET);
        const passing = ids.flatMap((id) =>
          owns ? [topics.state(id)] : [topics.state(id), topics.reported(id)],
        );
        const own = owns ? ids.filter((id) => this.#held.has(id) && this.#wanted.has(id)) : [];
        metrics.inc("subscribePackets");
        await connection.subscribe([...passing, ...own.flatMap((id) => topics.fromDevice(id))]);
        await connection.unsubscribe(passing);
      }
    } catch (err) {
      logger.warn(
        { err, devices: deviceIds.length },
        "asking the broker for states and reports again failed",
      );
    }
  }

  /** The broker lost devicelet's session: every filter is subscribed again. */
  resubscribe(): void {
    this.resume(false);
    this.#o.metrics.inc("subscribePackets");
    this.#o.connection.subscribe(this.filters()).then(
      () => {
        this.#discoveryHeld = true;
        this.#changed();
      },
      (err: unknown) => this.#o.logger.error({ err }, "subscribing after reconnect failed"),
    );
  }

  /**
   * Resolves true once the broker acknowledged every wanted device's filters (at once when
   * nothing is pending), false when `timeoutMs` passed first. Never rejects.
   */
  settled(timeoutMs: number): Promise<boolean> {
    if (this.#inSync()) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      this.#waiters.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }

  /** Stops retrying (the provider stops); the connection is the caller's to close. */
  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#retryTimer);
  }

  #forget(deviceId: string): void {
    if (this.#wanted.delete(deviceId)) this.#schedule();
  }

  #inSync(): boolean {
    if (this.#wanted.size !== this.#held.size) return false;
    for (const id of this.#wanted) if (!this.#held.has(id)) return false;
    return true;
  }

  #changed(): void {
    this.#o.metrics.set("subscriptions", this.count());
    if (!this.#inSync()) return;
    for (const wake of this.#waiters.splice(0)) wake();
  }

  /** After the current step, so a burst of retained births goes out in one pass. */
  #schedule(): void {
    if (this.#scheduled || this.#stopped || this.#retryTimer !== undefined) return;
    this.#scheduled = true;
    setImmediate(() => {
      this.#scheduled = false;
      void this.#reconcile();
    });
  }

  async #reconcile(): Promise<void> {
    this.#asked++;
    if (this.#running) return;
    this.#running = true;
    try {
      let seen: number;
      do {
        seen = this.#asked;
        if (this.#stopped || !this.#o.connection.isConnected()) return;
        const add = [...this.#wanted].filter((id) => !this.#held.has(id));
        const remove = [...this.#held].filter((id) => !this.#wanted.has(id));
        if (add.length === 0 && remove.length === 0) break;
        const done = await Promise.all([
          ...packetsOf(add).map((ids) => this.#subscribe(ids)),
          ...packetsOf(remove).map((ids) => this.#unsubscribe(ids)),
        ]);
        this.#changed();
        if (done.includes(false)) {
          this.#retryLater();
          return;
        }
        this.#failures = 0;
      } while (seen !== this.#asked);
    } finally {
      this.#running = false;
      this.#changed();
    }
  }

  /** One SUBSCRIBE; true when every filter was granted. Devices granted in part are not held. */
  async #subscribe(ids: readonly string[]): Promise<boolean> {
    this.#o.metrics.inc("subscribePackets");
    try {
      await this.#o.connection.subscribe(ids.flatMap((id) => topics.fromDevice(id)));
      for (const id of ids) this.#held.add(id);
      return true;
    } catch (err) {
      if (!(err instanceof SubscriptionsRefused)) {
        this.#o.logger.warn({ err, devices: ids.length }, "subscribing to devices' topics failed; retrying");
        return false;
      }
      const refused = new Set(err.filters.map((f) => deviceOf(f)?.deviceId));
      for (const id of ids) if (!refused.has(id)) this.#held.add(id);
      this.#o.logger.error(
        { devices: refused.size, filters: err.filters.length, example: err.filters[0] },
        "the broker refused subscriptions to devices' topics (an ACL, or a limit on subscriptions per client?); their traffic does not reach devicelet until it takes them; retrying",
      );
      return false;
    }
  }

  async #unsubscribe(ids: readonly string[]): Promise<boolean> {
    try {
      await this.#o.connection.unsubscribe(ids.flatMap((id) => topics.fromDevice(id)));
      for (const id of ids) this.#held.delete(id);
      return true;
    } catch (err) {
      this.#o.logger.warn(
        { err, devices: ids.length },
        "unsubscribing from devices' topics failed; retrying",
      );
      return false;
    }
  }

  #retryLater(): void {
    if (this.#stopped) return;
    const delay = retryDelay({
      failures: ++this.#failures,
      baseMs: RETRY_BASE_MS,
      maxMs: RETRY_MAX_MS,
      jitter: "equal",
      ...(this.#o.random ? { random: this.#o.random } : {}),
    });
    clearTimeout(this.#retryTimer);
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined;
      void this.#reconcile();
    }, delay);
    this.#retryTimer.unref();
  }
}
