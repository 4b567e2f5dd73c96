/**
 * WorkQueue on a FakeClock: retries, requeues and delayed adds happen when the test moves time,
 * and the test waits on the queue's own promises (`idle()`) or a deferred, never on a sleep.
 */
import pino from "pino";
import { describe, expect, it } from "vitest";
import { FakeClock } from "../base/fake-clock.ts";
import { WorkQueue, type ReconcileResult, type WorkQueueOptions } from "./queue.ts";

const logger = pino({ level: "silent" });

function makeQueue(
  reconcile: (key: string) => Promise<ReconcileResult>,
  overrides: Partial<WorkQueueOptions> = {},
) {
  const clock = new FakeClock(1_000_000);
  const queue = new WorkQueue({
    name: "test",
    concurrency: 4,
    reconcile,
    logger,
    baseDelayMs: 1,
    maxDelayMs: 5,
    clock,
    ...overrides,
  });
  const controller = new AbortController();
  queue.start(controller.signal);
  return { queue, clock, stop: () => controller.abort() };
}

/** A promise with its resolve function outside. */
function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve: () => void = () => undefined;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

describe("WorkQueue", () => {
  it("never runs one key twice at once, and re-runs a key added while it was running", async () => {
    let concurrent = 0;
    let maxConcurrent = 0;
    let runs = 0;
    const started = deferred();
    const release = deferred();
    const { queue, stop } = makeQueue(async () => {
      runs++;
      concurrent++;
      maxConcurrent = Math.max(maxConcurrent, concurrent);
      if (runs === 1) {
        started.resolve();
        await release.promise;
      }
      concurrent--;
      return undefined;
    });
    queue.add("a");
    await started.promise;
    queue.add("a");
    queue.add("a");
    expect(queue.stats()).toMatchObject({ active: 1, pending: 0 });
    release.resolve();
    await queue.idle();
    expect(maxConcurrent).toBe(1);
    expect(runs).toBe(2);
    stop();
  });

  it("coalesces adds of a waiting key", async () => {
    const seen: string[] = [];
    const { queue, stop } = makeQueue(
      async (key) => {
        seen.push(key);
        return undefined;
      },
      { concurrency: 1 },
    );
    queue.add("x");
    queue.add("y");
    queue.add("y");
    queue.add("y");
    await queue.idle();
    expect(seen.sort()).toEqual(["x", "y"]);
    stop();
  });

  it("retries a failing key with capped backoff until it succeeds, never giving up", async () => {
    const at: number[] = [];
    const { queue, clock, stop } = makeQueue(async () => {
      at.push(clock.now());
      if (at.length <= 40) throw new Error("boom");
      return undefined;
    });
    queue.add("k");
    await queue.idle();
    expect(at).toHaveLength(1);
    // 40 retries at most 6 ms apart (5 ms cap, +20 % jitter) all fit in a simulated second.
    await clock.advanceAsync(1_000);
    expect(at).toHaveLength(41);
    const gaps = at.slice(1).map((t, i) => t - (at[i] ?? 0));
    expect(Math.max(...gaps)).toBeLessThanOrEqual(6);
    expect(Math.min(...gaps)).toBeGreaterThanOrEqual(0.8);
    // Exponential until the cap: the first retry comes about 1 ms after the failure, later ones later.
    expect(gaps[0]).toBeLessThanOrEqual(1.2);
    expect(gaps.at(-1)).toBeGreaterThanOrEqual(4);
    expect(queue.stats()).toMatchObject({ failed: 40, delayed: 0 });
    expect(queue.failing()).toBe(0);
    stop();
  });

  it("waits at least as long as the failure's Retry-After asks", async () => {
    const at: number[] = [];
    const { queue, clock, stop } = makeQueue(
      async () => {
        at.push(clock.now());
        if (at.length === 1) throw new Error("slow down");
        return undefined;
      },
      { retryAfterMs: () => 120 },
    );
    queue.add("k");
    await queue.idle();
    await clock.advanceAsync(119);
    expect(at).toHaveLength(1);
    await clock.advanceAsync(1);
    expect(at).toHaveLength(2);
    expect((at[1] ?? 0) - (at[0] ?? 0)).toBe(120);
    stop();
  });

  it("does not retry terminal errors until the key is added again", async () => {
    let attempts = 0;
    const terminal: string[] = [];
    const { queue, clock, stop } = makeQueue(
      async () => {
        attempts++;
        throw Object.assign(new Error("never"), { terminal: true });
      },
      {
        isTerminal: (e) => (e as { terminal?: boolean }).terminal === true,
        onTerminal: (key) => terminal.push(key),
      },
    );
    queue.add("k");
    await queue.idle();
    expect(terminal).toEqual(["k"]);
    // A retry would be due within 6 ms; an hour passes without one.
    await clock.advanceAsync(3_600_000);
    expect(attempts).toBe(1);
    expect(queue.stats().delayed).toBe(0);
    // A change of the object adds the key again: it is tried once more.
    queue.add("k");
    await queue.idle();
    expect(attempts).toBe(2);
    stop();
  });

  it("requeues after the delay a reconcile asks for, without counting a failure", async () => {
    let attempts = 0;
    const { queue, clock, stop } = makeQueue(async () =>
      ++attempts < 3 ? { requeueAfterMs: 50 } : undefined,
    );
    queue.add("k");
    await queue.idle();
    expect(attempts).toBe(1);
    await clock.advanceAsync(49);
    expect(attempts).toBe(1);
    await clock.advanceAsync(1);
    expect(attempts).toBe(2);
    await clock.advanceAsync(50);
    expect(attempts).toBe(3);
    await clock.advanceAsync(10_000);
    expect(attempts).toBe(3);
    expect(queue.stats().failed).toBe(0);
    stop();
  });

  it("keeps the earlier of two delayed adds, and an add now replaces a delayed one", async () => {
    const at: number[] = [];
    const { queue, clock, stop } = makeQueue(async () => {
      at.push(clock.now());
      return undefined;
    });
    const t0 = clock.now();
    queue.addAfter("k", 100);
    queue.addAfter("k", 300); // later: ignored
    queue.addAfter("k", 50); // earlier: wins
    expect(clock.pending).toBe(1);
    await clock.advanceAsync(1_000);
    expect(at).toEqual([t0 + 50]);

    queue.addAfter("k", 100);
    queue.add("k");
    await queue.idle();
    expect(at).toHaveLength(2);
    expect(clock.pending).toBe(0);
    await clock.advanceAsync(1_000);
    expect(at).toHaveLength(2);
    stop();
  });

  it("runs keys added first ahead of the others, oldest first in each line, each key once", async () => {
    const seen: string[] = [];
    const busy = deferred();
    const { queue, clock, stop } = makeQueue(
      async (key) => {
        seen.push(key);
        if (key === "busy") await busy.promise;
        return undefined;
      },
      { concurrency: 1 },
    );
    queue.add("busy");
    for (const key of ["d1", "d2", "s1", "d3"]) queue.add(key);
    queue.add("s1", { first: true }); // waiting in the other line: moves ahead
    queue.add("s2", { first: true });
    queue.add("s2"); // a plain add does not move it back
    queue.addAfter("s3", 10, { first: true });
    queue.addAfter("s3", 20); // the earlier, first add stands
    queue.addAfter("d4", 30);
    queue.addAfter("d4", 5, { first: true }); // an earlier add asking first wins
    await clock.advanceAsync(40);
    expect(queue.stats()).toMatchObject({ active: 1, pending: 7 });
    busy.resolve();
    await queue.idle();
    expect(seen).toEqual(["busy", "s1", "s2", "d4", "s3", "d1", "d2", "d3"]);
    stop();
  });

  it("retries a failed key in the line it was taken from", async () => {
    const seen: string[] = [];
    let failed = false;
    const busy = deferred();
    const { queue, clock, stop } = makeQueue(
      async (key) => {
        seen.push(key);
        if (key === "busy") await busy.promise;
        if (key === "urgent" && !failed) {
          failed = true;
          throw new Error("no answer in time");
        }
        return undefined;
      },
      { concurrency: 1, baseDelayMs: 10, maxDelayMs: 10 },
    );
    queue.add("urgent", { first: true });
    await clock.advanceAsync(0);
    queue.add("busy");
    for (const key of ["r1", "r2", "r3"]) queue.add(key);
    // The retry comes due while "busy" runs and the routine keys wait.
    await clock.advanceAsync(20);
    busy.resolve();
    await queue.idle();
    expect(seen).toEqual(["urgent", "busy", "urgent", "r1", "r2", "r3"]);
    stop();
  });

  it("keeps first for a key added first while it runs", async () => {
    const seen: string[] = [];
    const busy = deferred();
    const { queue, stop } = makeQueue(
      async (key) => {
        seen.push(key);
        if (key === "k" && seen.length === 1) await busy.promise;
        return undefined;
      },
      { concurrency: 1 },
    );
    queue.add("k");
    queue.add("other");
    queue.add("k");
    queue.add("k", { first: true });
    busy.resolve();
    await queue.idle();
    expect(seen).toEqual(["k", "k", "other"]);
    stop();
  });

  it("cancels its timers when stopped, and takes no work afterwards", async () => {
    let attempts = 0;
    const { queue, clock, stop } = makeQueue(async () => {
      attempts++;
      return undefined;
    });
    queue.addAfter("a", 100);
    queue.addAfter("b", 200);
    expect(clock.pending).toBe(2);
    stop();
    expect(clock.pending).toBe(0);
    queue.add("c");
    queue.addAfter("d", 10);
    await clock.advanceAsync(1_000);
    expect(attempts).toBe(0);
  });

  it("settles idle() once stopped: the running reconcile returns, pending keys are dropped", async () => {
    const started = deferred();
    const release = deferred();
    const ran: string[] = [];
    const { queue, stop } = makeQueue(
      async (key) => {
        ran.push(key);
        started.resolve();
        await release.promise;
        return undefined;
      },
      { concurrency: 1 },
    );
    queue.add("a");
    queue.add("b");
    await started.promise;
    let idle = false;
    const waiting = queue.idle().then(() => (idle = true));
    stop();
    await Promise.resolve();
    expect(idle).toBe(false); // "a" is still running
    release.resolve();
    await waiting;
    expect(ran).toEqual(["a"]);
    expect(queue.length).toBe(0);
    await queue.idle(); // and at once from now on
  });

  it("takes a reconcile that fails once stopped for the shutdown's doing: no warning, no retry", async () => {
    const started = deferred();
    const release = deferred();
    const lines: string[] = [];
    const watching = pino({ level: "debug" }, { write: (line: string) => void lines.push(line) });
    const { queue, clock, stop } = makeQueue(
      async () => {
        started.resolve();
        await release.promise;
        throw new Error("patch nodes/status: not sent or not answered, devicelet is stopping");
      },
      { logger: watching },
    );
    queue.add("a");
    await started.promise;
    stop();
    release.resolve();
    await queue.idle();
    await clock.advanceAsync(1_000);
    expect(queue.stats()).toMatchObject({ failed: 0, delayed: 0 });
    expect(queue.failing()).toBe(0);
    const levels = lines.map((line) => JSON.parse(line) as { level: number; msg: string });
    expect(levels.filter((l) => l.level >= 40)).toEqual([]);
    expect(levels.map((l) => l.msg)).toContain("reconcile cut short by the shutdown");
  });
});
