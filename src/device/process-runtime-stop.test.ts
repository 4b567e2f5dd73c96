/**
 * Stopping pods in the process runtime (docs/protocol.md § 4): `apply` does not wait out grace
 * periods, a stopping pod is reported `Terminating` until gone, a replaced pod is stopped with the
 * grace period of the version now wanted, and a shorter grace period shortens a stop under way.
 * Real processes that ignore SIGTERM, so only the grace period's SIGKILL ends them.
 */
import { mkdtempSync, readdirSync, readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import pino from "pino";
import { afterEach, describe, expect, it, vi } from "vitest";
import type { DesiredPod } from "../protocol/types.ts";
import { desiredPod, tombstone } from "./fixtures.ts";
import { ProcessRuntime } from "./process-runtime.ts";
import { killProcess } from "../../test/support/kill.ts";

const logger = pino({ level: "silent" });
const runtimes: { r: ProcessRuntime; workDir: string }[] = [];
// The apps ignore SIGTERM and some pods have a 600 s grace period: begin stopping (so nothing is
// restarted), SIGKILL every app this file started (its pid files), then wait until they are gone.
afterEach(async () => {
  for (const { r, workDir } of runtimes.splice(0)) {
    const stopped = r.stop();
    for (const uid of readdirSync(workDir)) {
      let text = "";
      try {
        text = readFileSync(path.join(workDir, uid, "main", "pid"), "utf8");
      } catch {
        // No pid file.
      }
      // An app that was just (re)started may not have written its pid yet: the file reads "".
      killProcess(Number(text));
    }
    await stopped;
  }
});

/** Writes its pid, ignores SIGTERM, runs until killed. `version` only changes the pod's hash. */
const stubborn = (uid: string, graceSeconds: number, version = 1): DesiredPod =>
  desiredPod({
    uid,
    terminationGracePeriodSeconds: graceSeconds,
    apps: [
      {
        name: "main",
        command: [
          process.execPath,
          "-e",
          `require("fs").writeFileSync(process.env.DEVICELET_APP_DIR + "/pid", String(process.pid)); process.on("SIGTERM", () => {}); setInterval(() => {}, 1000); // v${version}`,
        ],
      },
    ],
  });

function runtime() {
  const workDir = mkdtempSync(path.join(os.tmpdir(), "devicelet-stop-"));
  const r = new ProcessRuntime({ workDir, logger, backoff: { initialMs: 50, maxMs: 400 } });
  runtimes.push({ r, workDir });
  // A pid file read as it is written is empty: Number("") is 0, and kill(0, 0) is our own group.
  const pidOf = (uid: string) => {
    const pid = Number(readFileSync(path.join(workDir, uid, "main", "pid"), "utf8"));
    if (!Number.isInteger(pid) || pid <= 1) throw new Error(`no pid in ${uid}'s pid file yet`);
    return pid;
  };
  return { r, pidOf };
}
const alive = (pid: number) => {
  if (pid <= 1) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};
const until = <T>(probe: () => T, timeout = 10_000) => vi.waitFor(probe, { timeout, interval: 20 });

describe("ProcessRuntime stopping pods", () => {
  it("does not wait out a long grace period: the stopping pod is reported Terminating until gone", async () => {
    const { r, pidOf } = runtime();
    const slow = stubborn("slow", 600);
    await r.apply([slow], []);
    await until(() => expect(alive(pidOf("slow"))).toBe(true));
    const pid = pidOf("slow");
    const other = stubborn("other", 1);
    // Resolves with the stop begun; a ten-minute grace period would time this test out otherwise.
    await r.apply([other], []);
    await until(() => expect(r.report().find((p) => p.uid === "other")?.phase).toBe("Running"));
    expect(alive(pid)).toBe(true);
    expect(r.report().find((p) => p.uid === "slow")).toMatchObject({
      hash: slow.hash,
      reason: "Terminating",
      apps: [{ status: { state: "running" } }],
    });
    // A tombstone with grace 0 (a force delete) shortens the stop under way.
    await r.apply([other], [tombstone(slow, 0)]);
    await until(() => expect(alive(pid)).toBe(false));
    await until(() => expect(r.report().map((p) => p.uid)).toEqual(["other"]));
  });

  it("stops a replaced pod with the grace period of the version now wanted, then starts that version", async () => {
    const { r, pidOf } = runtime();
    const v1 = stubborn("p", 600, 1);
    await r.apply([v1], []);
    await until(() => expect(alive(pidOf("p"))).toBe(true));
    const oldPid = pidOf("p");
    const v2 = stubborn("p", 1, 2);
    await r.apply([v2], []);
    // Meanwhile the old version is what runs, reported as such.
    expect(r.report()).toMatchObject([{ uid: "p", hash: v1.hash, reason: "Terminating" }]);
    // v2's one second, not v1's ten minutes.
    await until(() => expect(alive(oldPid)).toBe(false));
    await until(() => expect(r.report()).toMatchObject([{ uid: "p", hash: v2.hash, phase: "Running" }]));
    expect(r.report()[0]?.reason).toBeUndefined();
    await until(() => {
      expect(pidOf("p")).not.toBe(oldPid);
      expect(alive(pidOf("p"))).toBe(true);
    });
  });

  it("starts the newest version only when a pod is replaced twice while its first version stops", async () => {
    const { r, pidOf } = runtime();
    const v1 = stubborn("p", 600, 1);
    await r.apply([v1], []);
    await until(() => expect(alive(pidOf("p"))).toBe(true));
    const oldPid = pidOf("p");
    await r.apply([stubborn("p", 600, 2)], []);
    const v3 = stubborn("p", 1, 3);
    await r.apply([v3], []);
    await until(() => expect(alive(oldPid)).toBe(false));
    await until(() => expect(r.report()).toMatchObject([{ uid: "p", hash: v3.hash, phase: "Running" }]));
  });
});
