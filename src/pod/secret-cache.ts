/**
 * {@link SecretCache}: the Secrets that managed pods refer to, each read with a GET and trusted for
 * a bounded time, as the kubelet's TTL-based secret manager does (`ResourceChangeDetectionStrategy:
 * Cache`, its default). devicelet never lists or watches Secrets: the RBAC it needs is `get`.
 *
 * Guarantees:
 * - a Secret held is read again at the latest `ttlMs` after its last read (sooner when a pod asks
 *   for it once that time has passed); one that did not exist is read again after
 *   `min(ttlMs, 5 s)`, so a pod waiting for a Secret that appears later starts soon after;
 * - when a read shows a Secret that appeared, changed (resourceVersion) or went, `onChange` gets its
 *   key, for the pods that refer to it: an edit reaches its pods within the TTL;
 * - a read that fails keeps what was held and is retried after `min(ttlMs, 5 s)`;
 * - only Secrets some pod refers to (`referenced`) are held and re-read; `release` drops one.
 *
 *   const secrets = new SecretCache({ kube, logger, clock, ttlMs: 60_000, referenced, onChange });
 *   void secrets.run(signal);                            // the refresh loop
 *   const s = await secrets.get("ns", "creds");           // undefined: it does not exist
 *   secrets.release("secret/ns/creds");                  // no pod refers to it any more
 */
import type { Logger } from "pino";
import type { Clock } from "../base/clock.ts";
import type { KubeClient, Secret } from "../kube/index.ts";

export interface SecretCacheOptions {
  readonly kube: Pick<KubeClient, "getSecret">;
  readonly logger: Logger;
  readonly clock: Clock;
  /** How long a read is trusted; the kubelet's default is one minute. */
  readonly ttlMs: number;
  /** Whether some pod refers to the Secret with this key (`secret/<namespace>/<name>`) now. */
  readonly referenced: (key: string) => boolean;
  /** Called with the key of a Secret a read shows appeared, changed or went. */
  readonly onChange: (key: string) => void;
}

/** How soon a Secret found missing (or a failed read) is read again, at most. */
const ABSENT_RECHECK_MS = 5_000;

interface Read {
  readonly secret: Secret | undefined;
  /** When it must be read again (clock time). */
  readonly dueAt: number;
}

const versionOf = (s: Secret | undefined) => (s ? (s.metadata?.resourceVersion ?? "") : undefined);

/** Read through a call, so a check after an await is not narrowed away by the loop's condition. */
const stopped = (signal: AbortSignal) => signal.aborted;

export const secretKey = (namespace: string, name: string) => `secret/${namespace}/${name}`;

export class SecretCache {
  readonly #o: SecretCacheOptions;
  readonly #reads = new Map<string, Read>();
  readonly #inflight = new Map<string, Promise<Secret | undefined>>();
  /** The refresh loop's pending wake-up, so an earlier due time can bring it forward. */
  #timer: { readonly at: number; readonly wake: () => void } | undefined;
  #gets = 0;

  constructor(options: SecretCacheOptions) {
    this.#o = options;
  }

  /** GETs made so far and Secrets held. */
  stats() {
    let held = 0;
    for (const read of this.#reads.values()) if (read.secret) held++;
    return { gets: this.#gets, held };
  }

  /**
   * The Secret as last read, reading it first when not held or due. Resolves `undefined` when it
   * does not exist; rejects when the GET fails and nothing is held.
   */
  async get(namespace: string, name: string): Promise<Secret | undefined> {
    const key = secretKey(namespace, name);
    const read = this.#reads.get(key);
    if (read && this.#o.clock.now() < read.dueAt) return read.secret;
    return this.#read(key, namespace, name);
  }

  /** Forgets a Secret no pod refers to any more. */
  release(key: string): void {
    this.#reads.delete(key);
  }

  /** Re-reads every Secret held when it is due, until `signal` aborts. Never rejects. */
  async run(signal: AbortSignal): Promise<void> {
    const { clock } = this.#o;
    while (!signal.aborted) {
      let earliest = clock.now() + this.#o.ttlMs;
      for (const read of this.#reads.values()) earliest = Math.min(earliest, read.dueAt);
      await new Promise<void>((resolve) => {
        const wake = () => {
          clock.clearTimeout(handle);
          signal.removeEventListener("abort", wake);
          this.#timer = undefined;
          resolve();
        };
        const handle = clock.setTimeout(wake, Math.max(0, earliest - clock.now()));
        this.#timer = { at: earliest, wake };
        signal.addEventListener("abort", wake, { once: true });
      });
      const now = clock.now();
      const due = [...this.#reads].filter(([, read]) => read.dueAt <= now).map(([key]) => key);
      // One at a time: the request budget paces them, and a burst of refreshes never piles up.
      for (const key of due) {
        if (stopped(signal)) return;
        const [, namespace = "", name = ""] = key.split("/");
        await this.#read(key, namespace, name).catch(() => undefined);
      }
    }
  }

  /** One GET per key at a time; stores the result while a pod still refers to it. */
  #read(key: string, namespace: string, name: string): Promise<Secret | undefined> {
    const pending = this.#inflight.get(key);
    if (pending) return pending;
    const read = this.#fetch(key, namespace, name).finally(() => this.#inflight.delete(key));
    this.#inflight.set(key, read);
    return read;
  }

  async #fetch(key: string, namespace: string, name: string): Promise<Secret | undefined> {
    const { clock, ttlMs } = this.#o;
    const before = this.#reads.get(key);
    this.#gets++;
    let secret: Secret | undefined;
    try {
      secret = await this.#o.kube.getSecret(namespace, name);
    } catch (err) {
      if (!before) throw err;
      this.#o.logger.debug({ err, namespace, name }, "cannot re-read a Secret; keeping the last read");
      this.#store(key, { secret: before.secret, dueAt: clock.now() + Math.min(ttlMs, ABSENT_RECHECK_MS) });
      return before.secret;
    }
    if (secret) delete secret.metadata?.managedFields;
    const recheck = secret ? ttlMs : Math.min(ttlMs, ABSENT_RECHECK_MS);
    // Kept only while a pod still refers to it (it may have been released during the GET).
    if (!this.#o.referenced(key)) return secret;
    this.#store(key, { secret, dueAt: clock.now() + recheck });
    if (before && versionOf(before.secret) !== versionOf(secret)) this.#o.onChange(key);
    return secret;
  }

  #store(key: string, read: Read): void {
    this.#reads.set(key, read);
    if (this.#timer && read.dueAt < this.#timer.at) this.#timer.wake();
  }
}
