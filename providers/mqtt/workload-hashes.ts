/**
 * WorkloadHashes: the engine's workload hash of each pod, kept in the durable store so that
 * `listPods` after a restart reports the hash the provider was last given (provider contract,
 * ProviderPod.hash) and the engine does not call updatePod for every pod again.
 *
 * Why the store and not the retained desired document, where the pods themselves come back from
 * (readback.ts): the document is the device's, and its schema is closed — a device validating
 * with it rejects a document carrying a field it does not know (docs/protocol.md §§ 1, 2), so a
 * new per-pod field would make every deployed device refuse every document. The store already
 * holds what the provider must not forget about a device (generations.ts), and start-up already
 * reads it back next to the documents (restoreBirths).
 *
 * One key per device (`mqtt-workloads.<deviceId>`), JSON `{ config, pods: { uid: [deviceHash,
 * workloadHash] } }` (a third element: the restart-request annotation's value that workload had,
 * restart.ts), where `config` is a fingerprint of the provider configuration that wrote it. The
 * device-facing document depends on more than the workload: which devices are trusted with
 * Secrets, the broker's TLS, the pod fields supported, the document ceiling. Entries written under
 * another configuration are not used, so after a configuration change the engine gives every pod
 * again and each is translated under the new rules (a device no longer trusted loses its Secrets).
 * A device's record is written (one API write, skipped when unchanged) a while after a document of
 * it is retained — `later`, at most one write per device per {@link RECORD_DELAY_MS}, never on the
 * way of a pod start — and at stop (`flush`). It is a cache, not the workload: the workload is held
 * by the broker's retained document before createPod resolves. Each entry names the device-facing
 * hash it belongs to: a stored workload hash is used only for a pod whose retained document carries
 * that same device hash, so a store and a document out of step (a crash before the record was
 * written, a pod too large to send, another process's write, a record computed while a newer
 * document was on its way) fall back to the device hash, which costs an updatePod, never a skipped
 * one. A pod carrying a restart-request value has its record written before its call resolves
 * (`writeNow`, workloads.ts), so a value changed while devicelet is down is told against the last
 * one seen (restart.ts). What a process killed within the delay loses: those pods are given again
 * once (nothing is published: the device has that content), and a pod that had no value yet and
 * gets one while devicelet is down has that value taken for its first, not for a request.
 * All keys are read at start in one read.
 *
 *   const hashes = new WorkloadHashes({ store, logger, config: sha256Hex(canonicalJson(mqttConfig)) });
 *   await hashes.load();                                  // at start
 *   hashes.restored(uid, pod.desired.hash)?.workloadHash; // or undefined
 *   await hashes.save("gw-1", [[uid, deviceHash, workloadHash, restartToken]]);
 *   hashes.later("gw-1", () => entriesOfGw1);              // written within RECORD_DELAY_MS
 *   await hashes.writeNow("gw-1");                         // this one now (a restart-request value)
 *   await hashes.flush();                                  // at stop: every pending record now
 *   await hashes.forget("gw-1");                           // decommissioned: its record deleted
 */
import type { Logger } from "pino";
import type { DurableStore } from "../../src/provider/types.ts";

const PREFIX = "mqtt-workloads.";

/**
 * How long a device's record waits after a document of it was retained. A burst gives a device a
 * pod every second or two; within this its documents share one write. Longer would widen what a
 * killed process loses (see above) for fewer writes.
 */
export const RECORD_DELAY_MS = 10_000;

/** [uid, device-facing hash, engine's workload hash, its restart-request value if any]. */
export type HashEntry = readonly [
  uid: string,
  deviceHash: string,
  workloadHash: string,
  restartToken?: string,
];

/** What an earlier process stored for a pod. */
export interface RestoredWorkload {
  readonly workloadHash: string;
  readonly restartToken: string | undefined;
}

type Stored = readonly [deviceHash: string, workloadHash: string, restartToken?: string];

/** A device's entries as they are when its record is written; undefined writes nothing. */
type Entries = () => Iterable<HashEntry> | undefined;

export class WorkloadHashes {
  readonly #store: Pick<DurableStore, "set" | "entries" | "delete">;
  readonly #log: Logger;
  /** What the store held at start, by uid. */
  readonly #restored = new Map<string, Stored>();
  /** Per device, the value last written or read (a write is skipped when it would not change it). */
  readonly #saved = new Map<string, string>();
  readonly #config: string;
  readonly #delayMs: number;
  /** Devices whose record waits to be written: what it will hold, computed when written. */
  readonly #pending = new Map<string, { entries: Entries; timer: NodeJS.Timeout }>();
  /** Each device's write in flight, resolving with its error if it failed. */
  readonly #writing = new Map<string, Promise<Error | undefined>>();

  constructor(options: {
    store: Pick<DurableStore, "set" | "entries" | "delete">;
    logger: Logger;
    /** Fingerprint of the configuration the translation depends on; default "" (tests). */
    config?: string;
    /** Default {@link RECORD_DELAY_MS}. */
    delayMs?: number;
  }) {
    this.#store = options.store;
    this.#log = options.logger;
    this.#config = options.config ?? "";
    this.#delayMs = options.delayMs ?? RECORD_DELAY_MS;
  }

