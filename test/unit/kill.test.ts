/**
 * test/support/kill.ts: a pid read from an empty pid file, a failed spawn's `?? 0`, or the caller's
 * own pid never reaches the caller's process group. Run in a child that leads its own group, so a
 * regression kills only that child (SIGKILL) and the test sees it.
 */
import { spawnSync } from "node:child_process";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { describe, expect, it } from "vitest";
import { killGroup, killProcess } from "../support/kill.ts";

const killUrl = pathToFileURL(path.join(import.meta.dirname, "../support/kill.ts")).href;

describe("killProcess and killGroup", () => {
  it("refuse 0, NaN, undefined and the caller itself, and the caller's group lives on", () => {
    const script = `
      const { killGroup, killProcess } = await import(${JSON.stringify(killUrl)});
      const sent = [killProcess(Number("")), killGroup(0), killProcess(NaN), killGroup(undefined),
        killProcess(process.pid), killGroup(process.pid), killProcess(-process.pid)];
      process.stdout.write(JSON.stringify(sent));`;
    const child = spawnSync(process.execPath, ["--input-type=module", "-e", script], {
      encoding: "utf8",
      timeout: 20_000,
      detached: true,
    });
    expect(child.signal).toBeNull();
    expect(child.status).toBe(0);
    expect(JSON.parse(child.stdout)).toEqual([false, false, false, false, false, false, false]);
  });

  it("signal a real process and its group", async () => {
    const { spawn } = await import("node:child_process");
    const child = spawn(process.execPath, ["-e", "setInterval(() => {}, 1000)"], {
      detached: true,
      stdio: "ignore",
    });
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.once("exit", (_c, s) => resolve(s)));
    expect(killGroup(child.pid)).toBe(true);
    expect(await exited).toBe("SIGKILL");
    expect(killProcess(child.pid)).toBe(false); // gone (reaped)
  });
});
