import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { buildDeviceletBin, parseMemoryQuantity, pollMs, tableRows } from "./support.ts";

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

describe("tableRows", () => {
  it("splits kubectl's table into columns, blank lines and padding dropped", () => {
    const table = "n-1   Ready,SchedulingDisabled   agent   5s   v1\nn-2   NotReady   agent   4s   v1\n\n";
    expect(tableRows(table)).toEqual([
      ["n-1", "Ready,SchedulingDisabled", "agent", "5s", "v1"],
      ["n-2", "NotReady", "agent", "4s", "v1"],
    ]);
    expect(tableRows("")).toEqual([]);
  });
});

describe("pollMs", () => {
  it("polls each second for small fleets, less often for large ones, never past 5 s", () => {
    expect(pollMs(100)).toBe(1_000);
    expect(pollMs(5_000)).toBe(2_500);
    expect(pollMs(50_000)).toBe(5_000);
  });
});

describe("buildDeviceletBin", () => {
  it("lays devicelet out as the image does: the command runs the compiled code, with no sources beside it", () => {
    const root = mkdtempSync(path.join(os.tmpdir(), "bench-build-"));
    try {
      const bin = buildDeviceletBin(path.join(root, "build"));
      expect(existsSync(path.join(root, "build/dist/src/cli/main.js"))).toBe(true);
      expect(existsSync(path.join(root, "build/src"))).toBe(false);
      const { version } = JSON.parse(readFileSync("package.json", "utf8")) as { version: string };
      expect(execFileSync(process.execPath, [bin, "--version"], { encoding: "utf8" }).trim()).toBe(version);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
