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
    maxRetries: 3,
    baseDelayMs: 1,
    maxDelayMs: 5,
    ...overrides,
  });
  const controller = new AbortController();
  queue.start(controller.signal);
  return { queue, stop: () => controller.abort() };
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

  it("retries failures with backoff and gives up after maxRetries", async () => {
    let attempts = 0;
    const { queue, stop } = makeQueue(async () => {
      attempts++;
      throw new Error("boom");
    });
    queue.add("k");
    await new Promise((r) => setTimeout(r, 150));
    expect(attempts).toBe(4); // first try + 3 retries
    expect(queue.stats().failed).toBe(4);
    stop();
  });

  it("does not retry terminal errors", async () => {
    let attempts = 0;
    const { queue, stop } = makeQueue(
      async () => {
        attempts++;
        throw Object.assign(new Error("never"), { terminal: true });
      },
      { isTerminal: (e) => (e as { terminal?: boolean }).terminal === true },
    );
    queue.add("k");
    await new Promise((r) => setTimeout(r, 60));
    expect(attempts).toBe(1);
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
