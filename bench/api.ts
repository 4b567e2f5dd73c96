/**
 * The benchmarks' own API client: cluster-admin of the harness control plane over the project's
 * {@link KubeTransport} with no client-side rate limit, so bulk creates go as fast as the API
 * server takes them. Requests the server refuses for now (429, 5xx, timeouts) are retried with
 * backoff, bounded, and counted; {@link inPool} runs many requests with a fixed number in flight.
 *
 *   const api = BenchApi.admin();
 *   await inPool(5000, 48, (i) => api.create(`/api/v1/namespaces/ns/pods`, pod(i)));
 *   console.log(api.throttled); // 429s the API server answered
 *   await api.close();
 */
import path from "node:path";
import pino from "pino";
import { loadKubeconfig } from "../src/kube/kubeconfig.ts";
import {
  isAlreadyExists,
  isNotFound,
  isRetryableKubeError,
  isTooManyRequests,
  retryAfterMs,
} from "../src/kube/errors.ts";
import { RequestBudget } from "../src/kube/budget.ts";
import { KubeTransport, type Query, type TransportRequest } from "../src/kube/transport.ts";
import type { WatchEvent } from "../src/kube/types.ts";
import { testenvDir } from "./testenv.ts";

/** Attempts per request before the error is the caller's. */
const MAX_ATTEMPTS = 10;

export class BenchApi {
  readonly #transport: KubeTransport;
  #throttled = 0;
  #retried = 0;

  constructor(kubeconfigPath: string) {
    this.#transport = new KubeTransport({
      kubeconfig: loadKubeconfig({ path: kubeconfigPath }),
      budget: new RequestBudget({ qps: Infinity, burst: 1 }),
      logger: pino({ level: "silent" }),
      userAgent: "devicelet-bench",
      requestTimeoutMs: 60_000,
    });
  }

  /** As the harness's cluster-admin (`testenvDir/kubeconfig`). */
  static admin(): BenchApi {
    return new BenchApi(path.join(testenvDir, "kubeconfig"));
  }

  /** The API server's base URL. */
  get server(): string {
    return this.#transport.server;
  }

  /** 429 answers seen so far (each was retried). */
  get throttled(): number {
    return this.#throttled;
  }

  /** Retries of any kind so far (429, 5xx, timeouts, network errors). */
  get retried(): number {
    return this.#retried;
  }

  /** One request, retried with backoff while the failure is retryable. */
  async request<T>(req: TransportRequest): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.#transport.request<T>(req);
      } catch (err) {
        if (req.signal?.aborted || attempt >= MAX_ATTEMPTS || !isRetryableKubeError(err)) throw err;
        if (isTooManyRequests(err)) this.#throttled++;
        this.#retried++;
        const wait = retryAfterMs(err) ?? Math.min(2_000, 50 * 2 ** attempt);
        await new Promise((r) => setTimeout(r, wait));
      }
    }
  }

  /** POST; an object that already exists (a retry of a create that got through) counts as created. */
  async create(collectionPath: string, body: object): Promise<void> {
    try {
      await this.request({ method: "POST", path: collectionPath, body });
    } catch (err) {
      if (!isAlreadyExists(err)) throw err;
    }
  }

  /**
   * Creates namespace `name` and resolves once its default ServiceAccount exists (pods are
   * admitted only then), or rejects after `timeoutMs`.
   */
  async createNamespace(name: string, timeoutMs = 60_000): Promise<void> {
    await this.create("/api/v1/namespaces", { apiVersion: "v1", kind: "Namespace", metadata: { name } });
    const serviceAccount = `/api/v1/namespaces/${name}/serviceaccounts/default`;
    const deadline = Date.now() + timeoutMs;
    while ((await this.get(serviceAccount)) === undefined) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ServiceAccount default in ${name}`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }

  /** DELETE; one already gone counts as deleted. */
  async delete(objectPath: string, query?: Query): Promise<void> {
    try {
      await this.request({ method: "DELETE", path: objectPath, ...(query ? { query } : {}) });
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
  }

  /** GET; `undefined` on 404. */
  async get<T>(objectPath: string): Promise<T | undefined> {
    try {
      return await this.request<T>({ method: "GET", path: objectPath });
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  watch<T>(collectionPath: string, query: Query, signal: AbortSignal): AsyncGenerator<WatchEvent<T>> {
    return this.#transport.watch<T>({ path: collectionPath, query, signal });
  }

  async close(): Promise<void> {
    await this.#transport.close();
  }
}

/**
 * Runs `task(0)` … `task(count - 1)` with at most `concurrency` in flight, in index order; rejects
 * with the first failure once the tasks in flight have settled (no new ones start after it).
 */
export async function inPool(
  count: number,
  concurrency: number,
  task: (index: number) => Promise<void>,
): Promise<void> {
  let next = 0;
  let failure: { error: unknown } | undefined;
  const worker = async () => {
    while (failure === undefined && next < count) {
      const index = next++;
      try {
        await task(index);
      } catch (error) {
        failure ??= { error };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  if (failure) throw failure.error;
}
