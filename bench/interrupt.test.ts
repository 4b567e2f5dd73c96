/**
 * bench/interrupt.ts: a bench told to stop ends what it started. Each case runs a real process
 * that installs the handlers and starts processes as a bench does (children in its process group,
 * daemons in their own session, one that ignores SIGTERM), then signals that process alone and
 * checks, by pid, that everything it started is gone, in the order the module promises.
 */
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { pathToFileURL } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { descendants } from "./interrupt.ts";

const moduleUrl = pathToFileURL(path.join(import.meta.dirname, "interrupt.ts")).href;
const dir = mkdtempSync(path.join(os.tmpdir(), "devicelet-bench-interrupt-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Started {
  pid: number;
  client: number;
  stubborn: number;
  daemon: number;
  registered: number;
}

/** What the registered step saw when it ran: which of the others were still running. */
interface Seen {
  client: boolean;
  stubborn: boolean;
  daemon: boolean;
}

/** A bench-like process; prints the pids it started once its handlers are in place. */
function benchLike(name: string) {
  const seenFile = path.join(dir, `${name}.seen.json`);
  const forgottenFile = path.join(dir, `${name}.forgotten`);
  const stepFile = path.join(dir, `${name}.step`);
  const script = `
    const { stopOnSignals, onInterrupt } = await import(${JSON.stringify(moduleUrl)});
    const { spawn } = await import("node:child_process");
    const { existsSync, readFileSync, writeFileSync } = await import("node:fs");
    const { setTimeout: sleep } = await import("node:timers/promises");
    const running = (pid) => existsSync("/proc/" + pid) && !/\\) Z /.test(readFileSync("/proc/" + pid + "/stat", "utf8"));
    stopOnSignals({ graceMs: 1000, log: () => {} });
    const client = spawn("sleep", ["600"], { stdio: "ignore" });
    const stubborn = spawn(process.execPath, ["-e", "process.on('SIGTERM', () => {}); setInterval(() => {}, 1000)"], { stdio: "ignore" });
    const daemon = spawn("sleep", ["600"], { detached: true, stdio: "ignore" });
    const registered = spawn("sleep", ["600"], { detached: true, stdio: "ignore" });
    onInterrupt("registered", async () => {
      const seen = { client: running(client.pid), stubborn: running(stubborn.pid), daemon: running(daemon.pid) };
      writeFileSync(${JSON.stringify(stepFile)}, "");
      await sleep(500);
      registered.kill("SIGTERM");
      writeFileSync(${JSON.stringify(seenFile)}, JSON.stringify(seen));
    });
    const forget = onInterrupt("forgotten", async () => writeFileSync(${JSON.stringify(forgottenFile)}, "ran"));
    forget();
    // Let the stubborn child install its handler before anyone signals it.
    await sleep(500);
    process.stdout.write(JSON.stringify({ pid: process.pid, client: client.pid, stubborn: stubborn.pid,
      daemon: daemon.pid, registered: registered.pid }) + "\\n");
    setInterval(() => {}, 1000);`;
  const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
    detached: true,
    stdio: ["ignore", "pipe", "inherit"],
  });
  const started = new Promise<Started>((resolve, reject) => {
    let out = "";
    child.stdout.on("data", (chunk: Buffer) => {
      out += chunk.toString();
      if (out.includes("\n")) resolve(JSON.parse(out) as Started);
    });
    child.once("exit", (code) => reject(new Error(`exited with ${String(code)} before it started`)));
  });
  const exited = new Promise<[number | null, NodeJS.Signals | null]>((resolve) =>
    child.once("exit", (code, signal) => resolve([code, signal])),
  );
  return {
    started,
    exited,
    seen: () => JSON.parse(readFileSync(seenFile, "utf8")) as Seen,
    /** Resolves once the registered step has begun. */
    stepBegun: async () => {
      while (!existsSync(stepFile)) await sleep(20);
    },
    forgottenRan: () => {
      try {
        readFileSync(forgottenFile);
        return true;
      } catch {
        return false;
      }
    },
  };
}

const running = (pid: number) => {
  try {
    return !/\) Z /.test(readFileSync(`/proc/${String(pid)}/stat`, "utf8"));
  } catch {
    return false;
  }
};

describe.runIf(process.platform === "linux")("stopOnSignals", () => {
  it("on SIGTERM ends its group's children, then the registered steps, then the rest, and exits 143", async () => {
    const bench = benchLike("term");
    const s = await bench.started;
    expect(descendants(s.pid).sort()).toEqual([s.client, s.stubborn, s.daemon, s.registered].sort());

    process.kill(s.pid, "SIGTERM");
    expect(await bench.exited).toEqual([143, null]);

    // Its own group's children (the stubborn one by SIGKILL) ended before the registered step ran;
    // a daemon in its own session was still running then, and was ended after it.
    expect(bench.seen()).toEqual({ client: false, stubborn: false, daemon: true });
    expect(bench.forgottenRan()).toBe(false);
    for (const pid of [s.client, s.stubborn, s.daemon, s.registered])
      expect(running(pid), `pid ${String(pid)}`).toBe(false);
  });

  it("stops once, whatever signals come while it stops, and exits 130 on SIGINT", async () => {
    const bench = benchLike("int");
    const s = await bench.started;

    // Ctrl-C under npm: SIGINT from the terminal and again from npm. Two sent at once may reach the
    // process as one, so more come while the registered step runs.
    process.kill(s.pid, "SIGINT");
    process.kill(s.pid, "SIGINT");
    await bench.stepBegun();
    process.kill(s.pid, "SIGINT");
    process.kill(s.pid, "SIGTERM");
    expect(await bench.exited).toEqual([130, null]);

    // The later signals did not start a second stop that ended the first's step (500 ms) early.
    expect(bench.seen()).toEqual({ client: false, stubborn: false, daemon: true });
    for (const pid of [s.client, s.stubborn, s.daemon, s.registered])
      expect(running(pid), `pid ${String(pid)}`).toBe(false);
  });
});

describe("descendants", () => {
  it("follows parent pids from the root and leaves out zombies and other trees", () => {
    const proc = mkdtempSync(path.join(dir, "proc-"));
    const stat = (pid: number, ppid: number, state = "S", comm = "node") => {
      const d = path.join(proc, String(pid));
      mkdirSync(d);
      writeFileSync(
        path.join(d, "stat"),
        `${String(pid)} (${comm}) ${state} ${String(ppid)} ${String(pid)} 0 0`,
      );
    };
    stat(10, 1);
    stat(11, 10, "S", "sh -c (x) y"); // a command name with spaces and parentheses
    stat(12, 11);
    stat(13, 10, "Z");
    stat(20, 1);
    stat(21, 20);
    expect(descendants(10, proc).sort()).toEqual([11, 12]);
    expect(descendants(20, proc)).toEqual([21]);
    expect(descendants(12, proc)).toEqual([]);
  });
});
