/**
 * The offline log cache (docs/protocol.md § 3.9): bounded per container and in entries, never
 * wiped by a narrower request, and shown as the request asks.
 */
import { describe, expect, it } from "vitest";
import { cachedView, LogCache } from "./log-cache.ts";

const at = new Date("2026-03-01T12:00:00Z");

describe("LogCache", () => {
  it("keeps the newest whole lines within the per-container budget", () => {
    const cache = new LogCache({ bytesPerContainer: 10, containers: 10, now: () => at });
    const w = cache.writer("k", { timestamps: false, full: true });
    w.append("aaaa\nbbbb\n");
    w.append("cccc\n");
    expect(cache.get("k")).toEqual({ text: "cccc\n", timestamps: false, at });
  });

  it("forgets the least recently used container beyond the limit", () => {
    const cache = new LogCache({ bytesPerContainer: 100, containers: 2 });
    for (const key of ["a", "b"]) cache.writer(key, { timestamps: false, full: true }).append(`${key}\n`);
    cache.get("a");
    cache.writer("c", { timestamps: false, full: true }).append("c\n");
    expect([cache.get("a")?.text, cache.get("b"), cache.get("c")?.text]).toEqual(["a\n", undefined, "c\n"]);
  });

  it("does not let a tail request replace a longer copy", () => {
    const cache = new LogCache({ bytesPerContainer: 100, containers: 2 });
    cache.writer("k", { timestamps: false, full: true }).append("one\ntwo\nthree\n");
    cache.writer("k", { timestamps: false, full: false }).append("three\n");
    expect(cache.get("k")?.text).toBe("one\ntwo\nthree\n");
    cache.writer("k", { timestamps: false, full: true }).append("new\n");
    expect(cache.get("k")?.text).toBe("new\n");
  });
});

describe("cachedView", () => {
  const log = {
    text: "2026-03-01T12:00:00.000000000Z one\n2026-03-01T12:00:05.000000000Z two\n2026-03-01T12:00:09.000000000Z three\n",
    timestamps: true,
    at,
  };

  it("drops the time prefix unless asked, and applies since, tail and limit", () => {
    expect(cachedView(log, {})).toBe("one\ntwo\nthree\n");
    expect(cachedView(log, { tailLines: 1, timestamps: true })).toBe(
      "2026-03-01T12:00:09.000000000Z three\n",
    );
    expect(cachedView(log, { since: new Date("2026-03-01T12:00:05Z") })).toBe("two\nthree\n");
    expect(cachedView(log, { limitBytes: 6 })).toBe("one\ntw");
    expect(cachedView(log, { tailLines: 0 })).toBe("");
  });
});
