import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import pino from "pino";
import { afterEach, describe, expect, it, vi } from "vitest";
import { FakeClock } from "../base/fake-clock.ts";
import { DeviceletMetrics } from "./devicelet-metrics.ts";
import { onFullCollection, readHeapUse, watchHeap, type HeapUse } from "./heap.ts";

interface Line {
  readonly level: number;
  readonly msg: string;
  readonly heapLiveMiB?: number;
  readonly heapLimitMiB?: number;
  readonly memoryLimitMiB?: number;
}
const WARN = 40;
const INFO = 30;
const MiB = 2 ** 20;

const stops: (() => void)[] = [];
afterEach(() => {
  for (const stop of stops.splice(0)) stop();
});

/** A heap watch on a fake clock, told of full collections by the test, with MiB of a 259 MiB limit live. */
function watched(o: { memoryLimit?: number } = {}) {
  const clock = new FakeClock();
  const lines: Line[] = [];
  const logger = pino(
    { level: "info" },
    { write: (line: string) => void lines.push(JSON.parse(line) as Line) },
  );
  let used = 10 * MiB;
  let collected: (() => void) | undefined;
  let stopped = false;
  const stop = watchHeap({
    logger,
    clock,
    read: (): HeapUse => ({ used, limit: 259 * MiB }),
    collections: (listener) => {
      collected = listener;
      return () => (stopped = true);
    },
    memoryLimit: o.memoryLimit,
  });
  stops.push(stop);
  return {
    clock,
    lines,
    warnings: () => lines.filter((l) => l.level === WARN),
    /** A full collection after which `mib` MiB are live. */
    collect: (mib: number) => {
      used = mib * MiB;
      collected?.();
    },
    stop,
    stopped: () => stopped,
  };
}

describe("watchHeap", () => {
  it("says the heap limit, and the memory limit it came from, once at start", () => {
    const w = watched({ memoryLimit: 512 * MiB });
    expect(w.lines).toMatchObject([{ level: INFO, heapLimitMiB: 259, memoryLimitMiB: 512 }]);
    expect(w.lines[0]?.msg).toMatch(/memory limit/);
  });

  it("warns when a full collection leaves the heap near its limit, with what to do", () => {
    const w = watched();
    w.collect(150); // 58 %
    w.collect(200); // 77 %
    expect(w.warnings()).toEqual([]);
    w.collect(240); // 93 %
    expect(w.warnings()).toMatchObject([{ heapLiveMiB: 240, heapLimitMiB: 259 }]);
    expect(w.warnings()[0]?.msg).toMatch(/93 % of the JavaScript heap is live/);
    expect(w.warnings()[0]?.msg).toMatch(/resources\.limits\.memory.*sharding.*docs\/scaling\.md/);
  });

  it("repeats the warning every ten minutes while near, and says when it is clear again", async () => {
    const w = watched();
    w.collect(240);
    w.collect(245);
    expect(w.warnings()).toHaveLength(1);
    await w.clock.advanceAsync(599_000);
    w.collect(245);
    expect(w.warnings()).toHaveLength(1);
    await w.clock.advanceAsync(1_000);
    w.collect(245);
    expect(w.warnings()).toHaveLength(2);

    w.collect(190); // 73 %: below the warning's line, not yet clear of it
    expect(w.lines.at(-1)?.level).toBe(WARN);
    w.collect(150);
    expect(w.lines.at(-1)?.level).toBe(INFO);
    expect(w.lines.at(-1)?.msg).toMatch(/below its limit again/);
    w.collect(240); // near again: warned at once, not ten minutes after the last
    expect(w.warnings()).toHaveLength(3);
  });

  it("stops listening when stopped", () => {
    const w = watched();
    w.stop();
    expect(w.stopped()).toBe(true);
  });
});

describe("onFullCollection", () => {
  it("hears of a real full collection", async () => {
    setFlagsFromString("--expose-gc");
    const gc = runInNewContext("gc") as () => void;
    let heard = 0;
    stops.push(onFullCollection(() => heard++));
    gc();
    await vi.waitFor(() => expect(heard).toBeGreaterThan(0), { timeout: 5_000 });
  });
});

describe("devicelet_nodejs_heap_size_limit_bytes", () => {
  it("is the heap limit V8 runs this process with", async () => {
    const metrics = new DeviceletMetrics();
    const text = await metrics.registry.metrics();
    const value = Number(/^devicelet_nodejs_heap_size_limit_bytes (\d+)$/m.exec(text)?.[1]);
    expect(value).toBe(readHeapUse().limit);
    expect(value).toBeGreaterThan(100 * MiB);
  });
});
