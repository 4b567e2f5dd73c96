/** devicelet's share of IoT Hub's throttles, per tier and unit count. */
import { describe, expect, it } from "vitest";
import { budgetRates, hubThrottles } from "./quotas.ts";

describe("IoT Hub quotas", () => {
  it("S1: queries scale with units, twin reads and updates do not", () => {
    expect(hubThrottles("S1", 1)).toEqual({
      queriesPerMinute: 20,
      twinReadsPerSecond: 100,
      twinUpdatesPerSecond: 50,
      methodsPerSecond: 40,
    });
    expect(hubThrottles("S1", 4)).toEqual({
      queriesPerMinute: 80,
      twinReadsPerSecond: 100,
      twinUpdatesPerSecond: 50,
      methodsPerSecond: 160,
    });
  });

  it("S2 takes the higher of the flat and per-unit rates; S3 scales everything", () => {
    expect(hubThrottles("S2", 2).twinReadsPerSecond).toBe(100);
    expect(hubThrottles("S2", 20).twinReadsPerSecond).toBe(200);
    expect(hubThrottles("S2", 20).twinUpdatesPerSecond).toBe(100);
    expect(hubThrottles("S3", 2)).toEqual({
      queriesPerMinute: 2000,
      twinReadsPerSecond: 1000,
      twinUpdatesPerSecond: 500,
      methodsPerSecond: 12000,
    });
  });

  it("devicelet keeps headroom for devices and people, and configured budgets win", () => {
    expect(budgetRates({ tier: "S1", units: 1 })).toEqual({
      queriesPerMinute: 16,
      twinReadsPerSecond: 50,
      twinUpdatesPerSecond: 20,
      methodsPerSecond: 20,
    });
    expect(
      budgetRates({ tier: "S1", units: 1, overrides: { twinReadsPerSecond: 90 } }).twinReadsPerSecond,
    ).toBe(90);
  });
});
