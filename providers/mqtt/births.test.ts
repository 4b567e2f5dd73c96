import pino from "pino";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { Births } from "./births.ts";
import type { BirthDevice } from "./generations.ts";

const logger = pino({ level: "silent" });

const birth = (site: string): BirthDevice => ({
  deviceClass: "gateway",
  os: "linux",
  arch: "arm64",
  labels: { site },
  capacity: { cpu: "2", pods: "10" },
  capabilities: { maxMessageBytes: 65536, encodings: ["json"], runtime: "process", logs: true, exec: false },
});

/** A store that refuses the first `failures` writes, then keeps what it is given. */
function allocator(failures: number) {
  const stored = new Map<string, BirthDevice>();
  const calls: { deviceId: string; site: string | undefined }[] = [];
  let refuse = failures;
  return {
    stored,
    calls,
    saveDevice(deviceId: string, device: BirthDevice): Promise<void> {
      calls.push({ deviceId, site: device.labels?.site });
      if (refuse-- > 0) return Promise.reject(new Error("create configmaps: no answer in time"));
      stored.set(deviceId, device);
      return Promise.resolve();
    },
  };
}

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe("Births", () => {
  it("tries a birth the store refused again, with backoff, until it is stored", async () => {
    const store = allocator(2);
    const births = new Births({ allocator: store, logger, baseMs: 1_000, maxMs: 60_000 });
    births.save("gw-1", birth("a"));
    await vi.advanceTimersByTimeAsync(0);
    expect(store.calls).toHaveLength(1);
    expect(births.pending).toBe(1);
    // The first retry waits between half the base and all of it; the second twice that.
    await vi.advanceTimersByTimeAsync(499);
    expect(store.calls).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(501);
    expect(store.calls).toHaveLength(2);
    await vi.advanceTimersByTimeAsync(2_000);
    expect(store.calls).toHaveLength(3);
    expect(store.stored.get("gw-1")?.labels?.site).toBe("a");
    expect(births.pending).toBe(0);
    // Stored: nothing more is written.
    await vi.advanceTimersByTimeAsync(600_000);
    expect(store.calls).toHaveLength(3);
  });

  it("stores a newer birth at once in place of the one waiting for its retry", async () => {
    const store = allocator(1);
    const births = new Births({ allocator: store, logger, baseMs: 1_000 });
    births.save("gw-1", birth("old"));
    await vi.advanceTimersByTimeAsync(0);
    births.save("gw-1", birth("new"));
    await vi.advanceTimersByTimeAsync(0);
    expect(store.stored.get("gw-1")?.labels?.site).toBe("new");
    await vi.advanceTimersByTimeAsync(600_000);
    expect(store.calls.map((c) => c.site)).toEqual(["old", "new"]);
    expect(births.pending).toBe(0);
  });

  it("never writes the birth of a device retired while its retry waited, nor after stop", async () => {
    const store = allocator(2);
    const births = new Births({ allocator: store, logger, baseMs: 1_000 });
    births.save("gw-retired", birth("a"));
    births.save("gw-other", birth("b"));
    await vi.advanceTimersByTimeAsync(0);
    births.forget("gw-retired");
    expect(births.pending).toBe(1);
    births.stop();
    expect(births.pending).toBe(0);
    await vi.advanceTimersByTimeAsync(600_000);
    expect(store.calls.map((c) => c.deviceId)).toEqual(["gw-retired", "gw-other"]);
    expect(store.stored.size).toBe(0);
    births.save("gw-late", birth("c"));
    await vi.advanceTimersByTimeAsync(0);
    expect(store.calls).toHaveLength(2);
  });
});
