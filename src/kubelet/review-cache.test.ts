import { describe, expect, it } from "vitest";
import { FakeClock } from "../base/fake-clock.ts";
import { ReviewCache } from "./review-cache.ts";

describe("ReviewCache", () => {
  it("keeps each entry for its own time to live", () => {
    const clock = new FakeClock();
    const cache = new ReviewCache<boolean>({ size: 10, clock });
    cache.set("allowed", true, 300_000);
    cache.set("denied", false, 30_000);
    clock.advance(29_999);
    expect([cache.get("allowed"), cache.get("denied")]).toEqual([true, false]);
    clock.advance(1);
    expect([cache.get("allowed"), cache.get("denied")]).toEqual([true, undefined]);
    clock.advance(270_000);
    expect(cache.get("allowed")).toBeUndefined();
  });

  it("holds at most `size` entries, evicting the least recently used", () => {
    const clock = new FakeClock();
    const cache = new ReviewCache<number>({ size: 3, clock });
    for (const k of ["a", "b", "c"]) cache.set(k, 1, 60_000);
    expect(cache.get("a")).toBe(1); // a is now the most recently used
    cache.set("d", 1, 60_000);
    expect(cache.size).toBe(3);
    expect(["a", "b", "c", "d"].map((k) => cache.get(k) !== undefined)).toEqual([true, false, true, true]);
  });

  it("shares one review among concurrent callers, caches the answer, and never caches a failure", async () => {
    const clock = new FakeClock();
    const cache = new ReviewCache<string>({ size: 10, clock });
    let reviews = 0;
    const review = async () => {
      reviews++;
      await Promise.resolve();
      return { value: "alice", ttlMs: 120_000 };
    };
    expect(await Promise.all([cache.resolve("t", review), cache.resolve("t", review)])).toEqual([
      "alice",
      "alice",
    ]);
    expect(await cache.resolve("t", review)).toBe("alice");
    expect(reviews).toBe(1);
    clock.advance(120_000);
    await cache.resolve("t", review);
    expect(reviews).toBe(2);

    const failing = () => Promise.reject(new Error("API server down"));
    await expect(cache.resolve("u", failing)).rejects.toThrow("API server down");
    expect(await cache.resolve("u", review)).toBe("alice");
  });
});
