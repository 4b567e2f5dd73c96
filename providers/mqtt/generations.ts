/**
 * What the MQTT provider must never forget about a device, kept in the engine's durable store (one
 * key per device, `mqtt.<deviceId>`, JSON {@link DeviceRecord}): the epoch of its generation series,
 * the generation reserved so far, and its last birth (so its node survives a devicelet restart
 * while the device is away).
 *
 * Generations are reserved in blocks BEFORE any document above the reserved mark is published
 * (docs/architecture.md, decision 2): a restarted process continues above everything the previous one may
 * have used, and in the steady state a publish costs no store write. The first allocation of a
 * process for a device always reserves, since the previous process may have used its whole block.
 *
 * Two processes may share the store (a second replica, an old process not yet gone). They never
 * hand out the same (epoch, generation):
 * - every write of a record is a compare-and-swap (`DurableStore.update`): a reservation starts
 *   above whatever is stored, so a block is only ever handed to one process, and a birth written
 *   by one process never lowers another's reservation;
 * - a process only hands out generations from blocks it reserved itself;
 * - generations are floored by what the device reports (`observe`): the next one is always above
 *   any generation the device has seen in the same epoch, whoever published it.
 *
 *   const gens = new GenerationAllocator({ store, blockSize: 1000, onWrite });
 *   gens.observe("gw-1", report.epoch, report.observedGeneration);
 *   const { epoch, generation } = await gens.next("gw-1", 0);
 */
import { randomBytes } from "node:crypto";
import type { PresenceMessage } from "../../src/protocol/types.ts";
import type { DurableStore } from "../../src/provider/types.ts";

/** The birth's `device` section as announced. */
export type BirthDevice = NonNullable<PresenceMessage["device"]>;

export interface DeviceRecord {
  readonly epoch: string;
  /** Every generation up to this one may have been published; new ones start above it. */
  readonly reservedThrough: number;
  readonly device?: BirthDevice;
}

interface Entry {
  loaded: boolean;
  /** The record as last read or written by this process. */
  record: DeviceRecord | undefined;
  /** Highest generation handed out (or possibly handed out by an earlier process). */
  last: number;
  /** Generations in (last, limit] were reserved by this process and are its own to hand out. */
  limit: number;
  /** Highest generation the device reported having seen, per epoch (a few epochs at most). */
  readonly seen: Map<string, number>;
  /** Serialises reads and writes of this device's record. */
  chain: Promise<unknown>;
}

/** Epochs whose reported generations are remembered per device. */
const SEEN_EPOCHS = 4;

export const storeKey = (deviceId: string) => `mqtt.${deviceId}`;

const parseRecord = (text: string | undefined): DeviceRecord | undefined => {
  if (text === undefined) return undefined;
  try {
    const v = JSON.parse(text) as Partial<DeviceRecord>;
    if (typeof v.epoch === "string" && Number.isSafeInteger(v.reservedThrough)) return v as DeviceRecord;
  } catch {
    // A record we cannot read is treated as lost: a new epoch starts a new series.
  }
  return undefined;
};

export class GenerationAllocator {
  readonly #store: DurableStore;
  readonly #blockSize: number;
  readonly #onWrite: () => void;
  readonly #entries = new Map<string, Entry>();

  constructor(options: { store: DurableStore; blockSize: number; onWrite?: () => void }) {
    this.#store = options.store;
    this.#blockSize = options.blockSize;
    this.#onWrite = options.onWrite ?? (() => undefined);
  }

  /** The stored record (read once, then cached); undefined when the store has none. */
  record(deviceId: string): Promise<DeviceRecord | undefined> {
    return this.#locked(deviceId, (entry) => Promise.resolve(entry.record));
  }

  /**
   * A generation the device says it has seen in `epoch` (a report's observed or applied
   * generation, an ack): every later generation of that epoch goes above it. Synchronous; never
   * reads the store.
   */
  observe(deviceId: string, epoch: string | null, generation: number): void {
    if (epoch === null || !Number.isSafeInteger(generation) || generation <= 0) return;
    const entry = this.#entry(deviceId);
    if ((entry.seen.get(epoch) ?? 0) >= generation) return;
    entry.seen.delete(epoch);
    entry.seen.set(epoch, generation);
    if (entry.seen.size > SEEN_EPOCHS) entry.seen.delete(entry.seen.keys().next().value ?? epoch);
  }

