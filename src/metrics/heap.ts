/**
 * Warns before the JavaScript heap runs out. Node.js sizes V8's heap from the process's memory
 * limit: under the chart's 512Mi the heap may hold 259 MiB, and a fleet whose pods and nodes need
 * more does not slow down, it dies of "JavaScript heap out of memory" and restarts into the same
 * fleet. So the heap's use is sampled, and when it stays near the limit devicelet says so, with
 * what to do, while it still runs:
 *
 *   watchHeap({ logger, signal });   // logs the limit once, then warns while the heap is near it
 *
 * Used heap counts garbage not yet collected, but V8 collects harder as it nears the limit: one
 * sample near it can be a collection about to happen, several in a row are what is live.
 */
import { getHeapStatistics } from "node:v8";
import type { Logger } from "pino";
import { sleepOn, systemClock, type Clock } from "../base/clock.ts";

/** Bytes of JavaScript heap in use and the most V8 will hold before it stops the process. */
export interface HeapUse {
  readonly used: number;
  readonly limit: number;
}

/** Near the limit: this share of it in use, on {@link SAMPLES_NEAR} samples in a row. */
export const NEAR_LIMIT = 0.85;
/** Clear again below this share, so a heap that hovers at the line does not warn on every sample. */
const CLEAR_BELOW = 0.75;
const SAMPLES_NEAR = 3;
const SAMPLE_MS = 20_000;
/** While it stays near, the warning is repeated this often. */
const REMIND_MS = 600_000;

const mib = (bytes: number) => Math.round(bytes / 2 ** 20);

export function readHeapUse(): HeapUse {
  const stats = getHeapStatistics();
  return { used: stats.used_heap_size, limit: stats.heap_size_limit };
}

export function watchHeap(o: {
  readonly logger: Logger;
  readonly signal: AbortSignal;
  readonly clock?: Clock;
  readonly read?: () => HeapUse;
  /** The memory the process may use (a container's limit), when it has one; for the first line. */
  readonly memoryLimit?: number | undefined;
}): Promise<void> {
  const clock = o.clock ?? systemClock;
  const read = o.read ?? readHeapUse;
  const first = read();
  const memoryLimit = o.memoryLimit ?? constrainedMemory();
  o.logger.info(
    { heapLimitMiB: mib(first.limit), ...(memoryLimit ? { memoryLimitMiB: mib(memoryLimit) } : {}) },
    memoryLimit
      ? "JavaScript heap limit, sized by Node.js from the process's memory limit"
      : "JavaScript heap limit",
  );
  return (async () => {
    let near = 0;
    let warnedAt: number | undefined;
    for (;;) {
      await sleepOn(clock, SAMPLE_MS, o.signal);
      if (o.signal.aborted) return;
      const use = read();
      const share = use.used / use.limit;
      near = share >= NEAR_LIMIT ? near + 1 : 0;
      if (near >= SAMPLES_NEAR && (warnedAt === undefined || clock.now() - warnedAt >= REMIND_MS)) {
        warnedAt = clock.now();
        o.logger.warn(
          { heapUsedMiB: mib(use.used), heapLimitMiB: mib(use.limit) },
          `the JavaScript heap is ${Math.round(share * 100)} % full and devicelet stops if it fills: ` +
            "raise its memory limit (the chart's resources.limits.memory; the heap gets about half), " +
            "or split the devices between replicas (sharding); docs/scaling.md says how much a fleet needs",
        );
      } else if (warnedAt !== undefined && share < CLEAR_BELOW) {
        warnedAt = undefined;
        o.logger.info(
          { heapUsedMiB: mib(use.used), heapLimitMiB: mib(use.limit) },
          "the JavaScript heap is well below its limit again",
        );
      }
    }
  })();
}

/** The memory limit Node.js sees (a cgroup's), or undefined when there is none to speak of. */
function constrainedMemory(): number | undefined {
  const bytes = process.constrainedMemory();
  // Without a limit Node.js reports a huge number (the cgroup's "max") or 0.
  return bytes > 0 && bytes < 2 ** 50 ? bytes : undefined;
}
