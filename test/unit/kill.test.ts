/**
 * test/support/kill.ts: a pid read from an empty pid file, a failed spawn's `?? 0`, or the caller's
 * own pid never reaches the caller's process group. Run in a child that leads its own group, so a
 * regression kills only that child (SIGKILL) and the test sees it.
 */
import { spawn } from "node:child_process";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { describe, expect, it } from "vitest";
import { killGroup, killProcess } from "../support/kill.ts";

const killUrl = pathToFileURL(path.join(import.meta.dirname, "../support/kill.ts")).href;

describe("killProcess and killGroup", () => {
  it("refuse 0, NaN, undefined and the caller itself, and the caller's group lives on", async () => {
    const script = `
      const { killGroup, killProcess } = await import(${JSON.stringify(killUrl)});
      const sent = [killProcess(Number("")), killGroup(0), killProcess(NaN), killGroup(undefined),
        killProcess(process.pid), killGroup(process.pid), killProcess(-process.pid)];
      process.stdout.write(JSON.stringify(sent));`;
    // Detached: the child leads its own group, the only one a kill(0) from it could reach.
    const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
      detached: true,
      stdio: ["ignore", "pipe", "inherit"],
    });
    let out = "";
    child.stdout.on("data", (chunk: Buffer) => (out += chunk.toString()));
    const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) =>
      child.once("close", (c, s) => resolve([c, s])),
    );
    expect(signal).toBeNull();
    expect(code).toBe(0);
    expect(JSON.parse(out)).toEqual([false, false, false, false, false, false, false]);
  });

  it("signal a real process and its group", async () => {
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
