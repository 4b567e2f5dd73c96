/**
 * CPU and memory from Linux `/proc` (proc(5)), for the agent's `stats` message: per app, summed
 * over the app's process group (every app is spawned as the leader of a group of its own;
 * supervisor.ts), and for the whole device.
 *
 *   const proc = new ProcReader();                       // reads CLK_TCK and the page size once
 *   const usage = await proc.groups([1234, 5678]);       // Map pgid → { cpuNanoSeconds, rssBytes }
 *   const node = await proc.node();                      // cpu counter, memory, boot time
 *
 * App CPU: utime + stime of every process in the group, plus cutime + cstime (the children each
 * one has already waited for, which are gone and so counted nowhere else), in clock ticks
 * converted with CLK_TCK. Processes that leave the group (setsid) or that nobody waited for are not
 * counted: a process group is not a cgroup. App memory: the sum of resident pages (statm), so
 * shared pages count once per process; the kubelet's working set (cgroup usage minus inactive
 * file pages) has no per-process equivalent, RSS is the nearest.
 *
 * Device CPU: the `cpu` line of /proc/stat minus idle and iowait. Device memory: MemTotal minus
 * MemAvailable as the working set (what the kernel could not reclaim), MemTotal minus MemFree as
 * usage, MemAvailable as available; boot time from `btime`.
 */
import { execFileSync } from "node:child_process";
import { readdir, readFile } from "node:fs/promises";

/** One process's line of /proc/<pid>/stat, the fields used here. */
export interface ProcStat {
  readonly pid: number;
  readonly pgrp: number;
  /** utime + stime + cutime + cstime, in clock ticks. */
  readonly ticks: number;
  /** Resident set, in pages. */
  readonly rssPages: number;
}

/** Parses /proc/<pid>/stat; undefined when the text is not one. */
export function parseProcStat(text: string): ProcStat | undefined {
  // The command name (field 2) is in parentheses and may itself contain spaces and parentheses.
  const open = text.indexOf("(");
  const close = text.lastIndexOf(")");
  if (open === -1 || close < open) return undefined;
  const pid = Number(text.slice(0, open).trim());
  // Fields from 3 (state) on; field n is at index n - 3.
  const fields = text
    .slice(close + 1)
    .trim()
    .split(/\s+/);
  const field = (n: number) => Number(fields[n - 3]);
  const values = [field(5), field(14), field(15), field(16), field(17), field(24)];
  if (!Number.isInteger(pid) || values.some((v) => !Number.isFinite(v))) return undefined;
  return {
    pid,
    pgrp: field(5),
    ticks: field(14) + field(15) + Math.max(0, field(16)) + Math.max(0, field(17)),
    rssPages: Math.max(0, field(24)),
  };
}

export interface NodeCpu {
  /** Non-idle time over all CPUs, in clock ticks. */
  readonly busyTicks: number;
  /** Boot time, seconds since the epoch. */
  readonly bootTime?: number;
}

/** Parses /proc/stat: the aggregate `cpu` line and `btime`. */
export function parseSystemStat(text: string): NodeCpu | undefined {
  const cpu = /^cpu\s+([\d\s]+)$/m.exec(text)?.[1]?.trim().split(/\s+/).map(Number);
  if (!cpu || cpu.length < 4) return undefined;
  // user nice system idle iowait irq softirq steal guest guest_nice; guest time is already in user.
  const [user = 0, nice = 0, system = 0, , , irq = 0, softirq = 0, steal = 0] = cpu;
  const btime = /^btime\s+(\d+)$/m.exec(text)?.[1];
  return {
    busyTicks: user + nice + system + irq + softirq + steal,
    ...(btime === undefined ? {} : { bootTime: Number(btime) }),
  };
}

export interface NodeMemory {
  readonly workingSetBytes: number;
  readonly usageBytes: number;
  readonly availableBytes: number;
}

