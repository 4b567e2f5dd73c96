/**
 * Warns before the JavaScript heap runs out. Node.js sizes V8's heap from the process's memory
 * limit: under the chart's 512Mi the heap may hold 259 MiB, and a fleet whose pods and nodes need
 * more does not slow down, it dies of "JavaScript heap out of memory" and restarts into the same
 * fleet. So devicelet looks at the heap after each full collection, when what is in use is what
 * is live, and says what to do while it still runs:
 *
 *   const stop = watchHeap({ logger });   // logs the limit once, then warns while near it
 *
 * Sampling on a timer does not do: near the limit the full collections come back to back and
 * stall the process, which at 5,000 nodes went from 88 % of its heap to dead within a minute
 * (`BENCH_MEMORY_LIMIT=512Mi`, docs/performance.md).
 */
import { constants, PerformanceObserver } from "node:perf_hooks";
import { getHeapStatistics } from "node:v8";
import type { Logger } from "pino";
import { systemClock, type Clock } from "../base/clock.ts";

/** Bytes of JavaScript heap in use and the most V8 will hold before it stops the process. */
export interface HeapUse {
  readonly used: number;
  readonly limit: number;
}

/** Near the limit: this share of it still live after a full collection. */
export const NEAR_LIMIT = 0.8;
/** Clear again below this share, so a heap that hovers at the line does not warn on every collection. */
const CLEAR_BELOW = 0.7;
/** While it stays near, the warning is repeated this often. */
const REMIND_MS = 600_000;

const mib = (bytes: number) => Math.round(bytes / 2 ** 20);

export function readHeapUse(): HeapUse {
  const stats = getHeapStatistics();
  return { used: stats.used_heap_size, limit: stats.heap_size_limit };
}

/** Calls `listener` after each full (mark-compact) collection; returns how to stop. */
export function onFullCollection(listener: () => void): () => void {
  const observer = new PerformanceObserver((list) => {
    // Node.js types a gc entry's `detail` only on its own class.
    const full = list
      .getEntries()
      .some(
        (e) => (e as { detail?: { kind?: number } }).detail?.kind === constants.NODE_PERFORMANCE_GC_MAJOR,
      );
    if (full) listener();
  });
  observer.observe({ entryTypes: ["gc"] });
  return () => observer.disconnect();
}

export function watchHeap(o: {
  readonly logger: Logger;
  readonly clock?: Clock;
  readonly read?: () => HeapUse;
  /** Where full collections are heard of; tests drive it. */
  readonly collections?: (listener: () => void) => () => void;
  /** The memory the process may use (a container's limit), when it has one; for the first line. */
  readonly memoryLimit?: number | undefined;
}): () => void {
  const clock = o.clock ?? systemClock;
  const read = o.read ?? readHeapUse;
  const memoryLimit = o.memoryLimit ?? constrainedMemory();
  o.logger.info(
    { heapLimitMiB: mib(read().limit), ...(memoryLimit ? { memoryLimitMiB: mib(memoryLimit) } : {}) },
    memoryLimit
      ? "JavaScript heap limit, sized by Node.js from the process's memory limit"
      : "JavaScript heap limit",
  );
  let warnedAt: number | undefined;
  return (o.collections ?? onFullCollection)(() => {
    const use = read();
    const share = use.used / use.limit;
    const fields = { heapLiveMiB: mib(use.used), heapLimitMiB: mib(use.limit) };
    if (share >= NEAR_LIMIT && (warnedAt === undefined || clock.now() - warnedAt >= REMIND_MS)) {
      warnedAt = clock.now();
      o.logger.warn(
        fields,
        `${Math.round(share * 100)} % of the JavaScript heap is live after a full collection, and ` +
          "devicelet stops if the heap fills: raise its memory limit (the chart's resources.limits.memory; " +
          "the heap gets about half), or split the devices between replicas (sharding); docs/scaling.md " +
          "says how much a fleet needs",
      );
    } else if (warnedAt !== undefined && share < CLEAR_BELOW) {
      warnedAt = undefined;
      o.logger.info(fields, "the JavaScript heap is well below its limit again");
    }
  });
}

/** The memory limit Node.js sees (a cgroup's), or undefined when there is none to speak of. */
function constrainedMemory(): number | undefined {
  const bytes = process.constrainedMemory();
  // Without a limit Node.js reports a huge number (the cgroup's "max") or 0.
  return bytes > 0 && bytes < 2 ** 50 ? bytes : undefined;
}
