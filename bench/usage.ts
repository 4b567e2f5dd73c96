/**
 * What a process under benchmark costs, read from /proc (Linux): CPU seconds used so far (user +
 * system, from `/proc/<pid>/stat` in clock ticks) and resident memory now and at its peak.
 *
 *   const before = cpuSeconds(pid);
 *   // ... load ...
 *   const used = cpuSeconds(pid) - before;
 *   const { rssMiB, peakRssMiB } = memoryMiB(pid);
 *   const open = connectionsTo(pid, 6443); // TCP connections to the API server's port
 */
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync, readlinkSync } from "node:fs";

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

/**
 * The TCP connections `pid` has established to `port` on the far side: its sockets (the inodes its
 * file descriptors name) among the established ones in /proc/<pid>/net/tcp and tcp6. Each is a TLS
 * session with its buffers, so a tool with more open keeps more memory outside its heap.
 */
export function connectionsTo(pid: number, port: number): number {
  const inodes = new Set<string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    let link: string;
    try {
      link = readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue; // closed since the listing
    }
    const inode = /^socket:\[(\d+)\]$/.exec(link)?.[1];
    if (inode !== undefined) inodes.add(inode);
  }
  let count = 0;
  for (const table of ["tcp", "tcp6"]) {
    const lines = readFileSync(`/proc/${pid}/net/${table}`, "utf8").split("\n").slice(1);
    for (const line of lines) {
      // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
      const [, , remote, state, , , , , , inode] = line.trim().split(/\s+/);
      const established = state === "01";
      if (established && inode !== undefined && inodes.has(inode) && remotePort(remote) === port) count++;
    }
  }
  return count;
}

/** The port of an address as /proc/net/tcp writes it (`0100007F:1F90`, hexadecimal). */
const remotePort = (address: string | undefined) => Number.parseInt(address?.split(":")[1] ?? "", 16);
