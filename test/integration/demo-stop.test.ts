/**
 * `npm start` (hack/demo.ts) stops what it started when its terminal goes away. Run on the suite's
 * control plane, which the demo reuses and so leaves running; what it starts itself (devicelet,
 * and in its own process the broker and the simulated fleet) must be gone once it exits on
 * SIGHUP, as on Ctrl-C. The hang-up goes to the demo's whole process group, devicelet included,
 * as a closing terminal sends it to its foreground group.
 */
import { spawn } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { alive } from "../support/agent.ts";
import { kubectl } from "../support/kubectl.ts";
import { testenvDir } from "../support/testenv.ts";

const repoRoot = path.resolve(import.meta.dirname, "../..");

/** The process ids whose parent is `pid`, from /proc. */
function childrenOf(pid: number): number[] {
  return readdirSync("/proc")
    .filter((entry) => /^\d+$/.test(entry))
    .flatMap((entry) => {
      try {
        const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
        const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
        return ppid === pid ? [Number(entry)] : [];
      } catch {
        return []; // gone meanwhile
      }
    });
}

describe("the demo (hack/demo.ts)", () => {
  afterAll(async () => {
    await kubectl(["delete", "namespace", "devicelet-demo", "--wait=false", "--ignore-not-found"]);
    await kubectl(["delete", "nodes", "-l", "devicelet.dev/demo=true", "--wait=false", "--ignore-not-found"]);
  });

  it("stops devicelet, the broker and the fleet when its terminal hangs up (SIGHUP)", async () => {
    const demo = spawn(process.execPath, [path.join(repoRoot, "hack/demo.ts")], {
      cwd: repoRoot,
      env: { ...process.env, DEVICELET_TESTENV_DIR: testenvDir },
      stdio: ["ignore", "pipe", "pipe"],
      // Its own process group, as a terminal's foreground job.
      detached: true,
    });
    const pid = demo.pid ?? 0;
    let output = "";
    demo.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
    demo.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()));
    const exited = new Promise<number | null>((resolve) => demo.once("exit", (code) => resolve(code)));
    const started = new Promise<void>((resolve, reject) => {
      demo.stdout.on("data", () => {
        if (output.includes("all Running")) resolve();
      });
      void exited.then(() => reject(new Error(`the demo exited before all ran:\n${output}`)));
    });
    await started;
    const devicelet = childrenOf(pid);
    expect(devicelet.length).toBeGreaterThan(0);
    expect(output).toContain("reusing the local control plane");

    process.kill(-pid, "SIGHUP");
    expect(await exited).toBe(0);
    expect(output).toContain("stopping everything the demo started");
    expect(devicelet.filter(alive)).toEqual([]);
    // The control plane it reused is not its to stop.
    expect(await kubectl(["get", "--raw", "/readyz"])).toContain("ok");
  }, 300_000);
});
