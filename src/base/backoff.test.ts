import { describe, expect, it } from "vitest";
import { retryDelay } from "./backoff.ts";

const exact = { baseMs: 500, maxMs: 5_000, jitter: "none" } as const;

describe("retryDelay", () => {
  it("doubles from the base per failure, counting the first failure as the base", () => {
    expect([1, 2, 3, 4].map((failures) => retryDelay({ ...exact, failures }))).toEqual([
      500, 1_000, 2_000, 4_000,
    ]);
  });

  it("stops at the cap, even after very many failures", () => {
    expect([5, 6, 50, 10_000].map((failures) => retryDelay({ ...exact, failures }))).toEqual([
      5_000, 5_000, 5_000, 5_000,
    ]);
  });

  it("treats zero or negative failures as the first", () => {
    expect(retryDelay({ ...exact, failures: 0 })).toBe(500);
    expect(retryDelay({ ...exact, failures: -3 })).toBe(500);
  });

  it("waits at least what the failure asked for, and no less than the backoff otherwise", () => {
    expect(retryDelay({ ...exact, failures: 1, atLeastMs: 4_000 })).toBe(4_000);
    expect(retryDelay({ ...exact, failures: 4, atLeastMs: 1_000 })).toBe(4_000);
    // Above the cap too: a server's Retry-After wins over our own maximum.
    expect(retryDelay({ ...exact, failures: 9, atLeastMs: 60_000 })).toBe(60_000);
  });

  it("spreads proportionally by ±20 % by default, at both ends of the random range", () => {
    const at = (r: number) => retryDelay({ failures: 3, baseMs: 500, maxMs: 5_000, random: () => r });
    expect(at(0)).toBeCloseTo(1_600);
    expect(at(0.5)).toBeCloseTo(2_000);
    expect(at(0.999_999)).toBeCloseTo(2_400, 2);
    // Jitter applies after the cap: a capped delay still varies.
    expect(retryDelay({ failures: 20, baseMs: 500, maxMs: 5_000, random: () => 0 })).toBeCloseTo(4_000);
  });

  it("keeps equal jitter between half the step and the step", () => {
    const at = (r: number) =>
      retryDelay({ failures: 3, baseMs: 500, maxMs: 5_000, jitter: "equal", random: () => r });
    expect(at(0)).toBe(1_000);
    expect(at(0.5)).toBe(1_500);
    expect(at(0.999_999)).toBeCloseTo(2_000, 2);
  });

  it("does not draw a random number without jitter", () => {
    const random = () => {
      throw new Error("random drawn");
    };
    expect(retryDelay({ ...exact, failures: 2, random })).toBe(1_000);
  });

  it("stays within the bounds for any random draw", () => {
    for (let i = 0; i <= 100; i++) {
      const r = i / 101;
      for (const failures of [1, 4, 8, 40]) {
        const step = Math.min(5_000, 500 * 2 ** (failures - 1));
        const proportional = retryDelay({ failures, baseMs: 500, maxMs: 5_000, random: () => r });
        const equal = retryDelay({ failures, baseMs: 500, maxMs: 5_000, jitter: "equal", random: () => r });
        expect(proportional).toBeGreaterThanOrEqual(step * 0.8);
        expect(proportional).toBeLessThan(step * 1.2);
        expect(equal).toBeGreaterThanOrEqual(step / 2);
        expect(equal).toBeLessThan(step);
      }
    }
  });
});
