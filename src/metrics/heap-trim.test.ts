import { getHeapStatistics } from "node:v8";
import pino from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { FakeClock } from "../base/fake-clock.ts";
import {
  lastResortCollection,
  TRIM_CHECK_MS,
  TRIM_MIN_INTERVAL_MS,
  TRIM_SETTLE_MS,
  trimHeapAfterBursts,
} from "./heap-trim.ts";

const MiB = 2 ** 20;

interface Line {
  readonly msg: string;
  readonly heapBeforeMiB?: number;
  readonly heapAfterMiB?: number;
}

const stops: (() => void)[] = [];
afterEach(() => {
  for (const stop of stops.splice(0)) stop();
});

/** A trimmer on a fake clock over a heap of `size` MiB the test sets; a collection shrinks it to `live`. */
function trimmer(startMiB: number) {
  const clock = new FakeClock();
  const lines: Line[] = [];
  const logger = pino(
    { level: "info" },
    { write: (line: string) => void lines.push(JSON.parse(line) as Line) },
  );
  const heap = { size: startMiB, live: startMiB, busy: 0.1 };
  let collections = 0;
  stops.push(
    trimHeapAfterBursts({
      logger,
      clock,
      heapSize: () => heap.size * MiB,
      busy: () => heap.busy,
      collect: () => {
        collections++;
        heap.size = heap.live;
      },
    }),
  );
  return { clock, lines, heap, collections: () => collections };
}

describe("trimHeapAfterBursts", () => {
  it("collects once the heap has grown in a burst and stopped growing, and says what it gave back", async () => {
    const t = trimmer(40);
    // The burst: the heap grows at every look.
    for (const size of [60, 80, 100]) {
      t.heap.size = size;
      await t.clock.advanceAsync(TRIM_CHECK_MS);
    }
    t.heap.live = 55;
    expect(t.collections()).toBe(0);
    // Over: no growth since the last look, but not yet for TRIM_SETTLE_MS.
    await t.clock.advanceAsync(TRIM_SETTLE_MS - TRIM_CHECK_MS);
    expect(t.collections()).toBe(0);
    await t.clock.advanceAsync(TRIM_CHECK_MS);
    expect(t.collections()).toBe(1);
    expect(t.lines).toMatchObject([{ heapBeforeMiB: 100, heapAfterMiB: 55 }]);
    expect(t.lines[0]?.msg).toMatch(/gave back its free pages/);
    // At rest afterwards: nothing more to do.
    await t.clock.advanceAsync(10 * TRIM_MIN_INTERVAL_MS);
    expect(t.collections()).toBe(1);
  });

  it("leaves a heap alone that grew by little, or while the event loop is overloaded", async () => {
    const t = trimmer(100);
    t.heap.size = 115; // +15 MiB: under both the bytes and the share
    await t.clock.advanceAsync(TRIM_SETTLE_MS + 2 * TRIM_CHECK_MS);
    expect(t.collections()).toBe(0);
    t.heap.size = 120; // +20 MiB: over the bytes, but 20 % is under the share
    await t.clock.advanceAsync(TRIM_SETTLE_MS + 2 * TRIM_CHECK_MS);
    expect(t.collections()).toBe(0);

    t.heap.size = 200;
    t.heap.busy = 0.9;
    await t.clock.advanceAsync(TRIM_SETTLE_MS + 2 * TRIM_CHECK_MS);
    expect(t.collections()).toBe(0);
    t.heap.busy = 0.2;
    await t.clock.advanceAsync(TRIM_CHECK_MS);
    expect(t.collections()).toBe(1);
  });

  it("measures growth from the heap after its last trim, and trims at most once a minute", async () => {
    const t = trimmer(20);
    t.heap.size = 60;
    t.heap.live = 50; // the fleet grew: most of it is live
    await t.clock.advanceAsync(TRIM_SETTLE_MS + TRIM_CHECK_MS);
    expect(t.collections()).toBe(1);
    // 50 → 64: 14 MiB and 28 % over what the last trim left; not enough.
    t.heap.size = 64;
    await t.clock.advanceAsync(3 * TRIM_MIN_INTERVAL_MS);
    expect(t.collections()).toBe(1);
    // A second burst: trimmed once it is over.
    t.heap.size = 90;
    t.heap.live = 52;
    await t.clock.advanceAsync(TRIM_SETTLE_MS + TRIM_CHECK_MS);
    expect(t.collections()).toBe(2);
    const secondTrim = t.clock.now();
    expect(t.lines.map((l) => [l.heapBeforeMiB, l.heapAfterMiB])).toEqual([
      [60, 50],
      [90, 52],
    ]);
    // A third right after it: over within the minute, so it waits for the minute to be up.
    t.heap.size = 200;
    await t.clock.advanceAsync(TRIM_SETTLE_MS + TRIM_CHECK_MS);
    expect(t.collections()).toBe(2);
    while (t.collections() === 2) await t.clock.advanceAsync(TRIM_CHECK_MS);
    expect(t.clock.now() - secondTrim).toBeGreaterThanOrEqual(TRIM_MIN_INTERVAL_MS);
    expect(t.clock.now() - secondTrim).toBeLessThan(TRIM_MIN_INTERVAL_MS + 2 * TRIM_CHECK_MS);
  });

  it("stops looking when stopped", async () => {
    const t = trimmer(40);
    stops.splice(0).forEach((stop) => {
      stop();
    });
    t.heap.size = 200;
    await t.clock.advanceAsync(10 * TRIM_MIN_INTERVAL_MS);
    expect(t.collections()).toBe(0);
  });
});

describe("lastResortCollection", () => {
  it("gives the heap's free pages back, where V8's ordinary full collection keeps them", () => {
    const collect = lastResortCollection();
    // Garbage: about 100 MiB of small objects the heap grows for and then holds as free pages.
    let junk: unknown[] = [];
    for (let i = 0; i < 1_500_000; i++) {
      junk.push({ i, s: `x${i}`, a: [i] });
      if (junk.length >= 200_000) junk = [];
    }
    junk = [];
    const before = { heap: getHeapStatistics().total_physical_size, rss: process.memoryUsage.rss() };
    collect();
    const after = { heap: getHeapStatistics().total_physical_size, rss: process.memoryUsage.rss() };
    expect(junk).toEqual([]);
    // An ordinary full collection frees the garbage but keeps its pages (tried: the heap shrank
    // by 94 MiB, the process's RSS by 16); this one hands them back (205 MiB of RSS).
    expect(before.heap - after.heap).toBeGreaterThan(48 * MiB);
    expect(before.rss - after.rss).toBeGreaterThan(48 * MiB);
  });
});