/** Parses /proc/meminfo (values in kB). */
export function parseMeminfo(text: string): NodeMemory | undefined {
  const kb = (name: string) => {
    const value = new RegExp(`^${name}:\\s+(\\d+)`, "m").exec(text)?.[1];
    return value === undefined ? undefined : Number(value) * 1024;
  };
  const total = kb("MemTotal");
  const free = kb("MemFree");
  if (total === undefined || free === undefined) return undefined;
  // Kernels before 3.14 have no MemAvailable: free plus page cache is the usual stand-in.
  const available = kb("MemAvailable") ?? free + (kb("Cached") ?? 0);
  return {
    workingSetBytes: Math.max(0, total - available),
    usageBytes: Math.max(0, total - free),
    availableBytes: available,
  };
}

export interface GroupUsage {
  readonly cpuNanoSeconds: number;
  readonly rssBytes: number;
  readonly processes: number;
}

export interface NodeUsage {
  readonly cpuNanoSeconds?: number;
  readonly memory?: NodeMemory;
  readonly startTime?: string;
}

/** `getconf NAME` as a positive integer, or `fallback`. */
function getconf(name: string, fallback: number): number {
  try {
    const value = Number(execFileSync("getconf", [name], { encoding: "utf8", timeout: 2_000 }).trim());
    return Number.isInteger(value) && value > 0 ? value : fallback;
  } catch {
    return fallback;
  }
}

export class ProcReader {
  readonly #root: string;
  readonly #clkTck: number;
  readonly #pageSize: number;

  /** `root`: where proc is mounted (tests point it at fixtures). CLK_TCK and the page size are read once. */
  constructor(options: { root?: string; clkTck?: number; pageSize?: number } = {}) {
    this.#root = options.root ?? "/proc";
    this.#clkTck = options.clkTck ?? getconf("CLK_TCK", 100);
    this.#pageSize = options.pageSize ?? getconf("PAGESIZE", 4096);
  }

  /** Usage of each of the process groups `pgids`, from one pass over the processes. */
  async groups(pgids: readonly number[]): Promise<Map<number, GroupUsage>> {
    const wanted = new Set(pgids);
    const sums = new Map<number, { ticks: number; pages: number; processes: number }>();
    if (wanted.size === 0) return new Map();
    const entries = await readdir(this.#root).catch(() => [] as string[]);
    await Promise.all(
      entries
        .filter((e) => /^\d+$/.test(e))
        .map(async (pid) => {
          const text = await readFile(`${this.#root}/${pid}/stat`, "utf8").catch(() => undefined);
          const stat = text === undefined ? undefined : parseProcStat(text);
          if (!stat || !wanted.has(stat.pgrp)) return;
          const sum = sums.get(stat.pgrp) ?? { ticks: 0, pages: 0, processes: 0 };
          sum.ticks += stat.ticks;
          sum.pages += stat.rssPages;
          sum.processes++;
          sums.set(stat.pgrp, sum);
        }),
    );
    const result = new Map<number, GroupUsage>();
    for (const [pgid, sum] of sums) {
      result.set(pgid, {
        cpuNanoSeconds: Math.round((sum.ticks * 1e9) / this.#clkTck),
        rssBytes: sum.pages * this.#pageSize,
        processes: sum.processes,
      });
    }
    return result;
  }

  /** The device's CPU counter, memory and boot time; what cannot be read is left out. */
  async node(): Promise<NodeUsage> {
    const [stat, meminfo] = await Promise.all([
      readFile(`${this.#root}/stat`, "utf8").catch(() => ""),
      readFile(`${this.#root}/meminfo`, "utf8").catch(() => ""),
    ]);
    const cpu = parseSystemStat(stat);
    const memory = parseMeminfo(meminfo);
    return {
      ...(cpu ? { cpuNanoSeconds: Math.round((cpu.busyTicks * 1e9) / this.#clkTck) } : {}),
      ...(memory ? { memory } : {}),
      ...(cpu?.bootTime === undefined ? {} : { startTime: new Date(cpu.bootTime * 1000).toISOString() }),
    };
  }
}
