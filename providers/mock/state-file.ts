/**
 * Durable state of the mock provider: one JSON file standing in for what real devices remember,
 * so a devicelet killed with SIGKILL and restarted finds its pods still running. Writes go to a
 * temporary file that is then renamed over the old one (atomic on POSIX), debounced, one at a time.
 * The file holds workloads, Secret-derived env and files included, so it is created mode 0600
 * (owner only) and never with wider permissions.
 */
import { readFile, rename, rm, writeFile } from "node:fs/promises";
import type { Logger } from "pino";
import { invalidInput, transient } from "../../src/provider/errors.ts";
import type { AppSpec, Workload } from "../../src/provider/types.ts";
import type { Clock } from "../../src/base/clock.ts";

/** One pod as persisted: the latest desired workload and what the device runs. */
export interface PersistedPod {
  readonly workload: Workload;
  /** What the device runs (absent while queued): the applied hash and each app's runtime. */
  readonly running?: {
    readonly hash: string;
    readonly apps: readonly {
      readonly spec: AppSpec;
      readonly restartCount: number;
      readonly startedAt?: number;
    }[];
  };
  readonly tombstone?: { readonly gracePeriodSeconds: number };
}

export interface PersistedState {
  readonly version: 1;
  readonly pods: readonly PersistedPod[];
  readonly createsByUid: Readonly<Record<string, number>>;
  readonly counters: {
    /** Every create so far; missing in files written before it was kept. */
    readonly creates?: number;
    readonly applied: number;
    readonly updates: number;
    readonly deletes: number;
  };
}

export interface StateFileOptions {
  readonly logger: Logger;
  readonly clock: Clock;
  /** Produces the state to write; called at write time, so it is always the latest. */
  readonly snapshot: () => PersistedState;
  readonly debounceMs?: number;
}

export class StateFile {
  readonly path: string;
  #opts: StateFileOptions;
  #timer: unknown;
  #chain: Promise<void> = Promise.resolve();

  constructor(path: string, options: StateFileOptions) {
    this.path = path;
    this.#opts = options;
  }

  /**
   * Reads the file; undefined when it does not exist yet.
   * @throws ProviderError InvalidInput when it exists but is not a state file (never silently
   *   started empty: that would re-create every pod).
   */
  async load(): Promise<PersistedState | undefined> {
    let text: string;
    try {
      text = await readFile(this.path, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw transient(`mock: cannot read state file ${this.path}`, { cause: err });
    }
    let state: unknown;
    try {
      state = JSON.parse(text);
    } catch (err) {
      throw invalidInput(`mock: state file ${this.path} is not JSON`, { cause: err });
    }
    const s = state as Partial<PersistedState> | null;
    if (s?.version !== 1 || !Array.isArray(s.pods) || typeof s.createsByUid !== "object") {
      throw invalidInput(`mock: state file ${this.path} has an unknown format`);
    }
    return { ...s, counters: { applied: 0, updates: 0, deletes: 0, ...s.counters } } as PersistedState;
  }

  /** Writes within `debounceMs` (default 50); many calls in that window make one write. */
  schedule(): void {
    if (this.#timer !== undefined) return;
    this.#timer = this.#opts.clock.setTimeout(() => {
      this.#timer = undefined;
      this.flush().catch(() => undefined); // flush logs its own failures
    }, this.#opts.debounceMs ?? 50);
  }

  /**
   * Writes now (cancelling a scheduled write) and resolves once the data is on disk.
   * @throws ProviderError Transient when the write fails.
   */
  flush(): Promise<void> {
    if (this.#timer !== undefined) {
      this.#opts.clock.clearTimeout(this.#timer);
      this.#timer = undefined;
    }
    const write = this.#chain.then(() => this.#write());
    this.#chain = write.catch(() => undefined);
    return write;
  }

  async #write(): Promise<void> {
    const tmp = `${this.path}.${process.pid}.tmp`;
    try {
      // A fresh file (`wx`): a leftover temporary file could have wider permissions than 0600.
      await rm(tmp, { force: true });
      await writeFile(tmp, JSON.stringify(this.#opts.snapshot()), { mode: 0o600, flag: "wx" });
      await rename(tmp, this.path);
    } catch (err) {
      this.#opts.logger.error({ err, path: this.path }, "mock: state file write failed");
      throw transient(`mock: cannot write state file ${this.path}`, { cause: err });
    }
  }
}
