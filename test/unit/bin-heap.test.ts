/**
 * bin/devicelet.js's heap sizing: the long-running commands start again in the same process with
 * 8 MiB semi-spaces and 1.5× heap growth when V8 sized the heap for a large machine (a heap limit
 * of 2 GiB or more), and never when the caller chose heap flags or set a smaller heap. Each case
 * runs the real launcher with a preloaded module that reports the flags and pid the command ends
 * up with (`run` then stops at once on a missing config file).
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { getHeapStatistics } from "node:v8";
import { afterAll, describe, expect, it } from "vitest";

const bin = path.resolve(import.meta.dirname, "../../bin/devicelet.js");
const dir = mkdtempSync(path.join(os.tmpdir(), "devicelet-bin-heap-"));
const report = path.join(dir, "report.mjs");
// Each process start (the first one and a re-executed one) prints one line.
writeFileSync(report, 'console.error(`started ${process.pid} ${process.execArgv.join(" ")}`);\n');
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const TUNED = "--max-semi-space-size=8 --heap-growing-percent=50";
/** Whether V8 gives this machine's processes a heap limit the launcher tunes. */
const largeHeap = getHeapStatistics().heap_size_limit >= 2 * 1024 ** 3;

/** Starts the launcher; returns each start's pid and node flags, in order. */
function launch(o: { args: string[]; nodeFlags?: string[]; nodeOptions?: string }) {
  const result = spawnSync(process.execPath, [...(o.nodeFlags ?? []), bin, ...o.args], {
    env: { ...process.env, NODE_OPTIONS: [`--import=${report}`, o.nodeOptions ?? ""].join(" ").trim() },
    encoding: "utf8",
    timeout: 60_000,
  });
  const starts = [...result.stderr.matchAll(/^started (\d+) ?(.*)$/gm)].map((m) => ({
    pid: Number(m[1]),
    flags: m[2] ?? "",
  }));
  return { starts, stderr: result.stderr, status: result.status };
}

const run = ["run", "--config", path.join(dir, "missing.yaml")];

describe("bin/devicelet.js heap sizing", () => {
  it.runIf(largeHeap)("restarts `run` in the same process with the heap flags on a large heap", () => {
    const { starts, stderr } = launch({ args: run });
    expect(starts).toHaveLength(2);
    expect(starts[1]?.pid).toBe(starts[0]?.pid);
    expect(starts[0]?.flags).toBe("");
    expect(starts[1]?.flags).toBe(TUNED);
    expect(stderr).toContain("missing.yaml");
  });

  it.runIf(largeHeap)("keeps the caller's own node flags after the heap flags", () => {
    const { starts } = launch({ args: run, nodeFlags: ["--no-warnings"] });
    expect(starts.map((s) => s.flags)).toEqual(["--no-warnings", `${TUNED} --no-warnings`]);
  });

  it("leaves a heap the caller sized alone: a small old space, or heap flags of its own", () => {
    for (const o of [
      { args: run, nodeFlags: ["--max-old-space-size=512"] },
      { args: run, nodeOptions: "--max-semi-space-size=4" },
      { args: run, nodeFlags: ["--max-semi-space-size=32"] },
    ]) {
      const { starts, stderr } = launch(o);
      expect(starts, JSON.stringify(o)).toHaveLength(1);
      expect(stderr).toContain("missing.yaml");
    }
  });

  it("starts short commands once", () => {
    const { starts } = launch({ args: ["no-such-command"] });
    expect(starts).toHaveLength(1);
    expect(starts[0]?.flags).toBe("");
  });
});
