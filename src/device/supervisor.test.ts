/**
 * Apps that cannot start: each failure is that app's state, the rest of the document runs, and
 * nothing rejects (an unhandled rejection fails the run here as it would crash the agent).
 */
import { chmodSync, mkdtempSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import pino from "pino";
import { afterAll, afterEach, describe, expect, it, vi } from "vitest";
import type { DesiredPod, ReportedPod } from "../protocol/types.ts";
import { desiredPod, type AppFixture } from "./fixtures.ts";
import { ProcessRuntime } from "./process-runtime.ts";

const logger = pino({ level: "silent" });
const node = process.execPath;
const runtimes: ProcessRuntime[] = [];
const rejections: unknown[] = [];
const onRejection = (reason: unknown) => rejections.push(reason);
process.on("unhandledRejection", onRejection);
afterEach(async () => {
  await Promise.all(runtimes.splice(0).map((r) => r.stop()));
});
afterAll(() => {
  process.off("unhandledRejection", onRejection);
});

const forever = "setInterval(() => {}, 1000)";
const pod = (uid: string, restartPolicy: DesiredPod["restartPolicy"], app: Omit<AppFixture, "name">) =>
  desiredPod({ uid, restartPolicy, terminationGracePeriodSeconds: 1, apps: [{ name: "main", ...app }] });
const until = <T>(probe: () => T) => vi.waitFor(probe, { timeout: 8_000, interval: 10 });

describe("AppSupervisor start failures", () => {
  it("turns each spawn failure into that app's state and still runs the rest of the document", async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "devicelet-spawn-"));
    const notExecutable = path.join(dir, "run.sh");
    writeFileSync(notExecutable, "#!/bin/sh\nexit 0\n");
    chmodSync(notExecutable, 0o644);
    const r = new ProcessRuntime({
      workDir: path.join(dir, "pods"),
      logger,
      backoff: { initialMs: 20, maxMs: 40 },
    });
    runtimes.push(r);
    const pods = [
      pod("nul-env", "Always", { command: [node, "-e", forever], env: { TOKEN: "s3cret\0tail" } }),
      pod("nul-arg", "Always", { command: [node, "-e", forever], args: ["x", "a\0b"] }),
      pod("missing", "Never", { command: [path.join(dir, "no-such-binary")] }),
      pod("not-executable", "Always", { command: [notExecutable] }),
      pod("fine", "Always", { command: [node, "-e", forever] }),
    ];

    await r.apply(pods, []);

    const find = (uid: string): ReportedPod | undefined => r.report().find((p) => p.uid === uid);
    await until(() => {
      expect(find("fine")?.phase).toBe("Running");
      expect(find("missing")).toMatchObject({
        phase: "Failed",
        apps: [{ status: { state: "terminated", exitCode: 128, reason: "StartError" } }],
      });
      // Restarted per policy, each attempt failing the same way (CrashLoopBackOff in between).
      expect(find("not-executable")?.apps[0]).toMatchObject({
        lastStatus: { state: "terminated", exitCode: 128, reason: "StartError" },
      });
      expect(find("not-executable")?.apps[0]?.restartCount).toBeGreaterThanOrEqual(2);
      for (const uid of ["nul-env", "nul-arg"]) {
        expect(find(uid)).toMatchObject({
          phase: "Pending",
          apps: [{ status: { state: "waiting", reason: "CreateContainerConfigError" } }],
        });
      }
    });
    const message = (uid: string, last = false) => {
      const app = find(uid)?.apps[0];
      const status = last ? app?.lastStatus : app?.status;
      return status && "message" in status ? status.message : undefined;
    };
    expect(message("missing")).toMatch(/ENOENT/);
    expect(message("not-executable", true)).toMatch(/EACCES/);
    expect(message("nul-env")).toBe('env "TOKEN" contains a NUL byte');
    expect(message("nul-arg")).toBe("args[1] contains a NUL byte");
    // Back-off retries of the NUL-byte apps ran too: none of them threw where no one listens.
    expect(rejections).toEqual([]);
  });
});
