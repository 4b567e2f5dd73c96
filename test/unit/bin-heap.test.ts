/**
 * bin/devicelet.js's memory settings: the long-running commands start again in the same process
 * with 8 MiB semi-spaces and 1.5× heap growth when V8 sized the heap for a large machine (a heap
 * limit of 2 GiB or more), never when the caller chose heap flags or set a smaller heap; and, on
 * glibc, with its malloc thresholds fixed at 64 KiB, unless the caller set any MALLOC_ variable or
 * GLIBC_TUNABLES. Each case runs the real launcher with a preloaded module that reports the flags,
 * the malloc environment and the pid the command ends up with (`run` then stops at once on a
 * missing config file).
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
writeFileSync(
  report,
  'const m = ["MMAP", "TRIM"].map((k) => process.env[`MALLOC_${k}_THRESHOLD_`] ?? "-").join(",");\n' +
    'console.error(`started ${process.pid} ${m} ${process.execArgv.join(" ")}`);\n',
);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const TUNED = "--max-semi-space-size=8 --heap-growing-percent=50";
/** Whether V8 gives this machine's processes a heap limit the launcher tunes. */
const largeHeap = getHeapStatistics().heap_size_limit >= 2 * 1024 ** 3;
/** Whether this Node.js runs on glibc, where the launcher sets malloc's thresholds. */
const header = (process.report.getReport() as { header?: { glibcVersionRuntime?: string } }).header;
const glibc = process.platform === "linux" && Boolean(header?.glibcVersionRuntime);
const MALLOC = "65536,65536";
/** The caller's environment without any malloc setting of its own. */
const plainEnv = Object.fromEntries(
  Object.entries(process.env).filter(([k]) => !k.startsWith("MALLOC_") && k !== "GLIBC_TUNABLES"),
);

/** Starts the launcher; returns each start's pid and node flags, in order. */
function launch(o: {
  args: string[];
  nodeFlags?: string[];
  nodeOptions?: string;
  env?: Record<string, string>;
}) {
  const result = spawnSync(process.execPath, [...(o.nodeFlags ?? []), bin, ...o.args], {
    env: {
      ...plainEnv,
      ...o.env,
      NODE_OPTIONS: [`--import=${report}`, o.nodeOptions ?? ""].join(" ").trim(),
    },
    encoding: "utf8",
    timeout: 60_000,
  });
  const starts = [...result.stderr.matchAll(/^started (\d+) (\S+) ?(.*)$/gm)].map((m) => ({
    pid: Number(m[1]),
    malloc: m[2] ?? "",
    flags: m[3] ?? "",
  }));
  return { starts, stderr: result.stderr, status: result.status };
}

const run = ["run", "--config", path.join(dir, "missing.yaml")];

/** The malloc setting a command started again has on this machine. */
const restartedMalloc = glibc ? MALLOC : "-,-";

describe("bin/devicelet.js memory settings", () => {
  it.runIf(largeHeap)("restarts `run` in the same process with the heap flags on a large heap", () => {
    const { starts, stderr } = launch({ args: run });
    expect(starts).toHaveLength(2);
    expect(starts[1]?.pid).toBe(starts[0]?.pid);
    expect(starts[0]).toMatchObject({ flags: "", malloc: "-,-" });
    expect(starts[1]).toMatchObject({ flags: TUNED, malloc: restartedMalloc });
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
      // Started again only for malloc's settings, on glibc, with the caller's flags as they were.
      expect(starts, JSON.stringify(o)).toHaveLength(glibc ? 2 : 1);
      for (const start of starts) expect(start.flags).not.toContain(TUNED);
      expect(starts.at(-1)?.malloc).toBe(restartedMalloc);
      expect(stderr).toContain("missing.yaml");
    }
  });

  it.runIf(glibc)("sets malloc's thresholds on glibc even when the heap needs nothing", () => {
    const { starts } = launch({ args: run, nodeFlags: ["--max-semi-space-size=8"] });
    expect(starts.map((s) => s.malloc)).toEqual(["-,-", MALLOC]);
    expect(starts[1]?.pid).toBe(starts[0]?.pid);
  });

  it("leaves malloc alone when the caller set any of its variables or glibc's tunables", () => {
    const callers: Record<string, string>[] = [
      { MALLOC_ARENA_MAX: "2" },
      { MALLOC_MMAP_THRESHOLD_: "1048576" },
      { GLIBC_TUNABLES: "glibc.malloc.trim_threshold=1" },
    ];
    for (const env of callers) {
      const { starts } = launch({ args: run, nodeFlags: ["--max-semi-space-size=8"], env });
      expect(starts, JSON.stringify(env)).toHaveLength(1);
      expect(starts[0]?.malloc).toBe(env.MALLOC_MMAP_THRESHOLD_ === undefined ? "-,-" : "1048576,-");
    }
  });

  it("starts short commands once", () => {
    const { starts } = launch({ args: ["no-such-command"] });
    expect(starts).toHaveLength(1);
    expect(starts[0]).toMatchObject({ flags: "", malloc: "-,-" });
  });
});