  /**
   * Reads every device's hashes (one read of the store). A failed read is logged, not thrown: pods
   * are then listed with their device hashes and the engine updates each once.
   */
  async load(): Promise<void> {
    try {
      let otherConfig = 0;
      for (const [key, text] of await this.#store.entries(PREFIX)) {
        this.#saved.set(key.slice(PREFIX.length), text);
        const { config, pods } = parse(text);
        if (config !== this.#config) {
          otherConfig++;
          continue;
        }
        for (const [uid, stored] of Object.entries(pods)) this.#restored.set(uid, stored);
      }
      if (otherConfig > 0)
        this.#log.info(
          { devices: otherConfig },
          "the mqtt provider's configuration changed since the last run: every pod of these devices is translated and given again",
        );
    } catch (err) {
      this.#log.warn({ err }, "reading stored workload hashes failed; the engine re-applies each pod once");
    }
  }

  /** What was stored for the pod, when it was stored for this device-facing hash. */
  restored(uid: string, deviceHash: string): RestoredWorkload | undefined {
    const stored = this.#restored.get(uid);
    if (stored?.[0] !== deviceHash) return undefined;
    return { workloadHash: stored[1], restartToken: stored[2] };
  }

  /**
   * Writes the device's record within the delay, with the entries `entries` gives then (undefined:
   * nothing to write, e.g. the device was forgotten). A later call before the write replaces
   * `entries` and keeps the time. A failed write is logged and tried again after the delay.
   */
  later(deviceId: string, entries: Entries): void {
    const pending = this.#pending.get(deviceId);
    if (pending) {
      pending.entries = entries;
      return;
    }
    const timer = setTimeout(() => void this.#write(deviceId), this.#delayMs);
    timer.unref();
    this.#pending.set(deviceId, { entries, timer });
  }

  /**
   * Writes the device's pending record now, after its write in flight if any; resolves at once when
   * nothing waits.
   * @throws when the store does not take the write (the record waits for its delay again).
   */
  async writeNow(deviceId: string): Promise<void> {
    const failed = await this.#write(deviceId);
    if (failed) throw failed;
    await this.#writing.get(deviceId);
  }

  /**
   * Drops the device's record, in the store and here, after its write in flight if any (the device
   * was decommissioned). A write that waited for its delay is not made.
   */
  async forget(deviceId: string): Promise<void> {
    const pending = this.#pending.get(deviceId);
    if (pending) clearTimeout(pending.timer);
    this.#pending.delete(deviceId);
    await this.#writing.get(deviceId);
    await this.#store.delete(PREFIX + deviceId);
    this.#saved.delete(deviceId);
  }

  /** Writes every pending record now (stop). Never rejects: a failed write is logged. */
  async flush(): Promise<void> {
    const pending = [...this.#pending.keys()].map((id) => this.#write(id, false));
    await Promise.all([...pending, ...this.#writing.values()]);
  }

  /**
   * Writes the device's pending record, after its write in flight if any (so the last one wins).
   * Resolves with the error of a failed write (logged, and with `retry` tried again later).
   */
  async #write(deviceId: string, retry = true): Promise<Error | undefined> {
    const pending = this.#pending.get(deviceId);
    if (!pending) return undefined;
    clearTimeout(pending.timer);
    this.#pending.delete(deviceId);
    const before = this.#writing.get(deviceId);
    const writing = (async () => {
      await before;
      const entries = pending.entries();
      if (!entries) return undefined;
      try {
        await this.save(deviceId, entries);
        return undefined;
      } catch (err) {
        this.#log.warn({ err, device: deviceId }, "storing a device's workload hashes failed");
        if (retry && !this.#pending.has(deviceId)) this.later(deviceId, pending.entries);
        return err instanceof Error ? err : new Error(String(err));
      }
    })();
    this.#writing.set(deviceId, writing);
    const failed = await writing;
    if (this.#writing.get(deviceId) === writing) this.#writing.delete(deviceId);
    return failed;
  }

  /**
   * Stores the device's entries (replacing what was stored for it) unless unchanged.
   * @throws when the store does not take the write.
   */
  async save(deviceId: string, entries: Iterable<HashEntry>): Promise<void> {
    const value: Record<string, Stored> = {};
    for (const [uid, deviceHash, workloadHash, token] of [...entries].sort((a, b) =>
      a[0].localeCompare(b[0]),
    ))
      value[uid] = token === undefined ? [deviceHash, workloadHash] : [deviceHash, workloadHash, token];
    const text = JSON.stringify({ config: this.#config, pods: value });
    if (this.#saved.get(deviceId) === text) return;
    await this.#store.set(PREFIX + deviceId, text);
    this.#saved.set(deviceId, text);
  }
}

/** Unreadable text reads as nothing stored: the engine re-applies those pods once. */
const parse = (text: string): { config: string | undefined; pods: Record<string, Stored> } => {
  const pods: Record<string, Stored> = {};
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { config: undefined, pods };
  }
  if (typeof value !== "object" || value === null) return { config: undefined, pods };
  const { config, pods: stored } = value as { config?: unknown; pods?: unknown };
  if (typeof stored !== "object" || stored === null) return { config: undefined, pods };
  for (const [uid, item] of Object.entries(stored as Record<string, unknown>)) {
    if (!Array.isArray(item) || typeof item[0] !== "string" || typeof item[1] !== "string") continue;
    pods[uid] = typeof item[2] === "string" ? [item[0], item[1], item[2]] : [item[0], item[1]];
  }
  return { config: typeof config === "string" ? config : undefined, pods };
};
