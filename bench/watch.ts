/**
 * Lean watchers for benchmarks at tens of thousands of pods: each follows a collection (a paged
 * list, then a watch that resumes from the last resourceVersion and re-lists on 410) and keeps
 * only what the benchmark reports, never the objects themselves.
 *
 *   const pods = new PodRunningTimes("p-", 50_000);
 *   const nodes = new NodeReadiness();
 *   const stop = new AbortController();
 *   await follow({ api, path: "/api/v1/namespaces/ns/pods", signal: stop.signal, see: pods.see });
 *   await follow({ api, path: "/api/v1/nodes", labelSelector: "a=b", signal: stop.signal, see: nodes.see });
 *   pods.running; nodes.readyCount; nodes.wentNotReady(sinceMs);
 *   stop.abort();
 */
import { isGone } from "../src/kube/errors.ts";
import type { Node, Pod } from "../src/kube/types.ts";
import type { BenchApi } from "./api.ts";

type Seen<T> = (type: "ADDED" | "MODIFIED" | "DELETED", object: T) => void;

interface ListPage<T> {
  metadata?: { resourceVersion?: string; continue?: string };
  items?: T[];
}

/**
 * Lists `path` (in pages of 500) and resolves once every listed object went to `see` as ADDED;
 * then keeps watching in the background until `signal` aborts, calling `see` for each change.
 */
export async function follow<T extends { metadata?: { resourceVersion?: string } }>(o: {
  api: BenchApi;
  path: string;
  labelSelector?: string;
  signal: AbortSignal;
  see: Seen<T>;
}): Promise<void> {
  const selector = o.labelSelector === undefined ? {} : { labelSelector: o.labelSelector };
  const list = async (): Promise<string> => {
    let next: string | undefined;
    let version = "";
    do {
      const page = await o.api.request<ListPage<T>>({
        method: "GET",
        path: o.path,
        query: { ...selector, limit: 500, ...(next ? { continue: next } : {}) },
        signal: o.signal,
      });
      for (const item of page.items ?? []) o.see("ADDED", item);
      version ||= page.metadata?.resourceVersion ?? "";
      next = page.metadata?.continue || undefined;
    } while (next);
    return version;
  };
  let version = await list();
  const stopped = () => o.signal.aborted;
  const watch = async () => {
    while (!stopped()) {
      try {
        const query = {
          ...selector,
          resourceVersion: version,
          allowWatchBookmarks: true,
          timeoutSeconds: 300,
        };
        for await (const event of o.api.watch<T>(o.path, query, o.signal)) {
          version = event.object.metadata?.resourceVersion ?? version;
          if (event.type !== "BOOKMARK") o.see(event.type, event.object);
        }
      } catch (err) {
        if (stopped()) return;
        // Objects changed while the watch was away are seen again (as ADDED) by the new list.
        if (isGone(err)) version = await list().catch(() => version);
        else await new Promise((r) => setTimeout(r, 1_000));
      }
    }
  };
  void watch();
}

const isRunningAndReady = (pod: Pod) =>
  pod.status?.phase === "Running" &&
  (pod.status.conditions ?? []).some((c) => c.type === "Ready" && c.status === "True");

/**
 * When each of `count` pods named `<prefix><index>` was first seen Running with Ready=True, as
 * `performance.now()`; two numbers per pod, whatever the pods carry.
 */
export class PodRunningTimes {
  readonly createdAt: Float64Array;
  readonly runningAt: Float64Array;
  readonly #prefix: string;
  #running = 0;

  constructor(prefix: string, count: number) {
    this.#prefix = prefix;
    this.createdAt = new Float64Array(count).fill(Number.NaN);
    this.runningAt = new Float64Array(count).fill(Number.NaN);
  }

  /** Pods seen Running and Ready at least once. */
  get running(): number {
    return this.#running;
  }

  readonly see: Seen<Pod> = (type, pod) => {
    const name = pod.metadata?.name ?? "";
    if (type === "DELETED" || !name.startsWith(this.#prefix)) return;
    const index = Number(name.slice(this.#prefix.length));
    if (!(index >= 0 && index < this.runningAt.length) || !Number.isNaN(this.runningAt[index] ?? 0)) return;
    if (!isRunningAndReady(pod)) return;
    this.runningAt[index] = performance.now();
    this.#running++;
  };

  /** From the create's answer to first seen Running, per pod that has both, in ms. */
  latencies(): number[] {
    const out: number[] = [];
    for (let i = 0; i < this.runningAt.length; i++) {
      const d = (this.runningAt[i] ?? Number.NaN) - (this.createdAt[i] ?? Number.NaN);
      if (!Number.isNaN(d)) out.push(d);
    }
    return out;
  }
}

/** A node's Ready condition leaving True. */
export interface NotReadyTransition {
  readonly node: string;
  /** Wall-clock ms when the watcher saw it. */
  readonly at: number;
  /** What Ready became: `False`, `Unknown`, or `missing`. */
  readonly status: string;
}

/**
 * Whether each followed node is Ready now, and every transition of Ready away from True since
 * the watcher started (the first 1,000 kept in full, all counted).
 */
export class NodeReadiness {
  readonly #ready = new Map<string, boolean>();
  readonly #transitions: NotReadyTransition[] = [];
  #transitionCount = 0;
  #readyCount = 0;

  get readyCount(): number {
    return this.#readyCount;
  }

  /** Names of the nodes followed (Ready or not), sorted. */
  names(): string[] {
    return [...this.#ready.keys()].sort();
  }

  readonly see: Seen<Node> = (type, node) => {
    const name = node.metadata?.name ?? "";
    const was = this.#ready.get(name);
    if (type === "DELETED") {
      if (was) this.#readyCount--;
      this.#ready.delete(name);
      return;
    }
    const status = node.status?.conditions?.find((c) => c.type === "Ready")?.status ?? "missing";
    const now = status === "True";
    this.#ready.set(name, now);
    if (now === was) return;
    if (now) this.#readyCount++;
    else if (was) {
      this.#readyCount--;
      this.#transitionCount++;
      if (this.#transitions.length < 1_000) this.#transitions.push({ node: name, at: Date.now(), status });
    }
  };

  /** Transitions away from Ready=True seen at or after `sinceMs` (wall clock). */
  wentNotReady(sinceMs: number): { count: number; nodes: number; first: NotReadyTransition[] } {
    const kept = this.#transitions.filter((t) => t.at >= sinceMs);
    // Past the kept ones, only the total is known: count them all as after `sinceMs` (worst case).
    const unkept = this.#transitionCount - this.#transitions.length;
    return {
      count: kept.length + unkept,
      nodes: new Set(kept.map((t) => t.node)).size,
      first: kept.slice(0, 10),
    };
  }
}
