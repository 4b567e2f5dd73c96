/**
 * What a device keeps across restarts of its agent (and, when it has storage, across reboots):
 * the desired (epoch, generation) it applied and the pods of that document, so it re-runs them at
 * start and never applies the same document twice; and its boot id with a reserved sequence
 * number, so messages of one boot keep strictly increasing sequence numbers across agent restarts.
 *
 *   const store = fileStore("/var/lib/devicelet/state.json");   // or memoryStore()
 *   const session = new DeviceSession({ ..., store });
 *
 * The file holds pod specs, Secret-derived env and files included: it is written with mode 0600.
 */
import { mkdir, open, readFile, rename } from "node:fs/promises";
import path from "node:path";
import type { DesiredPod } from "../protocol/types.ts";

export interface PersistedSession {
  readonly bootId: string;
  /** At least as high as any sequence number this boot has used (a reservation, see session). */
  readonly seq: number;
  readonly epoch: string | null;
  readonly appliedGeneration: number;
  /** The pods of the last applied desired document. */
  readonly pods: readonly DesiredPod[];
}

export interface SessionStore {
  load(): Promise<PersistedSession | undefined>;
  /** Durable once resolved; calls are not concurrent (the session serialises them). */
  save(state: PersistedSession): Promise<void>;
}

/** Keeps the state in memory: survives `reboot()` of a session, not the process. */
export function memoryStore(
  initial?: PersistedSession,
): SessionStore & { state: PersistedSession | undefined } {
  const store = {
    state: initial,
    load: () => Promise.resolve(store.state),
    save: (state: PersistedSession) => {
      store.state = state;
      return Promise.resolve();
    },
  };
  return store;
}

/** A JSON file replaced atomically (write and fsync a temporary file, then rename it over the old). */
export function fileStore(file: string): SessionStore {
  return {
    async load() {
      let text: string;
      try {
        text = await readFile(file, "utf8");
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
        throw err;
      }
      const raw = JSON.parse(text) as Partial<PersistedSession> | null;
      if (!raw || typeof raw.bootId !== "string" || typeof raw.seq !== "number") {
        throw new Error(`${file}: not a devicelet agent state file`);
      }
      return {
        bootId: raw.bootId,
        seq: raw.seq,
        epoch: typeof raw.epoch === "string" ? raw.epoch : null,
        appliedGeneration: typeof raw.appliedGeneration === "number" ? raw.appliedGeneration : 0,
        pods: Array.isArray(raw.pods) ? raw.pods : [],
      };
    },
    async save(state) {
      await mkdir(path.dirname(file), { recursive: true });
      const tmp = `${file}.${process.pid}.tmp`;
      const handle = await open(tmp, "w", 0o600);
      try {
        await handle.writeFile(`${JSON.stringify(state)}\n`);
        // Flushed before the rename, so a power cut leaves the old file or the new, never half.
        await handle.sync();
      } finally {
        await handle.close();
      }
      await rename(tmp, file);
    },
  };
}
