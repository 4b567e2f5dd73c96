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
 * written (one API write) only when it changed, by the device's publisher after a document
 * carrying the change is retained, so at most once per published document. Each entry names the
 * device-facing hash it belongs to: a stored workload hash is used only for a pod whose retained
 * document carries that same device hash, so a store and a document out of step (a crash between
 * the two writes, a pod too large to send, another process's write) fall back to the device hash,
 * which costs an updatePod, never a skipped one. All keys are read at start in one read.
 *
 *   const hashes = new WorkloadHashes({ store, logger, config: sha256Hex(canonicalJson(mqttConfig)) });
 *   await hashes.load();                                  // at start
 *   hashes.restored(uid, pod.desired.hash)?.workloadHash; // or undefined
 *   await hashes.save("gw-1", [[uid, deviceHash, workloadHash, restartToken]]);
 */
import type { Logger } from "pino";
import type { DurableStore } from "../../src/provider/types.ts";

const PREFIX = "mqtt-workloads.";

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

export class WorkloadHashes {
  readonly #store: Pick<DurableStore, "set" | "entries">;
  readonly #log: Logger;
  /** What the store held at start, by uid. */
  readonly #restored = new Map<string, Stored>();
  /** Per device, the value last written or read (a write is skipped when it would not change it). */
  readonly #saved = new Map<string, string>();
  readonly #config: string;

  constructor(options: {
    store: Pick<DurableStore, "set" | "entries">;
    logger: Logger;
    /** Fingerprint of the configuration the translation depends on; default "" (tests). */
    config?: string;
  }) {
    this.#store = options.store;
    this.#log = options.logger;
    this.#config = options.config ?? "";
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
