/**
 * What a bench does when it is told to stop before it is done (SIGINT, SIGTERM, SIGHUP): it stops
 * what it started and exits, instead of leaving devicelet, KWOK, Mosquitto and a control plane
 * running. Without this, Node.js's default for those signals ends the bench at once, its `finally`
 * blocks never run, and the processes it started on their own session (the control plane's daemons,
 * Mosquitto) outlive it even on Ctrl-C, which reaches only the terminal's process group.
 *
 *   stopOnSignals();                                   // once, at the start of the bench process
 *   const forget = onInterrupt("control plane", () => down({ dir }));
 *   ...
 *   forget();                                          // stopped by the ordinary path
 *
 * On the first signal, in this order, each step bounded by `graceMs` (then SIGKILL):
 * 1. every process started from this one in its own process group (devicelet, KWOK, kubectl) gets
 *    SIGTERM, so clients end before their API server does;
 * 2. the steps registered with {@link onInterrupt} run, last registered first;
 * 3. whatever was started from this one and is still running (Mosquitto, a daemon nobody
 *    registered) gets SIGTERM.
 * Then the process exits with 128 + the signal's number. Further signals while it stops are
 * ignored: Ctrl-C under `npm run` delivers SIGINT twice (from the terminal and from npm).
 * Processes are found by following parent pids in /proc from this process, so only what this
 * bench started is ever signalled, and by pid.
 */
import { readdirSync, readFileSync } from "node:fs";
import { constants } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";

type Step = { what: string; run: () => Promise<unknown> };

const steps = new Set<Step>();

/** Registers `run` to be awaited when the bench is told to stop; returns a function that unregisters it. */
export function onInterrupt(what: string, run: () => Promise<unknown>): () => void {
  const step = { what, run };
  steps.add(step);
  return () => steps.delete(step);
}

/** Installs the handlers (see the module comment); call once per process. */
export function stopOnSignals(o: { graceMs?: number; log?: (line: string) => void } = {}): void {
  const graceMs = o.graceMs ?? 15_000;
  const log = o.log ?? ((line: string) => console.error(`[bench] ${line}`));
  let stopping = false;
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    log(`${signal}: stopping what this bench started`);
    void stopAll(graceMs, log).finally(() => process.exit(128 + constants.signals[signal]));
  };
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.on(signal, stop);
}

async function stopAll(graceMs: number, log: (line: string) => void): Promise<void> {
  const group = processGroup(process.pid);
  await endAll(
    descendants(process.pid).filter((pid) => processGroup(pid) === group),
    graceMs,
  );
  for (const step of [...steps].reverse()) {
    steps.delete(step);
    const failed = await Promise.race([
      step.run().then(
        () => undefined,
        (err: unknown) => (err instanceof Error ? err.message : String(err)),
      ),
      sleep(graceMs * 2).then(() => `still running after ${String((graceMs * 2) / 1000)} s`),
    ]);
    log(failed === undefined ? `stopped ${step.what}` : `stopping ${step.what}: ${failed}`);
  }
  await endAll(descendants(process.pid), graceMs);
}

/** SIGTERM to each of `pids`, SIGKILL to those still running after `graceMs`; resolves when all are gone. */
async function endAll(pids: readonly number[], graceMs: number): Promise<void> {
  for (const pid of pids) signal(pid, "SIGTERM");
  const deadline = Date.now() + graceMs;
  while (pids.some(alive)) {
    if (Date.now() > deadline) {
      for (const pid of pids.filter(alive)) signal(pid, "SIGKILL");
      break;
    }
    await sleep(100);
  }
  while (pids.some(alive)) await sleep(50);
}

function signal(pid: number, name: NodeJS.Signals): void {
  try {
    process.kill(pid, name);
  } catch {
    // Gone since it was listed.
  }
}

/** Whether `pid` runs: it exists and is not a zombie waiting for its parent to reap it. */
function alive(pid: number): boolean {
  const stat = readStat(pid);
  return stat !== undefined && stat.state !== "Z";
}

/** The processes descended from `root` (children, their children, ...), now; zombies left out. */
export function descendants(root: number, procDir = "/proc"): number[] {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync(procDir)) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = readStat(Number(entry), procDir);
    if (!stat || stat.state === "Z") continue;
    const siblings = children.get(stat.ppid);
    if (siblings) siblings.push(Number(entry));
    else children.set(stat.ppid, [Number(entry)]);
  }
  const found: number[] = [];
  const next = [root];
  for (let pid = next.pop(); pid !== undefined; pid = next.pop()) {
    for (const child of children.get(pid) ?? []) {
      found.push(child);
      next.push(child);
    }
  }
  return found;
}

function processGroup(pid: number): number | undefined {
  return readStat(pid)?.pgrp;
}

/**
 * The fields of /proc/<pid>/stat used here. The command name (field 2) is in parentheses and may
 * hold spaces and parentheses itself, so the fields after it are read from its last ")".
 */
function readStat(pid: number, procDir = "/proc"): { state: string; ppid: number; pgrp: number } | undefined {
  let text: string;
  try {
    text = readFileSync(`${procDir}/${String(pid)}/stat`, "utf8");
  } catch {
    return undefined;
  }
  const [state = "", ppid = "", pgrp = ""] = text.slice(text.lastIndexOf(")") + 2).split(" ");
  return { state, ppid: Number(ppid), pgrp: Number(pgrp) };
}
