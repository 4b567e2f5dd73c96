import pino from "pino";
import { describe, expect, it } from "vitest";
import { WorkQueue, type ReconcileResult } from "./queue.ts";

const logger = pino({ level: "silent" });

function makeQueue(
  reconcile: (key: string) => Promise<ReconcileResult>,
  overrides: Partial<ConstructorParameters<typeof WorkQueue>[0]> = {},
) {
  const queue = new WorkQueue({
    name: "test",
    concurrency: 4,
    reconcile,
    logger,
    baseDelayMs: 1,
    maxDelayMs: 5,
    ...overrides,
  });
  const controller = new AbortController();
  queue.start(controller.signal);
  return { queue, stop: () => controller.abort() };
}

async function eventuallyTrue(check: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!check()) {
    if (performance.now() > deadline) throw new Error("condition not reached in time");
    await new Promise((r) => setTimeout(r, 5));
  }
}

const tick = () => new Promise((r) => setTimeout(r, 15));

describe("WorkQueue", () => {
  it("never runs one key twice at once, and re-runs a key added while it was running", async () => {
    let concurrent = 0;
    let maxConcurrent = 0;
    let runs = 0;
    let release: () => void = () => {};
    const { queue, stop } = makeQueue(async () => {
      runs++;
      concurrent++;
      maxConcurrent = Math.max(maxConcurrent, concurrent);
      if (runs === 1) await new Promise<void>((r) => (release = r));
      concurrent--;
      return undefined;
    });
    queue.add("a");
    await tick();
    queue.add("a");
    queue.add("a");
    release();
    await tick();
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
    let attempts = 0;
    const { queue, stop } = makeQueue(async () => {
      attempts++;
      if (attempts <= 40) throw new Error("boom");
      return undefined;
    });
    queue.add("k");
    await eventuallyTrue(() => attempts === 41, 3_000);
    expect(queue.stats().failed).toBe(40);
    expect(queue.failing()).toBe(0);
    stop();
  });

  it("waits at least as long as the failure's Retry-After asks", async () => {
    const at: number[] = [];
    const { queue, stop } = makeQueue(
      async () => {
        at.push(performance.now());
        if (at.length === 1) throw new Error("slow down");
        return undefined;
      },
      { retryAfterMs: () => 120 },
    );
    queue.add("k");
    await eventuallyTrue(() => at.length === 2, 2_000);
    expect((at[1] ?? 0) - (at[0] ?? 0)).toBeGreaterThanOrEqual(110);
    stop();
  });

  it("does not retry terminal errors until the key is added again", async () => {
    let attempts = 0;
    const terminal: string[] = [];
    const { queue, stop } = makeQueue(
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
    await new Promise((r) => setTimeout(r, 60));
    expect(attempts).toBe(1);
    expect(terminal).toEqual(["k"]);
    // A change of the object adds the key again: it is tried once more.
    queue.add("k");
    await queue.idle();
    expect(attempts).toBe(2);
    stop();
  });

  it("requeues after the delay a reconcile asks for, without counting a failure", async () => {
    let attempts = 0;
    const { queue, stop } = makeQueue(async () => (++attempts < 3 ? { requeueAfterMs: 5 } : undefined));
    queue.add("k");
    await new Promise((r) => setTimeout(r, 80));
    expect(attempts).toBe(3);
    expect(queue.stats().failed).toBe(0);
    stop();
  });
});
