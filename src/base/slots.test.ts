import { describe, expect, it } from "vitest";
import { Slots } from "./slots.ts";

describe("Slots", () => {
  it("lets `size` hold at once and the rest in arrival order as slots are released", async () => {
    const slots = new Slots(2);
    const order: string[] = [];
    const first = await slots.acquire();
    const second = await slots.acquire();
    const later = ["c", "d"].map((name) => slots.acquire().then((release) => (order.push(name), release)));
    expect(slots.held).toBe(2);
    expect(slots.waiting).toBe(2);
    await Promise.resolve();
    expect(order).toEqual([]);
    first();
    first(); // a second release of the same slot frees nothing more
    const c = await later[0];
    expect(order).toEqual(["c"]);
    expect(slots.held).toBe(2);
    second();
    const d = await later[1];
    expect(order).toEqual(["c", "d"]);
    c?.();
    d?.();
    expect(slots.held).toBe(0);
    expect(slots.waiting).toBe(0);
  });

  it("a waiter whose signal aborts leaves the line with the signal's reason; one aborted before never waits", async () => {
    const slots = new Slots(1);
    const holder = await slots.acquire();
    const controller = new AbortController();
    const waiting = slots.acquire(controller.signal);
    const behind = slots.acquire();
    controller.abort(new Error("timed out"));
    await expect(waiting).rejects.toThrow("timed out");
    expect(slots.waiting).toBe(1);
    holder();
    // The slot went to the one behind, not to the waiter that left.
    const next = await behind;
    expect(slots.held).toBe(1);
    next();
    await expect(slots.acquire(AbortSignal.abort(new Error("already")))).rejects.toThrow("already");
    expect(slots.held).toBe(0);
  });

  it("refuses a size below one", () => {
    expect(() => new Slots(0)).toThrow("at least 1");
  });
});
