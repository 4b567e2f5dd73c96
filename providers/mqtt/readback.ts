/**
 * Reading back, at start, the retained `desired` documents devicelet published in an earlier life,
 * so a restarted devicelet knows what each device holds (pods with hashes, tombstones, the last
 * generation) and re-publishes nothing unchanged.
 *
 * Retained messages arrive after a SUBSCRIBE (MQTT 3.1.1 §3.3.1.3, MQTT 5 §3.3.1.3) but MQTT has
 * no "end of retained" marker, so after subscribing devicelet publishes a marker on a topic of its
 * own and waits for it to come back: Mosquitto sends a subscription's retained messages before
 * anything published after the SUBACK. Not every broker does: aedes writes the SUBACK first and
 * streams the retained messages from its store afterwards, so the marker can overtake them. A
 * retained document arriving after the marker (the RETAIN flag is set only on messages sent
 * because of a new subscription, MQTT 3.1.1 §3.3.1.3, MQTT 5 §3.3.1.3) still goes to `onLate`.
 * A timeout bounds how long start waits, but not what is read: when it ends first (a slow broker,
 * thousands of devices), the subscription stays and every document arriving later goes to
 * `onLate` until the marker is back (or {@link LATE_WINDOW_MS} passed), so none is lost — a
 * document dropped here would leave its pods running on the device forever.
 * Afterwards the `desired` subscription is dropped: devicelet does not need its own documents
 * echoed back.
 *
 * A shard (`ProviderContext.owns`) reads back through the same wildcard `+/desired`, while the
 * session drops other shards' documents before they reach `take` (subscriptions.ts): one
 * SUBSCRIBE and one marker, complete whatever else the broker holds of a device (its `state` may
 * be gone while its document is not), for a one-time cost of reading every retained document
 * once at start. Per-device `desired` filters would need the owned devices known first — a
 * second round of retained `state` and marker — and miss documents of devices with no `state`.
 *
 *   const rb = new Readback({ connection, logger, timeoutMs: 10_000, onLate: (doc) => adopt(doc) });
 *   conn.onMessage((t, p) => { if (!rb.take(t, p)) handle(t, p); });
 *   const docs = await rb.run(deviceFilters);
 *   await restoreBirths({ deviceIds, allowed, allocator, registry, logger });
 */
import { randomBytes } from "node:crypto";
import type { Logger } from "pino";
import { decodeToDevice } from "../../src/protocol/codec.ts";
import { TOPIC_ROOT } from "../../src/protocol/topics.ts";
import type { DesiredDocument } from "../../src/protocol/types.ts";
import type { BrokerConnection } from "./connection.ts";
import type { DeviceRegistry } from "./devices.ts";
import type { GenerationAllocator } from "./generations.ts";

const DESIRED_FILTER = `${TOPIC_ROOT}/+/desired`;

/** After the timeout, how long late documents are still taken when the marker never returns. */
export const LATE_WINDOW_MS = 10 * 60_000;

export class Readback {
  readonly #connection: BrokerConnection;
  readonly #log: Logger;
  readonly #timeoutMs: number;
  readonly #marker = `${TOPIC_ROOT}/_bridge/sync/${randomBytes(8).toString("hex")}`;
  readonly #onLate: (doc: DesiredDocument) => void;
  readonly #documents = new Map<string, DesiredDocument>();
  /**
   * "reading" until run() returns; "late" while documents may still come after the timeout;
   * "done" once the marker is back (retained documents the broker sends after it are still late).
   */
  #phase: "idle" | "reading" | "late" | "done" | "stopped" = "idle";
  #done: (() => void) | undefined;
  #lateTimer: NodeJS.Timeout | undefined;

  constructor(options: {
    connection: BrokerConnection;
    logger: Logger;
    timeoutMs: number;
    /** A document that arrived after run() resolved (it is not in run()'s result). */
    onLate: (doc: DesiredDocument) => void;
  }) {
    this.#connection = options.connection;
    this.#log = options.logger;
    this.#timeoutMs = options.timeoutMs;
    this.#onLate = options.onLate;
  }

