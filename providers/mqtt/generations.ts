/**
 * What the MQTT provider must never forget about a device, kept in the engine's durable store (one
 * key per device, `mqtt.<deviceId>`, JSON {@link DeviceRecord}): the epoch of its generation series,
 * the generation reserved so far, and its last birth (so its node survives a devicelet restart
 * while the device is away).
 *
 * Generations are reserved in blocks BEFORE any document above the reserved mark is published
 * (DESIGN.md decision 2): a restarted process continues above everything the previous one may
 * have used, and in the steady state a publish costs no store write. The first allocation of a
 * process for a device always reserves, since the previous process may have used its whole block.
 *
 *   const gens = new GenerationAllocator({ store, blockSize: 1000, onWrite });
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
  record: DeviceRecord | undefined;
  /** Highest generation handed out (or possibly handed out by an earlier process). */
  last: number;
  /** Serialises reads and writes of this device's record. */
  chain: Promise<unknown>;
}

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
   * The next generation for `deviceId`, above `floor` (the highest generation seen in the broker
   * for the stored epoch) and above anything reserved before. Creates the epoch when the store has
   * none. Calls for one device are serialised; rejects when the store write fails (nothing is
   * handed out then).
   */
  next(deviceId: string, floor: number): Promise<{ epoch: string; generation: number }> {
    return this.#locked(deviceId, async (entry) => {
      const generation = Math.max(entry.last, floor) + 1;
      let record = entry.record;
      if (!record || generation > record.reservedThrough) {
        record = {
          ...record,
          epoch: record?.epoch ?? randomBytes(8).toString("hex"),
          reservedThrough: generation + this.#blockSize - 1,
        };
        await this.#write(deviceId, record);
        entry.record = record;
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
      const record: DeviceRecord = {
        epoch: entry.record?.epoch ?? randomBytes(8).toString("hex"),
        // A new device's first block is reserved with its birth: its first pod costs no write.
        reservedThrough: entry.record?.reservedThrough ?? entry.last + this.#blockSize,
        device,
      };
      await this.#write(deviceId, record);
      entry.record = record;
    });
  }

  async #write(deviceId: string, record: DeviceRecord): Promise<void> {
    await this.#store.set(storeKey(deviceId), JSON.stringify(record));
    this.#onWrite();
  }

  #locked<T>(deviceId: string, fn: (entry: Entry) => Promise<T>): Promise<T> {
    let entry = this.#entries.get(deviceId);
    if (!entry) {
      entry = { loaded: false, record: undefined, last: 0, chain: Promise.resolve() };
      this.#entries.set(deviceId, entry);
    }
    const e = entry;
    const run = e.chain.then(async () => {
      // Read once; a failed read is retried by the next call (never taken for "no record").
      if (!e.loaded) {
        e.record = parseRecord(await this.#store.get(storeKey(deviceId)));
        e.last = e.record?.reservedThrough ?? 0;
        e.loaded = true;
      }
      return fn(e);
    });
    e.chain = run.catch(() => undefined);
    return run;
  }
}
