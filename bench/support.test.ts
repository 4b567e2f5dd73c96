import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { buildDeviceletBin, parseMemoryQuantity } from "./support.ts";

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
