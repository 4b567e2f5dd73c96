import { V1MicroTime } from "@kubernetes/client-node";
import { describe, expect, it } from "vitest";
import { isMicroTime, normalizeMicroTime, parseKubeTime, toKubeTime, toMicroTime } from "./microtime.ts";

const instant = Date.UTC(2026, 10, 2, 10, 20, 30, 123);

describe("toMicroTime", () => {
  it("formats a Date with exactly six fractional digits", () => {
    expect(toMicroTime(new Date(instant))).toBe("2026-11-02T10:20:30.123000Z");
  });

  it("keeps microseconds carried as the fraction of epoch milliseconds", () => {
    expect(toMicroTime(instant + 0.456)).toBe("2026-11-02T10:20:30.123456Z");
    expect(toMicroTime(instant + 0.999)).toBe("2026-11-02T10:20:30.123999Z");
  });

  it("always matches the MicroTime pattern", () => {
    for (const ms of [
      0,
      1,
      999,
      instant,
      instant + 0.5,
      Date.now(),
      performance.timeOrigin + performance.now(),
    ]) {
      expect(isMicroTime(toMicroTime(ms))).toBe(true);
    }
  });

  it("refuses an invalid instant", () => {
    expect(() => toMicroTime(new Date("nope"))).toThrow(RangeError);
  });

  it("differs from what a plain Date serialises to (the API server refuses that)", () => {
    expect(JSON.stringify(new Date(instant))).toBe('"2026-11-02T10:20:30.123Z"');
    // client-node's own V1MicroTime pads the same way we do.
    expect(JSON.stringify(new V1MicroTime(instant))).toBe(JSON.stringify(toMicroTime(instant)));
  });
});

describe("toKubeTime", () => {
  it("formats whole seconds", () => {
    expect(toKubeTime(instant)).toBe("2026-11-02T10:20:30Z");
    expect(toKubeTime(new Date(instant))).toBe("2026-11-02T10:20:30Z");
  });
});

describe("parseKubeTime", () => {
  it("reads Time and MicroTime with their precision", () => {
    expect(parseKubeTime("2026-11-02T10:20:30Z")).toBe(instant - 123);
    expect(parseKubeTime("2026-11-02T10:20:30.123456Z")).toBeCloseTo(instant + 0.456, 3);
    expect(parseKubeTime("2026-11-02T11:20:30.123+01:00")).toBe(instant);
    expect(parseKubeTime("yesterday")).toBeNaN();
  });
});

describe("normalizeMicroTime", () => {
  it("keeps a MicroTime, re-formats other precisions and Dates", () => {
    expect(normalizeMicroTime("2026-11-02T10:20:30.123456Z")).toBe("2026-11-02T10:20:30.123456Z");
    expect(normalizeMicroTime("2026-11-02T10:20:30.123Z")).toBe("2026-11-02T10:20:30.123000Z");
    expect(normalizeMicroTime("2026-11-02T10:20:30Z")).toBe("2026-11-02T10:20:30.000000Z");
    expect(normalizeMicroTime(new Date(instant))).toBe("2026-11-02T10:20:30.123000Z");
    expect(normalizeMicroTime(undefined)).toBeUndefined();
    expect(() => normalizeMicroTime("later")).toThrow(RangeError);
  });
});
