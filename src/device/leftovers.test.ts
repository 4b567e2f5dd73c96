import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import pino from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { removeLeftovers } from "./leftovers.ts";
import { killGroup } from "../../test/support/kill.ts";

const logger = pino({ level: "silent" });
const children: ChildProcess[] = [];
/** Process groups of the app stand-ins (each leads its own), killed whole even when a test fails. */
const groups: number[] = [];
afterEach(() => {
  for (const child of children.splice(0)) if (child.exitCode === null) child.kill("SIGKILL");
  for (const group of groups.splice(0)) killGroup(group);
});

/** A process with the environment the process runtime gives an app of `podUid` under `workDir`. */
async function app(workDir: string, podUid: string, extraEnv: Record<string, string> = {}) {
  const appDir = path.join(workDir, podUid, "main");
  mkdirSync(appDir, { recursive: true });
  // Forks a grandchild in its group that has a clean environment: only the group kill reaches it.
  const child = spawn(
    process.execPath,
    [
      "-e",
      'const c=require("child_process").spawn(process.execPath,["-e","setInterval(()=>{},1000)"],{env:{},stdio:"ignore"});console.log(c.pid);setInterval(()=>{},1000)',
    ],
    {
      env: { DEVICELET_POD_UID: podUid, DEVICELET_APP: "main", DEVICELET_APP_DIR: appDir, ...extraEnv },
      detached: true,
      stdio: ["ignore", "pipe", "ignore"],
    },
  );
  children.push(child);
  if (child.pid !== undefined) groups.push(child.pid);
  const grandchild = await new Promise<number>((resolve) =>
    child.stdout.once("data", (chunk: Buffer) => resolve(Number(chunk.toString().trim()))),
  );
  return { pid: child.pid ?? 0, grandchild };
}

/** Running: not gone and not a zombie (a killed child of ours stays one until Node reaps it). */
const alive = (pid: number) => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "latin1");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
};

describe("removeLeftovers", () => {
  it("kills the app processes it left (and their groups), never others, and removes unwanted pod folders", async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "devicelet-leftovers-"));
    const workDir = path.join(dir, "pods");
    const kept = await app(workDir, "kept");
    const dropped = await app(workDir, "dropped");
    // Another agent's app (another work folder whose name starts the same) and a plain process.
    const neighbour = await app(`${workDir}-other`, "kept");
    const plain = spawn(process.execPath, ["-e", "setInterval(()=>{},1000)"], { stdio: "ignore" });
    children.push(plain);
    mkdirSync(path.join(workDir, "stale-folder"), { recursive: true });

    const result = await removeLeftovers({ workDir, keep: new Set(["kept"]), logger });

    for (const pid of [kept.pid, kept.grandchild, dropped.pid, dropped.grandchild]) {
      expect(alive(pid), `pid ${pid}`).toBe(false);
    }
    expect(result.killed).toEqual(expect.arrayContaining([kept.pid, dropped.pid]));
    expect(alive(neighbour.pid)).toBe(true);
    expect(alive(plain.pid ?? 0)).toBe(true);
    expect(existsSync(path.join(workDir, "kept"))).toBe(true);
    expect(existsSync(path.join(workDir, "dropped"))).toBe(false);
    expect(existsSync(path.join(workDir, "stale-folder"))).toBe(false);
    expect(result.removed.toSorted()).toEqual(["dropped", "stale-folder"]);
    killGroup(neighbour.pid);
  });

  it("does nothing when there is no work folder yet", async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "devicelet-leftovers-"));
    expect(await removeLeftovers({ workDir: path.join(dir, "none"), keep: new Set(), logger })).toEqual({
      killed: [],
      removed: [],
    });
  });
});
