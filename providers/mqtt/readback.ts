/**
 * Reading back, at start, the retained `desired` documents devicelet published in an earlier life,
 * so a restarted devicelet knows what each device holds (pods with hashes, tombstones, the last
 * generation) and re-publishes nothing unchanged.
 *
 * Retained messages arrive after a SUBSCRIBE (MQTT 3.1.1 §3.3.1.3, MQTT 5 §3.3.1.3) but MQTT has
 * no "end of retained" marker, so after subscribing devicelet publishes a marker on a topic of its
 * own and waits for it to come back: brokers send a subscription's retained messages before
 * anything published after the SUBACK (Mosquitto, EMQX, HiveMQ and aedes all queue them while
 * handling the SUBSCRIBE). A timeout bounds the wait for brokers that do not. Afterwards the
 * `desired` subscription is dropped: devicelet does not need its own documents echoed back.
 *
 *   const rb = new Readback({ connection, logger, timeoutMs: 10_000 });
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

export class Readback {
  readonly #connection: BrokerConnection;
  readonly #log: Logger;
  readonly #timeoutMs: number;
  readonly #marker = `${TOPIC_ROOT}/_bridge/sync/${randomBytes(8).toString("hex")}`;
  readonly #documents = new Map<string, DesiredDocument>();
  #active = false;
  #done: (() => void) | undefined;

  constructor(options: { connection: BrokerConnection; logger: Logger; timeoutMs: number }) {
    this.#connection = options.connection;
    this.#log = options.logger;
    this.#timeoutMs = options.timeoutMs;
  }

  /** Consumes the messages that belong to the read-back; false for anything else. */
  take(topic: string, payload: Buffer): boolean {
    if (topic === this.#marker) {
      this.#done?.();
      return true;
    }
    if (!topic.endsWith("/desired") || !topic.startsWith(`${TOPIC_ROOT}/`)) return false;
    if (!this.#active) return true; // an echo after the read-back: ignore
    const deviceId = topic.split("/")[2] ?? "";
    const decoded = decodeToDevice(topic, payload, { deviceId, maxBytes: 64 * 1024 * 1024 });
    if (decoded.ok && decoded.value.kind === "desired") this.#documents.set(deviceId, decoded.value);
    else if (!decoded.ok && decoded.reason !== "empty")
      this.#log.warn(
        { topic, reason: decoded.reason, detail: decoded.detail },
        "ignoring an unreadable retained desired document",
      );
    return true;
  }

  /**
   * Subscribes to `deviceFilters` and the retained documents, waits for them, and returns the
   * documents by device id. Device messages arriving meanwhile go to the caller's handler as usual.
   */
  async run(deviceFilters: readonly string[]): Promise<Map<string, DesiredDocument>> {
    this.#active = true;
    const marked = new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), this.#timeoutMs);
      this.#done = () => {
        clearTimeout(timer);
        resolve(true);
      };
    });
    await this.#connection.subscribe([...deviceFilters, DESIRED_FILTER, this.#marker]);
    await this.#connection.publish(this.#marker, Buffer.from("sync"), { qos: 1, retain: false });
    if (!(await marked))
      this.#log.warn({ timeoutMs: this.#timeoutMs }, "read-back marker did not return in time; continuing");
    this.#active = false;
    await this.#connection.unsubscribe([DESIRED_FILTER, this.#marker]);
    this.#log.info({ documents: this.#documents.size }, "read back retained desired documents");
    return this.#documents;
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
          { err, deviceId: id },
          "reading a stored birth failed; the node waits for the device's next birth",
        );
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(STORE_READ_CONCURRENCY, missing.length) }, worker));
  if (missing.length > 0)
    o.logger.info({ devices: missing.length }, "restored births of devices that are away");
}
