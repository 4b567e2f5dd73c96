/**
 * Durable copy of each device's command queue, so commands waiting for an offline device survive a
 * devicelet restart: one store key per device, `mqtt.commands.<deviceId>`, holding the pending
 * commands as JSON ({@link StoredCommand}: the message as sent, with its absolute expiry).
 *
 * Writes are coalesced per device (latest wins; while one is in flight, further changes wait for
 * the next) and retried with backoff until they succeed, so a broken API server delays the copy
 * but never blocks sending. A device whose queue was never stored costs no write while empty; one
 * whose queue empties has its key deleted.
 * Nothing is written before `load()` has read what an earlier process left.
 *
 *   const cs = new CommandStore({ store, logger, snapshot: (id) => queue.pending(id) });
 *   cs.changed("gw-1");                          // after every change of gw-1's queue
 *   const stored = await cs.load();              // at start: Map<deviceId, StoredCommand[]>
 */
import type { Logger } from "pino";
import { retryDelay } from "../../src/base/backoff.ts";
import type { CommandMessage } from "../../src/protocol/types.ts";
import type { DurableStore, PodRef } from "../../src/provider/types.ts";

export interface StoredCommand {
  readonly message: CommandMessage;
  readonly pod?: PodRef;
  /** Epoch milliseconds: the time to live holds across restarts. */
  readonly expiresAt: number;
  readonly received: boolean;
}

const PREFIX = "mqtt.commands.";

const isStoredCommand = (v: unknown): v is StoredCommand => {
  const c = v as Partial<StoredCommand> | null;
  return (
    typeof c === "object" &&
    c !== null &&
    typeof c.message?.commandId === "string" &&
    typeof c.message.deviceId === "string" &&
    typeof c.message.command === "string" &&
    Number.isSafeInteger(c.expiresAt) &&
    typeof c.received === "boolean"
  );
};

interface DeviceWrites {
  running: boolean;
  again: boolean;
  failures: number;
  /** Whether the store holds a non-empty queue for the device. */
  stored: boolean;
}

export class CommandStore {
  readonly #store: DurableStore;
  readonly #log: Logger;
  readonly #snapshot: (deviceId: string) => readonly StoredCommand[];
  readonly #devices = new Map<string, DeviceWrites>();
  /** Devices changed before load(): written after it, so a new queue never hides a stored one. */
  readonly #early = new Set<string>();
  #loaded = false;
  #stopped = false;

  constructor(options: {
    store: DurableStore;
    logger: Logger;
    /** The device's pending commands as they are now. */
    snapshot: (deviceId: string) => readonly StoredCommand[];
  }) {
    this.#store = options.store;
    this.#log = options.logger;
    this.#snapshot = options.snapshot;
  }

  /** Every stored queue, by device id (unreadable entries are logged and skipped). */
  async load(): Promise<Map<string, StoredCommand[]>> {
    const out = new Map<string, StoredCommand[]>();
    for (const [key, text] of await this.#store.entries(PREFIX)) {
      const deviceId = key.slice(PREFIX.length);
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = undefined;
      }
      const list = Array.isArray(parsed) ? parsed.filter(isStoredCommand) : [];
      if (!Array.isArray(parsed) || list.length !== parsed.length)
        this.#log.warn({ device: deviceId }, "skipping unreadable stored commands");
      const commands = list.filter((c) => c.message.deviceId === deviceId);
      this.#writes(deviceId).stored = commands.length > 0 || text !== "[]";
      if (commands.length > 0) out.set(deviceId, commands);
    }
    this.#loaded = true;
    for (const deviceId of this.#early) this.changed(deviceId);
    this.#early.clear();
    return out;
  }

  /** The device's queue changed: store it (coalesced, retried until it succeeds). */
  changed(deviceId: string): void {
    if (!this.#loaded) {
      this.#early.add(deviceId);
      return;
    }
    const w = this.#writes(deviceId);
    if (w.running) {
      w.again = true;
      return;
    }
    w.running = true;
    void this.#drain(deviceId, w);
  }

  stop(): void {
    this.#stopped = true;
  }

  #writes(deviceId: string): DeviceWrites {
    let w = this.#devices.get(deviceId);
    if (!w) {
      w = { running: false, again: false, failures: 0, stored: false };
      this.#devices.set(deviceId, w);
    }
    return w;
  }

  async #drain(deviceId: string, w: DeviceWrites): Promise<void> {
    do {
      w.again = false;
      const commands = this.#snapshot(deviceId);
      if (commands.length === 0 && !w.stored) continue;
      try {
        // An emptied queue is deleted, not stored empty: a device's key exists while it waits.
        if (commands.length === 0) await this.#store.delete(PREFIX + deviceId);
        else await this.#store.set(PREFIX + deviceId, JSON.stringify(commands));
        w.stored = commands.length > 0;
        w.failures = 0;
      } catch (err) {
        w.failures++;
        w.again = true;
        const delay = retryDelay({ failures: w.failures, baseMs: 1_000, maxMs: 30_000, jitter: "equal" });
        this.#log.warn(
          { err, device: deviceId, failures: w.failures, retryInMs: delay },
          "storing the device's command queue failed; retrying",
        );
        await new Promise((resolve) => setTimeout(resolve, delay).unref());
      }
    } while (w.again && !this.#stopped);
    w.running = false;
    // Nothing stored and nothing to write: nothing of the device is kept (it may be gone for good).
    if (!w.stored && !w.again) this.#devices.delete(deviceId);
  }
}