  /**
   * The next generation for `deviceId`, above `floor` (the highest generation seen in the broker
   * for the stored epoch), above what the device reported in that epoch, and above anything
   * reserved before by any process. Creates the epoch when the store has none. Calls for one
   * device are serialised; rejects when the store write fails (nothing is handed out then).
   */
  next(deviceId: string, floor: number): Promise<{ epoch: string; generation: number }> {
    return this.#locked(deviceId, async (entry) => {
      const seen = entry.record ? (entry.seen.get(entry.record.epoch) ?? 0) : 0;
      let generation = Math.max(entry.last, floor, seen) + 1;
      let record = entry.record;
      if (!record || generation > entry.limit) {
        const wanted = generation;
        const freshEpoch = randomBytes(8).toString("hex");
        record = await this.#update(deviceId, (stored) => {
          const epoch = stored?.epoch ?? entry.record?.epoch ?? freshEpoch;
          // Above every block anyone reserved, and above what the device saw in this epoch.
          generation = Math.max(wanted, (stored?.reservedThrough ?? 0) + 1, (entry.seen.get(epoch) ?? 0) + 1);
          return { ...stored, epoch, reservedThrough: generation + this.#blockSize - 1 };
        });
        entry.limit = record.reservedThrough;
      }
      entry.last = generation;
      return { epoch: record.epoch, generation };
    });
  }

  /** The epoch the next generation will carry, when one exists already. */
  async epoch(deviceId: string): Promise<string | undefined> {
    return (await this.record(deviceId))?.epoch;
  }

  /**
   * Stores the birth's device section when it differs from the stored one (one write per change);
   * the first write for a device also creates its epoch and reserves its first block.
   */
  saveDevice(deviceId: string, device: BirthDevice): Promise<void> {
    return this.#locked(deviceId, async (entry) => {
      if (entry.record && JSON.stringify(entry.record.device) === JSON.stringify(device)) return;
      const freshEpoch = randomBytes(8).toString("hex");
      const before = entry.record?.epoch;
      const seen = { created: false };
      const record = await this.#update(deviceId, (stored) => {
        seen.created = stored === undefined;
        // A new device's first block is reserved with its birth: its first pod costs no write.
        return stored
          ? { ...stored, device }
          : { epoch: freshEpoch, reservedThrough: entry.last + this.#blockSize, device };
      });
      if (seen.created) entry.limit = record.reservedThrough;
      else if (record.epoch !== before) entry.limit = entry.last; // another's series: reserve anew
    });
  }

  /**
   * Drops the device's record (a decommissioned device): the stored value is emptied, so a device
   * born again later starts a new epoch — no (epoch, generation) is ever reused.
   */
  forget(deviceId: string): Promise<void> {
    return this.#locked(deviceId, async () => {
      await this.#store.delete(storeKey(deviceId));
      this.#onWrite();
      this.#entries.delete(deviceId);
    });
  }

  /** Compare-and-swap of the stored record; `change` sees the stored one (undefined if unreadable). */
  async #update(
    deviceId: string,
    change: (stored: DeviceRecord | undefined) => DeviceRecord,
  ): Promise<DeviceRecord> {
    let written: DeviceRecord | undefined;
    await this.#store.update(storeKey(deviceId), (text) => {
      written = change(parseRecord(text));
      return JSON.stringify(written);
    });
    if (!written) throw new Error(`storing the record of ${deviceId} wrote nothing`);
    this.#onWrite();
    const entry = this.#entry(deviceId);
    entry.record = written;
    return written;
  }

  #entry(deviceId: string): Entry {
    let entry = this.#entries.get(deviceId);
    if (!entry) {
      entry = {
        loaded: false,
        record: undefined,
        last: 0,
        limit: 0,
        seen: new Map(),
        chain: Promise.resolve(),
      };
      this.#entries.set(deviceId, entry);
    }
    return entry;
  }

  #locked<T>(deviceId: string, fn: (entry: Entry) => Promise<T>): Promise<T> {
    const e = this.#entry(deviceId);
    const run = e.chain.then(async () => {
      // Read once; a failed read is retried by the next call (never taken for "no record").
      if (!e.loaded) {
        e.record = parseRecord(await this.#store.get(storeKey(deviceId)));
        e.last = e.record?.reservedThrough ?? 0;
        e.limit = e.last;
        e.loaded = true;
      }
      return fn(e);
    });
    e.chain = run.catch(() => undefined);
    return run;
  }
}