  /**
   * Consumes the messages that belong to the read-back; false for anything else. `retained`: the
   * message's RETAIN flag (set on what the SUBSCRIBE brought, not on echoes of our own publishes).
   */
  take(topic: string, payload: Buffer, retained = false): boolean {
    if (topic === this.#marker) {
      this.#done?.();
      return true;
    }
    if (!topic.endsWith("/desired") || !topic.startsWith(`${TOPIC_ROOT}/`)) return false;
    // After the marker, only a retained document is one the broker sent late; the rest are echoes.
    const late = this.#phase === "late" || (this.#phase === "done" && retained);
    if (this.#phase !== "reading" && !late) return true;
    const deviceId = topic.split("/")[2] ?? "";
    const decoded = decodeToDevice(topic, payload, { deviceId, maxBytes: 64 * 1024 * 1024 });
    if (decoded.ok && decoded.value.kind === "desired") {
      if (this.#phase === "reading") this.#documents.set(deviceId, decoded.value);
      else {
        this.#log.info(
          { device: deviceId, epoch: decoded.value.epoch, generation: decoded.value.generation },
          "adopting a retained desired document that arrived after the read-back",
        );
        this.#onLate(decoded.value);
      }
    } else if (!decoded.ok && decoded.reason !== "empty")
      this.#log.warn(
        { device: deviceId, topic, reason: decoded.reason, detail: decoded.detail },
        "ignoring an unreadable retained desired document",
      );
    return true;
  }

  /**
   * Subscribes to `deviceFilters` and the retained documents, waits for them, and returns the
   * documents by device id. Device messages arriving meanwhile go to the caller's handler as usual.
   */
  async run(deviceFilters: readonly string[]): Promise<Map<string, DesiredDocument>> {
    this.#phase = "reading";
    const sync = { marked: false };
    const inTime = new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, this.#timeoutMs);
      this.#done = () => {
        clearTimeout(timer);
        sync.marked = true;
        resolve();
        if (this.#phase === "late") void this.#finish("the read-back marker returned");
      };
    });
    await this.#connection.subscribe([...deviceFilters, DESIRED_FILTER, this.#marker]);
    await this.#connection.publish(this.#marker, Buffer.from("sync"), { qos: 1, retain: false });
    await inTime;
    this.#log.info({ documents: this.#documents.size }, "read back retained desired documents");
    if (sync.marked) {
      await this.#finish("complete");
      return this.#documents;
    }
    this.#log.warn(
      { timeoutMs: this.#timeoutMs },
      "read-back marker did not return in time; continuing, documents still arriving are adopted as they come",
    );
    this.#phase = "late";
    this.#lateTimer = setTimeout(() => void this.#finish("late window over"), LATE_WINDOW_MS);
    this.#lateTimer.unref();
    return this.#documents;
  }

  /** Stops taking documents (the provider stops). */
  stop(): void {
    clearTimeout(this.#lateTimer);
    this.#phase = "stopped";
  }

  async #finish(why: string): Promise<void> {
    const wasLate = this.#phase === "late";
    clearTimeout(this.#lateTimer);
    if (this.#phase !== "stopped") this.#phase = "done";
    if (wasLate) this.#log.info({ why }, "late read-back finished");
    try {
      await this.#connection.unsubscribe([DESIRED_FILTER, this.#marker]);
    } catch (err) {
      this.#log.warn({ err }, "dropping the read-back subscription failed");
    }
  }
}

const STORE_READ_CONCURRENCY = 16;

/**
 * Devices known from the broker (a document, a `lost` state) but without a birth — they are away —
 * get their last birth from the durable store, so their nodes stay what they were.
 */
export async function restoreBirths(o: {
  deviceIds: readonly string[];
  allowed: (deviceId: string) => boolean;
  allocator: Pick<GenerationAllocator, "record">;
  registry: DeviceRegistry;
  logger: Logger;
}): Promise<void> {
  const missing = o.deviceIds.filter((id) => o.allowed(id) && !o.registry.get(id)?.birth);
  let next = 0;
  const worker = async () => {
    while (next < missing.length) {
      const id = missing[next++] ?? "";
      try {
        const birth = (await o.allocator.record(id))?.device;
        if (birth) o.registry.restore(id, birth);
      } catch (err) {
        o.logger.warn(
          { err, device: id },
          "reading a stored birth failed; the node waits for the device's next birth",
        );
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(STORE_READ_CONCURRENCY, missing.length) }, worker));
  if (missing.length > 0)
    o.logger.info({ devices: missing.length }, "restored births of devices that are away");
}
