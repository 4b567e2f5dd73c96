import { describe, expect, it } from "vitest";
import { parseMemoryQuantity } from "./support.ts";

describe("parseMemoryQuantity", () => {
  it("reads the binary suffixes a chart's limit uses, and plain bytes", () => {
    expect(parseMemoryQuantity("512Mi")).toBe(512 * 2 ** 20);
    expect(parseMemoryQuantity("1.5Gi")).toBe(1.5 * 2 ** 30);
    expect(parseMemoryQuantity("64Ki")).toBe(65_536);
    expect(parseMemoryQuantity("1000000")).toBe(1_000_000);
  });

  it("refuses what a cgroup could not take as meant", () => {
    expect(() => parseMemoryQuantity("512M")).toThrow(/not a memory size/);
    expect(() => parseMemoryQuantity("-1Gi")).toThrow(/not a memory size/);
    expect(() => parseMemoryQuantity("")).toThrow(/not a memory size/);
  });
});
