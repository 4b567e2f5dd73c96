import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterEach, describe, expect, it, vi } from "vitest";
import { parseMeminfo, parseProcStat, parseSystemStat, ProcReader } from "./proc-stats.ts";
import { killGroup } from "../../test/support/kill.ts";

// A /proc/<pid>/stat line whose command name has spaces and parentheses in it.
const STAT =
  "4242 (my (odd) app) S 1 4242 4242 0 -1 4194560 3000 0 0 0 150 50 7 3 20 0 3 0 123456 987654321 2500 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";

const SYSTEM_STAT = `cpu  1000 20 300 50000 400 5 6 7 0 0
cpu0 500 10 150 25000 200 2 3 3 0 0
intr 12345
ctxt 99999
btime 1767225600
processes 4242
`;

const MEMINFO = `MemTotal:        8000000 kB
MemFree:         1000000 kB
MemAvailable:    5000000 kB
Buffers:          100000 kB
Cached:          2000000 kB
`;

describe("proc stats parsing", () => {
  it("reads pid, process group, CPU ticks (own and waited-for children) and resident pages", () => {
    expect(parseProcStat(STAT)).toEqual({ pid: 4242, pgrp: 4242, ticks: 150 + 50 + 7 + 3, rssPages: 2500 });
    expect(parseProcStat("not a stat line")).toBeUndefined();
  });

  it("reads the device's busy CPU ticks and boot time, and its memory", () => {
    expect(parseSystemStat(SYSTEM_STAT)).toEqual({
      busyTicks: 1000 + 20 + 300 + 5 + 6 + 7,
      bootTime: 1767225600,
    });
    expect(parseMeminfo(MEMINFO)).toEqual({
      workingSetBytes: 3_000_000 * 1024,
      usageBytes: 7_000_000 * 1024,
      availableBytes: 5_000_000 * 1024,
    });
    // An old kernel without MemAvailable: free plus the page cache.
    expect(parseMeminfo("MemTotal: 100 kB\nMemFree: 10 kB\nCached: 30 kB\n")?.availableBytes).toBe(40 * 1024);
  });

  it("sums a process group from a /proc tree, in nanoseconds and bytes", async () => {
    const root = mkdtempSync(path.join(os.tmpdir(), "devicelet-proc-"));
    const write = (pid: number, pgrp: number, utime: number, rss: number) => {
      mkdirSync(path.join(root, String(pid)));
      writeFileSync(
        path.join(root, String(pid), "stat"),
        `${pid} (x) S 1 ${pgrp} ${pgrp} 0 -1 0 0 0 0 0 ${utime} 0 0 0 20 0 1 0 1 1 ${rss} 0`,
      );
    };
    write(10, 10, 100, 10);
    write(11, 10, 50, 5);
    write(12, 12, 1000, 1000);
    writeFileSync(path.join(root, "stat"), SYSTEM_STAT);
    writeFileSync(path.join(root, "meminfo"), MEMINFO);
    const reader = new ProcReader({ root, clkTck: 100, pageSize: 4096 });
    const groups = await reader.groups([10]);
    expect(groups.get(10)).toEqual({ cpuNanoSeconds: 1.5e9, rssBytes: 15 * 4096, processes: 2 });
    expect(groups.has(12)).toBe(false);
    const node = await reader.node();
    expect(node).toMatchObject({
      cpuNanoSeconds: Math.round((1338 * 1e9) / 100),
      startTime: new Date(1767225600 * 1000).toISOString(),
    });
  });
});

describe("ProcReader on this machine", () => {
  const children: number[] = [];
  afterEach(() => {
    for (const pid of children.splice(0)) killGroup(pid);
  });

  it("sees a busy process group's CPU grow and its memory", async () => {
    // Busy for as long as the test looks, then idle: its CPU counter must pass 100 ms.
    const child = spawn(
      process.execPath,
      ["-e", "const end = Date.now() + 10000; while (Date.now() < end); setInterval(() => {}, 1000)"],
      { detached: true, stdio: "ignore" },
    );
    const pid = child.pid ?? 0;
    children.push(pid);
    const reader = new ProcReader();
    const usage = await vi.waitFor(
      async () => {
        const found = (await reader.groups([pid])).get(pid);
        expect(found?.cpuNanoSeconds).toBeGreaterThanOrEqual(100_000_000);
        return found;
      },
      { timeout: 9_000, interval: 50 },
    );
    expect(usage?.processes).toBe(1);
    expect(usage?.rssBytes).toBeGreaterThan(10 * 1024 * 1024);
    const node = await reader.node();
    expect(node.cpuNanoSeconds).toBeGreaterThan(0);
    expect(node.memory?.workingSetBytes).toBeGreaterThan(0);
  });
});
