import { Writable } from "node:stream";
import pino from "pino";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { Births } from "./births.ts";
import type { BirthDevice } from "./generations.ts";
import { MqttMetrics } from "./metrics.ts";

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

  it("warns once per 10 s of the births that failed, and counts those waiting in the metrics", async () => {
    const lines: Record<string, unknown>[] = [];
    const stream = new Writable({
      write(chunk: Buffer, _encoding, done) {
        lines.push(JSON.parse(chunk.toString("utf8")) as Record<string, unknown>);
        done();
      },
    });
    const metrics = new MqttMetrics();
    const store = allocator(150);
    const births = new Births({
      allocator: store,
      logger: pino({ level: "info" }, stream),
      metrics,
      baseMs: 30_000,
    });
    for (let i = 0; i < 100; i++) births.save(`gw-${i}`, birth("a"));
    await vi.advanceTimersByTimeAsync(0);
    expect(metrics.snapshot().unstoredBirths).toBe(100);
    const warnings = () => lines.filter((l) => l.msg === "storing the device's birth failed; trying again");
    expect(warnings()).toHaveLength(1);
    expect(warnings()[0]).toMatchObject({ device: "gw-0", suppressed: 0, waiting: 100 });
    // The first retries (15 to 30 s later): 50 fail again, 50 are stored.
    await vi.advanceTimersByTimeAsync(30_000);
    expect(store.calls).toHaveLength(200);
    expect(metrics.snapshot().unstoredBirths).toBe(50);
    // The 99 failures at registration and those of the retries are told in few lines, not one each.
    const told = warnings().reduce((n, l) => n + 1 + (l.suppressed as number), 0);
    expect(warnings().length).toBeLessThanOrEqual(3);
    expect(told).toBeLessThanOrEqual(150);
    expect(told).toBeGreaterThan(100);
    births.forget("gw-99");
    births.stop();
    expect(metrics.snapshot().unstoredBirths).toBe(0);
  });
});
