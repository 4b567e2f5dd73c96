/**
 * Gives back to the system the JavaScript heap a burst left behind. A burst (a rollout, a fleet
 * coming back, devicelet starting) grows V8's heap for the garbage it makes; once it is over, V8
 * collects the garbage but keeps the pages, so the process holds its burst's size for good: after
 * 5,000 pods started, 51 MiB more RSS than before them, of which a full collection that compacts
 * and releases (V8's "last resort" one) gave back 36 (`npm run bench -- throughput`,
 * docs/performance.md). So devicelet looks at the heap every 5 s, and when it has grown well past
 * its size after the last such collection, has not grown for 20 s (the burst is over) and the event
 * loop is not overloaded, runs one:
 *
 *   const stop = trimHeapAfterBursts({ logger });
 *
 * At most one a minute, and only after growth: a fleet at rest is trimmed only as its heartbeats'
 * garbage grows the heap by a quarter again (once in a 2-minute hold at 1,000 nodes).
 * The collection stops the process while it runs (logged with its time: 40 to 173 ms at 1,000
 * nodes and 10,000 pods, 365 to 641 ms at 5,000 nodes and 50,000), as V8's own full collections
 * do. A burst paced slowly enough for the heap to stop growing for 20 s (50,000 pods created 100 a
 * second) is trimmed while it lasts, still at most once a minute.
 */
import { performance, type EventLoopUtilization } from "node:perf_hooks";
import { getHeapStatistics, setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import type { Logger } from "pino";
import { monotonicClock, type Clock } from "../base/clock.ts";

/** How often the heap is looked at. */
export const TRIM_CHECK_MS = 5_000;
/** The burst is over: the heap has not grown (by more than {@link TRIM_NOISE_BYTES}) for this long. */
export const TRIM_SETTLE_MS = 20_000;
export const TRIM_NOISE_BYTES = 2 ** 20;
/** At most one trim in this long. */
export const TRIM_MIN_INTERVAL_MS = 60_000;
/** Growth since the last trim that is worth one: both this many bytes and this share. */
export const TRIM_GROWTH_BYTES = 16 * 2 ** 20;
export const TRIM_GROWTH_SHARE = 0.25;
/** And the event loop was busy less than this share of the last check's interval (not overloaded). */
export const TRIM_QUIET_UTILIZATION = 0.5;

const mib = (bytes: number) => Math.round((bytes / 2 ** 20) * 10) / 10;

type GcFunction = (options: { type: "major"; execution: "sync"; flavor: "last-resort" }) => void;

/**
 * V8's full collection that compacts the heap and releases its free pages, as it runs before it
 * gives up on an allocation. `gc` is exposed to a new context only (the flag set now does not reach
 * the contexts already made), so the main context sees no new global.
 */
export function lastResortCollection(): () => void {
  setFlagsFromString("--expose-gc");
  const gc = runInNewContext("gc") as GcFunction;
  return () => {
    gc({ type: "major", execution: "sync", flavor: "last-resort" });
  };
}

/** The share of the time since the last call that the event loop was busy. */
function eventLoopBusy(): () => number {
  let last: EventLoopUtilization = performance.eventLoopUtilization();
  return () => {
    const now = performance.eventLoopUtilization();
    const share = performance.eventLoopUtilization(now, last).utilization;
    last = now;
    return share;
  };
}

export function trimHeapAfterBursts(o: {
  readonly logger: Logger;
  readonly clock?: Clock;
  /** Bytes of heap V8 holds (in use and free); tests drive it. */
  readonly heapSize?: () => number;
  /** The event loop's busy share since the last call. */
  readonly busy?: () => number;
  readonly collect?: () => void;
}): () => void {
  const clock = o.clock ?? monotonicClock;
  const heapSize = o.heapSize ?? (() => getHeapStatistics().total_heap_size);
  const busy = o.busy ?? eventLoopBusy();
  let collect = o.collect;
  let baseline = heapSize();
  let peak = baseline;
  let peakAt = clock.now();
  let lastTrim = -Infinity;
  let timer: unknown;
  let stopped = false;
  const check = () => {
    if (stopped) return;
    timer = clock.setTimeout(check, TRIM_CHECK_MS);
    const now = clock.now();
    const size = heapSize();
    const quiet = busy() < TRIM_QUIET_UTILIZATION;
    if (size < baseline) baseline = size;
    if (size > peak + TRIM_NOISE_BYTES) {
      peak = size;
      peakAt = now;
    }
    const grown = size - baseline >= TRIM_GROWTH_BYTES && size >= baseline * (1 + TRIM_GROWTH_SHARE);
    const over = now - peakAt >= TRIM_SETTLE_MS;
    if (!grown || !over || !quiet || now - lastTrim < TRIM_MIN_INTERVAL_MS) return;
    collect ??= lastResortCollection();
    const start = performance.now();
    collect();
    const after = heapSize();
    const ms = Math.round(performance.now() - start);
    lastTrim = now;
    baseline = peak = after;
    peakAt = now;
    o.logger.info(
      { heapBeforeMiB: mib(size), heapAfterMiB: mib(after), ms },
      "the heap grew in a burst that is over: collected and gave back its free pages",
    );
  };
  timer = clock.setTimeout(check, TRIM_CHECK_MS);
  return () => {
    stopped = true;
    clock.clearTimeout(timer);
  };
}
