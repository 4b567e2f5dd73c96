/**
 * The offline log cache (docs/protocol.md § 3.9): bounded per container and in entries, never
 * wiped by a narrower request, emptied of a pod once it is gone, and shown as the request asks.
 */
import { describe, expect, it } from "vitest";
import { cachedView, LogCache } from "./log-cache.ts";

const at = new Date("2026-03-01T12:00:00Z");

describe("LogCache", () => {
  it("keeps the newest whole lines within the per-container budget", () => {
    const cache = new LogCache({ bytesPerContainer: 10, containers: 10, now: () => at });
    const w = cache.writer("uid-1", "app", { timestamps: false, full: true });
    w.append("aaaa\nbbbb\n");
    w.append("cccc\n");
    expect(cache.get("uid-1", "app")).toEqual({ text: "cccc\n", timestamps: false, at });
  });

  it("forgets the least recently used container beyond the limit", () => {
    const cache = new LogCache({ bytesPerContainer: 100, containers: 2 });
    for (const uid of ["a", "b"])
      cache.writer(uid, "app", { timestamps: false, full: true }).append(`${uid}\n`);
    cache.get("a", "app");
    cache.writer("c", "app", { timestamps: false, full: true }).append("c\n");
    expect([cache.get("a", "app")?.text, cache.get("b", "app"), cache.get("c", "app")?.text]).toEqual([
      "a\n",
      undefined,
      "c\n",
    ]);
    // What was forgotten for room is forgotten whole: a pod gone later has nothing left to drop.
    cache.forgetPod("a");
    cache.forgetPod("c");
    expect(cache.size).toBe(0);
  });

  it("forgets every container of a pod once the pod is gone, and only that pod's", () => {
    const cache = new LogCache({ bytesPerContainer: 100, containers: 10 });
    for (const [uid, app] of [
      ["gone", "app"],
      ["gone", "sidecar"],
      ["kept", "app"],
    ] as const) {
      cache.writer(uid, app, { timestamps: false, full: true }).append(`${uid} ${app}\n`);
    }
    cache.forgetPod("gone");
    expect([cache.get("gone", "app"), cache.get("gone", "sidecar"), cache.get("kept", "app")?.text]).toEqual([
      undefined,
      undefined,
      "kept app\n",
    ]);
    expect(cache.size).toBe(1);
  });

  it("does not let a tail request replace a longer copy", () => {
    const cache = new LogCache({ bytesPerContainer: 100, containers: 2 });
    cache.writer("k", "app", { timestamps: false, full: true }).append("one\ntwo\nthree\n");
    cache.writer("k", "app", { timestamps: false, full: false }).append("three\n");
    expect(cache.get("k", "app")?.text).toBe("one\ntwo\nthree\n");
    cache.writer("k", "app", { timestamps: false, full: true }).append("new\n");
    expect(cache.get("k", "app")?.text).toBe("new\n");
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
