/**
 * What a process under benchmark costs, read from /proc (Linux): CPU seconds used so far (user +
 * system, from `/proc/<pid>/stat` in clock ticks) and resident memory now and at its peak.
 *
 *   const before = cpuSeconds(pid);
 *   // ... load ...
 *   const used = cpuSeconds(pid) - before;
 *   const { rssMiB, peakRssMiB } = memoryMiB(pid);
 */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";

let ticks: number | undefined;

/** Clock ticks per second (`getconf CLK_TCK`), the unit of utime and stime in /proc. */
function clockTicks(): number {
  ticks ??= Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim());
  if (!(ticks > 0)) throw new Error(`getconf CLK_TCK gave no tick rate`);
  return ticks;
}

/** User plus system CPU seconds `pid` has used since it started (its own threads, not children). */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // proc(5): the command name (field 2) is in parentheses and may hold spaces; utime and stime are
  // fields 14 and 15, the 12th and 13th after the closing parenthesis and the state (field 3).
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) throw new Error(`unreadable /proc/${pid}/stat`);
  return (utime + stime) / clockTicks();
}

/** Resident memory now (VmRSS) and at its peak (VmHWM), in MiB to one decimal. */
export function memoryMiB(pid: number): { rssMiB: number; peakRssMiB: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const mib = (field: string) => {
    const kb = Number(new RegExp(`${field}:\\s+(\\d+)`).exec(status)?.[1] ?? Number.NaN);
    return Math.round((kb / 1024) * 10) / 10;
  };
  return { rssMiB: mib("VmRSS"), peakRssMiB: mib("VmHWM") };
}
