/**
 * What a device keeps across restarts of its agent (and, when it has storage, across reboots):
 * the desired (epoch, generation) it applied and the pods of that document, so it re-runs them at
 * start and never applies the same document twice; the rejection of a newer document, if any
 * (epoch, generation, reason and message, not the document), so it is not evaluated again
 * (docs/protocol.md § 4); and its boot id with a reserved sequence
 * number, so messages of one boot keep strictly increasing sequence numbers across agent restarts.
 *
 *   const store = fileStore("/var/lib/devicelet/state.json", { logger });   // or memoryStore()
 *   const session = new DeviceSession({ ..., store });
 *
 * The file holds pod specs, Secret-derived env and files included: it is written with mode 0600,
 * in a folder created with mode 0700 (an existing folder that others can enter is logged once).
 *
 * Guarantees of {@link fileStore}: `save` resolves only once the new state is on disk (temporary
 * file written and fsynced, renamed over the old, folder fsynced) and rejects otherwise, leaving the
 * previous file whole. `load` never fails on a damaged file: one that cannot be read as agent
 * state (truncated, invalid JSON, wrong shape) is renamed aside to `<file>.corrupt-<timestamp>`,
 * logged at error, and the agent starts with no state rather than crash-looping on it.
 */
import { mkdir, open, readFile, rename, stat } from "node:fs/promises";
import path from "node:path";
import type { Logger } from "pino";
import { desiredContentHash, encodeMessage } from "../protocol/codec.ts";
import type { DesiredPod } from "../protocol/types.ts";
import type { KeptRejection } from "./applier.ts";

export interface PersistedSession {
  readonly bootId: string;
  /** At least as high as any sequence number this boot has used (a reservation, see session). */
  readonly seq: number;
  readonly epoch: string | null;
  readonly appliedGeneration: number;
  /** The pods of the last applied desired document. */
  readonly pods: readonly DesiredPod[];
  /** The newest document seen, when the device rejected it (never `PersistFailed`). */
  readonly rejection?: KeptRejection;
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

export interface FileStoreOptions {
  readonly logger: Logger;
  /** For the `.corrupt-<timestamp>` suffix; default the system clock. */
  readonly now?: () => number;
}

/** A JSON file replaced atomically (write and fsync a temporary file, then rename it over the old). */
export function fileStore(file: string, options: FileStoreOptions): SessionStore {
  const now = options.now ?? Date.now;
  let folderChecked = false;
  return {
    async load() {
      let text: string;
      try {
        text = await readFile(file, "utf8");
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
        throw err;
      }
      const state = parseState(text);
      if (state) return state;
      // A stamp that sorts and has no colons, e.g. 2026-03-01T12-00-00.000Z.
      const aside = `${file}.corrupt-${new Date(now()).toISOString().replaceAll(":", "-")}`;
      await rename(file, aside);
      options.logger.error(
        { file, movedTo: aside, bytes: text.length },
        "agent state file is corrupt: moved it aside, starting with no state",
      );
      return undefined;
    },
    async save(state) {
      const dir = path.dirname(file);
      await mkdir(dir, { recursive: true, mode: 0o700 });
      if (!folderChecked) {
        folderChecked = true;
        const mode = (await stat(dir)).mode & 0o777;
        if ((mode & 0o077) !== 0)
          options.logger.warn(
            { dir, mode: mode.toString(8) },
            "the agent state file's folder is open to other users; it should be mode 0700",
          );
      }
      const tmp = `${file}.${process.pid}.tmp`;
      const handle = await open(tmp, "w", 0o600);
      try {
        // A temporary file left by a crash keeps its mode through "w": set it again.
        await handle.chmod(0o600);
        await handle.writeFile(`${JSON.stringify(state)}\n`);
        // Flushed before the rename, so a power cut leaves the old file or the new, never half.
        await handle.sync();
      } finally {
        await handle.close();
      }
      await rename(tmp, file);
      // The rename itself is durable once the folder is flushed.
      const folder = await open(dir, "r");
      try {
        await folder.sync();
      } finally {
        await folder.close();
      }
    },
  };
}

/** The state in `text`, or undefined when it is not a whole agent state file. */
function parseState(text: string): PersistedSession | undefined {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof raw !== "object" || raw === null) return undefined;
  const r = raw as Partial<Record<keyof PersistedSession, unknown>>;
  if (typeof r.bootId !== "string" || typeof r.seq !== "number" || !Number.isSafeInteger(r.seq)) {
    return undefined;
  }
  if (r.epoch !== null && r.epoch !== undefined && typeof r.epoch !== "string") return undefined;
  if (r.appliedGeneration !== undefined && typeof r.appliedGeneration !== "number") return undefined;
  if (r.pods !== undefined && !Array.isArray(r.pods)) return undefined;
  const pods = (r.pods ?? []) as DesiredPod[];
  if (pods.length > 0 && !validPods(pods)) return undefined;
  if (r.rejection !== undefined && !validRejection(r.rejection)) return undefined;
  return {
    bootId: r.bootId,
    seq: r.seq,
    epoch: typeof r.epoch === "string" ? r.epoch : null,
    appliedGeneration: r.appliedGeneration ?? 0,
    pods,
    ...(r.rejection === undefined ? {} : { rejection: r.rejection }),
  };
}

function validRejection(raw: unknown): raw is KeptRejection {
  if (typeof raw !== "object" || raw === null) return false;
  const r = raw as Partial<Record<keyof KeptRejection, unknown>>;
  return (
    typeof r.epoch === "string" &&
    typeof r.generation === "number" &&
    Number.isSafeInteger(r.generation) &&
    r.generation > 0 &&
    typeof r.reason === "string" &&
    typeof r.message === "string"
  );
}

/** Whether `pods` pass the desired document's schema (they came from one): the codec checks. */
function validPods(pods: DesiredPod[]): boolean {
  try {
    encodeMessage({
      protocol: 1,
      kind: "desired",
      deviceId: "state-file",
      epoch: "state-file",
      generation: 1,
      issuedAt: new Date(0).toISOString(),
      pods,
      tombstones: [],
      contentHash: desiredContentHash(pods, []),
    });
    return true;
  } catch {
    return false;
  }
}
