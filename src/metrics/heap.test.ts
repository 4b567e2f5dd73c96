import pino from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { FakeClock } from "../base/fake-clock.ts";
import { DeviceletMetrics } from "./devicelet-metrics.ts";
import { readHeapUse, watchHeap, type HeapUse } from "./heap.ts";

interface Line {
  readonly level: number;
  readonly msg: string;
  readonly heapUsedMiB?: number;
  readonly heapLimitMiB?: number;
  readonly memoryLimitMiB?: number;
}
const WARN = 40;

const MiB = 2 ** 20;
const aborts: AbortController[] = [];
afterEach(() => {
  for (const a of aborts.splice(0)) a.abort();
});

/** A heap watch on a fake clock whose heap use the test sets, MiB of a 259 MiB limit. */
function watched(o: { memoryLimit?: number } = {}) {
  const clock = new FakeClock();
  const lines: Line[] = [];
  const logger = pino(
    { level: "info" },
    { write: (line: string) => void lines.push(JSON.parse(line) as Line) },
  );
  let used = 10 * MiB;
  const controller = new AbortController();
  aborts.push(controller);
  const done = watchHeap({
    logger,
    signal: controller.signal,
    clock,
    read: (): HeapUse => ({ used, limit: 259 * MiB }),
    memoryLimit: o.memoryLimit,
  });
  return {
    clock,
    lines,
    warnings: () => lines.filter((l) => l.level === WARN),
    use: (mib: number) => (used = mib * MiB),
    /** One sample: the watch reads the heap every 20 s. */
    sample: () => clock.advanceAsync(20_000),
    stop: async () => {
      controller.abort();
      await done;
    },
  };
}

describe("watchHeap", () => {
  it("says the heap limit, and the memory limit it came from, once at start", () => {
    const w = watched({ memoryLimit: 512 * MiB });
    expect(w.lines).toMatchObject([{ heapLimitMiB: 259, memoryLimitMiB: 512 }]);
    expect(w.lines[0]?.msg).toMatch(/memory limit/);
  });

  it("warns once the heap stays near its limit for three samples, with what to do", async () => {
    const w = watched();
    w.use(240); // 93 %
    await w.sample();
    await w.sample();
    expect(w.warnings()).toEqual([]);
    await w.sample();
    expect(w.warnings()).toMatchObject([{ heapUsedMiB: 240, heapLimitMiB: 259 }]);
    expect(w.warnings()[0]?.msg).toMatch(/93 % full.*resources\.limits\.memory.*sharding.*docs\/scaling\.md/);
    await w.stop();
  });

  it("does not warn for a heap that touches the line between collections", async () => {
    const w = watched();
    for (let i = 0; i < 12; i++) {
      w.use(i % 3 === 2 ? 100 : 230); // near twice, then collected
      await w.sample();
    }
    expect(w.warnings()).toEqual([]);
  });

  it("repeats the warning every ten minutes while near, and says when it is clear again", async () => {
    const w = watched();
    w.use(240);
    for (let i = 0; i < 3; i++) await w.sample();
    expect(w.warnings()).toHaveLength(1);
    for (let i = 0; i < 29; i++) await w.sample(); // 9 min 40 s more
    expect(w.warnings()).toHaveLength(1);
    await w.sample();
    expect(w.warnings()).toHaveLength(2);

    w.use(210); // 81 %: below the warning's line, not yet clear of it
    await w.sample();
    expect(w.lines.at(-1)?.level).toBe(WARN);
    w.use(150);
    await w.sample();
    expect(w.lines.at(-1)?.level).toBe(30);
    expect(w.lines.at(-1)?.msg).toMatch(/below its limit again/);
    w.use(240);
    for (let i = 0; i < 3; i++) await w.sample();
    expect(w.warnings()).toHaveLength(3);
  });

  it("stops sampling when its signal aborts", async () => {
    const w = watched();
    await w.stop();
    expect(w.clock.pending).toBe(0);
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
