/**
 * What an agent that did not stop cleanly (SIGKILL, a crash mid-apply, power loss) leaves behind:
 * app processes nobody supervises any more and pod folders of pods no longer wanted. The agent
 * clears both at start, before it runs the persisted pods again.
 *
 *   const saved = await store.load();
 *   await removeLeftovers({ workDir, keep: new Set(saved?.pods.map((p) => p.uid)), logger });
 *
 * Guarantees:
 * - A process is killed only when it is ours: the environment the kernel recorded when it started
 *   (`/proc/<pid>/environ`) carries `DEVICELET_POD_UID` and a `DEVICELET_APP_DIR` inside this
 *   `workDir`, which the process runtime gives every app (its children inherit them). Never by a
 *   pid alone, so a reused pid is safe. Processes of other users, whose environment cannot be read,
 *   are never touched.
 * - Every such process is SIGKILLed, with its process group when it leads one (each app runs in
 *   its own group), including those of pods that are kept: an agent cannot adopt a process it did
 *   not start, so a kept pod's apps start again fresh. Resolves once they and their groups are
 *   gone (or `waitMs` passed; then it logs which are left).
 * - Then every pod folder under `workDir` whose name is not in `keep` is deleted.
 */
import { readdir, readFile, rm } from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { Logger } from "pino";

export interface LeftoverOptions {
  readonly workDir: string;
  /** Uids of the pods the persisted state still wants: their folders stay. */
  readonly keep: ReadonlySet<string>;
  readonly logger: Logger;
  /** Default `/proc`. */
  readonly procDir?: string;
  /** Longest wait for killed processes to go; default 5 s. */
  readonly waitMs?: number;
}

export interface Leftovers {
  /** Pids killed. */
  readonly killed: readonly number[];
  /** Pod folders deleted (names under workDir). */
  readonly removed: readonly string[];
}

export async function removeLeftovers(o: LeftoverOptions): Promise<Leftovers> {
  const procDir = o.procDir ?? "/proc";
  const appDirPrefix = path.resolve(o.workDir) + path.sep;
  const ours = await ourProcesses(procDir, appDirPrefix);
  for (const p of ours) {
    if (p.leader) signal(-p.pid);
    signal(p.pid);
  }
  if (ours.length > 0) {
    o.logger.warn({ pids: ours.map((p) => p.pid) }, "killed app processes left by an earlier agent run");
    const groups = new Set(ours.filter((p) => p.leader).map((p) => p.pid));
    const left = await waitGone(
      procDir,
      ours.map((p) => p.pid),
      groups,
      o.waitMs ?? 5_000,
    );
    if (left.length > 0) o.logger.error({ pids: left }, "leftover app processes did not go away");
  }
  const removed: string[] = [];
  let entries: string[] = [];
  try {
    entries = (await readdir(o.workDir, { withFileTypes: true }))
      .filter((e) => e.isDirectory())
      .map((e) => e.name);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
  for (const name of entries) {
    if (o.keep.has(name)) continue;
    await rm(path.join(o.workDir, name), { recursive: true, force: true, maxRetries: 3 });
    removed.push(name);
  }
  if (removed.length > 0) {
    o.logger.warn({ pods: removed }, "removed pod folders not in the persisted desired state");
  }
  return { killed: ours.map((p) => p.pid), removed };
}

interface ProcessInfo {
  readonly pid: number;
  /** Leads its process group (pgid = pid): the group is the app's. */
  readonly leader: boolean;
}

/** Processes whose start environment marks them as apps under `appDirPrefix`. */
async function ourProcesses(procDir: string, appDirPrefix: string): Promise<ProcessInfo[]> {
  const found: ProcessInfo[] = [];
  for (const name of await readdir(procDir)) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    if (pid === process.pid) continue;
    let environ: string[];
    let stat: Stat | undefined;
    try {
      environ = (await readFile(path.join(procDir, name, "environ"), "latin1")).split("\0");
      stat = parseStat(await readFile(path.join(procDir, name, "stat"), "latin1"));
    } catch {
      continue; // Gone meanwhile, or not ours to read.
    }
    const appDir = environ.find((e) => e.startsWith("DEVICELET_APP_DIR="))?.slice(18);
    const hasPod = environ.some((e) => e.startsWith("DEVICELET_POD_UID="));
    if (!stat || stat.state === "Z" || !hasPod || !appDir?.startsWith(appDirPrefix)) continue;
    found.push({ pid, leader: stat.pgrp === pid });
  }
  return found;
}

interface Stat {
  readonly state: string;
  readonly pgrp: number;
}

/** `pid (comm) state ppid pgrp …`; comm may hold spaces and parentheses, so read after the last `)`. */
function parseStat(text: string): Stat | undefined {
  const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
  const [state, , pgrp] = fields;
  if (state === undefined || pgrp === undefined) return undefined;
  return { state, pgrp: Number(pgrp) };
}

function signal(pid: number): void {
  // A pid or group from /proc is above 1; never kill(0) (our own group) or kill(-1) (everything).
  if (Math.abs(pid) <= 1) return;
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    // Already gone.
  }
}

/**
 * Pids still alive (not gone, not zombies) after waiting up to `waitMs`: of `pids`, and of every
 * process in one of `groups` (a group's other members die as asynchronously as its leader).
 */
async function waitGone(
  procDir: string,
  pids: readonly number[],
  groups: ReadonlySet<number>,
  waitMs: number,
): Promise<number[]> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    const left = new Set<number>();
    const candidates = groups.size > 0 ? await readdir(procDir) : pids.map(String);
    for (const name of candidates) {
      if (!/^\d+$/.test(name)) continue;
      const pid = Number(name);
      const text = await readFile(path.join(procDir, name, "stat"), "latin1").catch(() => "");
      const stat = parseStat(text);
      if (stat === undefined || stat.state === "Z") continue;
      if (pids.includes(pid) || groups.has(stat.pgrp)) left.add(pid);
    }
    if (left.size === 0 || Date.now() >= deadline) return [...left];
    await sleep(50);
  }
}
