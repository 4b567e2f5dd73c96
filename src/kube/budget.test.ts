import { describe, expect, it } from "vitest";
import { RequestBudget } from "./budget.ts";
import { FakeClock } from "../base/fake-clock.ts";

const settle = () => new Promise<void>((resolve) => setImmediate(resolve));

function track(budget: RequestBudget, n: number, signal?: AbortSignal) {
  const done: number[] = [];
  const failed: number[] = [];
  for (let i = 0; i < n; i++) {
    budget.take(signal).then(
      () => done.push(i),
      () => failed.push(i),
    );
  }
  return { done, failed };
}

describe("RequestBudget", () => {
  it("lets a burst through at once, then one request per 1/qps seconds, in order", async () => {
    const clock = new FakeClock();
    const budget = new RequestBudget({ qps: 10, burst: 3, clock });
    const { done } = track(budget, 6);
    await settle();
    expect(done).toEqual([0, 1, 2]);
    expect(budget.waiting).toBe(3);
    clock.advance(99);
    await settle();
    expect(done).toEqual([0, 1, 2]);
    clock.advance(1);
    await settle();
    expect(done).toEqual([0, 1, 2, 3]);
    clock.advance(200);
    await settle();
    expect(done).toEqual([0, 1, 2, 3, 4, 5]);
    expect(budget.waiting).toBe(0);
    expect(clock.pending).toBe(0);
  });

  it("refills up to burst while idle, never beyond", async () => {
    const clock = new FakeClock();
    const budget = new RequestBudget({ qps: 2, burst: 2, clock });
    await budget.take();
    await budget.take();
    clock.advance(60_000);
    const { done } = track(budget, 3);
    await settle();
    expect(done).toEqual([0, 1]);
    clock.advance(500);
    await settle();
    expect(done).toEqual([0, 1, 2]);
  });

  it("a waiter whose signal aborts is rejected, takes no token, and the next waiter moves up", async () => {
    const clock = new FakeClock();
    const budget = new RequestBudget({ qps: 1, burst: 1, clock });
    await budget.take();
    const controller = new AbortController();
    const first = track(budget, 1, controller.signal);
    const second = track(budget, 1);
    controller.abort(new Error("stop"));
    await settle();
    expect(first.failed).toEqual([0]);
    clock.advance(1000);
    await settle();
    expect(second.done).toEqual([0]);
    await expect(budget.take(controller.signal)).rejects.toThrow("stop");
  });

  it("cancels its timer when the last waiter aborts", async () => {
    const clock = new FakeClock();
    const budget = new RequestBudget({ qps: 1, burst: 1, clock });
    await budget.take();
    const controller = new AbortController();
    track(budget, 1, controller.signal);
    expect(clock.pending).toBe(1);
    controller.abort();
    await settle();
    expect(clock.pending).toBe(0);
  });

  it("counts requests by verb and resource", () => {
    const budget = new RequestBudget({ qps: Infinity, burst: 1 });
    budget.record("patch", "pods/status");
    budget.record("patch", "pods/status");
    budget.record("get", "pods");
    budget.record("watch", "pods");
    expect(budget.counts()).toEqual({ "patch pods/status": 2, "get pods": 1, "watch pods": 1 });
    expect(budget.total()).toBe(4);
    expect(budget.total(["patch", "create", "update", "delete"])).toBe(2);
  });

  it("never waits when qps is Infinity", async () => {
    const budget = new RequestBudget({ qps: Infinity, burst: 1 });
    for (let i = 0; i < 1000; i++) await budget.take();
    expect(budget.waiting).toBe(0);
  });

  it("refuses nonsense limits", () => {
    expect(() => new RequestBudget({ qps: 0, burst: 1 })).toThrow(RangeError);
    expect(() => new RequestBudget({ qps: 1, burst: 0 })).toThrow(RangeError);
    expect(() => new RequestBudget({ qps: Number.NaN, burst: 1 })).toThrow(RangeError);
  });
});
