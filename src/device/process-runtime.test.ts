import { existsSync, mkdtempSync, readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import pino from "pino";
import { afterEach, describe, expect, it, vi } from "vitest";
import type { DesiredPod, ReportedPod } from "../protocol/types.ts";
import { desiredPod, tombstone, type AppFixture } from "./fixtures.ts";
import { ProcessRuntime } from "./process-runtime.ts";

const logger = pino({ level: "silent" });
const node = process.execPath;
const runtimes: ProcessRuntime[] = [];
afterEach(async () => {
  await Promise.all(runtimes.splice(0).map((r) => r.stop()));
});

function runtime(o: { capacity?: Record<string, string>; initialMs?: number } = {}) {
  const workDir = mkdtempSync(path.join(os.tmpdir(), "devicelet-proc-"));
  const r = new ProcessRuntime({
    workDir,
    logger,
    backoff: { initialMs: o.initialMs ?? 50, maxMs: 400 },
    ...(o.capacity ? { capacity: o.capacity } : {}),
  });
  runtimes.push(r);
  return { r, workDir };
}

const script = (name: string, code: string, extra: Partial<AppFixture> = {}): AppFixture => ({
  name,
  command: [node, "-e", code],
  ...extra,
});
const pod = (uid: string, restartPolicy: DesiredPod["restartPolicy"], ...apps: AppFixture[]) =>
  desiredPod({ uid, restartPolicy, terminationGracePeriodSeconds: 1, apps });
const find = (r: ProcessRuntime, uid: string): ReportedPod | undefined =>
  r.report().find((p) => p.uid === uid);
const until = <T>(probe: () => T, timeout = 8_000) => vi.waitFor(probe, { timeout, interval: 10 });
const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe("ProcessRuntime", () => {
  it("runs an app with its env and files under its own root, never at the absolute path", async () => {
    const { r, workDir } = runtime();
    const target = `/tmp/devicelet-should-not-exist-${process.pid}/config.txt`;
    const p = pod(
      "p1",
      "Never",
      script(
        "main",
        `const fs=require("fs");console.log(process.env.GREETING, fs.readFileSync(process.env.DEVICELET_APP_DIR+${JSON.stringify(target)},"utf8"))`,
        {
          env: { GREETING: "hello" },
          files: [{ path: target, encoding: "utf8", content: "from-a-file" }],
        },
      ),
    );
    await r.apply([p], []);
    await until(() => expect(find(r, "p1")?.phase).toBe("Succeeded"));
    expect(await r.logs("p1", "main")).toBe("hello from-a-file\n");
    expect(readFileSync(path.join(workDir, "p1", "main", target), "utf8")).toBe("from-a-file");
    expect(existsSync(target)).toBe(false);
    expect(find(r, "p1")?.apps[0]?.status).toMatchObject({
      state: "terminated",
      exitCode: 0,
      reason: "Completed",
    });
  });

  it("restarts per restart policy with growing restart counts and reports exit codes", async () => {
    const { r } = runtime();
    const pods = [
      pod("always-ok", "Always", script("main", "process.exit(0)")),
      pod("always-bad", "Always", script("main", "process.exit(3)")),
      pod("onfailure-ok", "OnFailure", script("main", "process.exit(0)")),
      pod("onfailure-bad", "OnFailure", script("main", "process.exit(4)")),
      pod("never-bad", "Never", script("main", "process.exit(5)")),
    ];
    await r.apply(pods, []);
    await until(() => {
      expect(find(r, "always-ok")?.apps[0]?.restartCount).toBeGreaterThanOrEqual(3);
      expect(find(r, "always-bad")?.apps[0]?.restartCount).toBeGreaterThanOrEqual(3);
      expect(find(r, "onfailure-bad")?.apps[0]?.restartCount).toBeGreaterThanOrEqual(3);
    });
    expect(find(r, "always-ok")).toMatchObject({ phase: "Running" });
    expect(find(r, "always-bad")?.apps[0]?.lastStatus).toMatchObject({
      state: "terminated",
      exitCode: 3,
      reason: "Error",
    });
    expect(find(r, "onfailure-ok")).toMatchObject({ phase: "Succeeded", apps: [{ restartCount: 0 }] });
    expect(find(r, "never-bad")).toMatchObject({
      phase: "Failed",
      apps: [{ restartCount: 0, status: { state: "terminated", exitCode: 5, reason: "Error" } }],
    });
  });

  it("waits in CrashLoopBackOff between restarts", async () => {
    const { r } = runtime({ initialMs: 300 });
    await r.apply([pod("crash", "Always", script("main", "process.exit(1)"))], []);
    await until(() =>
      expect(find(r, "crash")?.apps[0]).toMatchObject({
        status: { state: "waiting", reason: "CrashLoopBackOff" },
        lastStatus: { state: "terminated", exitCode: 1 },
      }),
    );
  });

  it("stops a tombstoned pod with SIGTERM, then SIGKILL after the grace period, and forgets it", async () => {
    const { r, workDir } = runtime();
    const stubborn = script(
      "main",
      'process.on("SIGTERM",()=>console.log("ignoring SIGTERM"));console.log(process.pid);setInterval(()=>{},1000)',
    );
    const p = pod("stubborn", "Always", stubborn);
    await r.apply([p], []);
    let pid = 0;
    await until(async () => {
      const logs = await r.logs("stubborn", "main");
      pid = Number(/^(\d+)$/m.exec(logs)?.[1] ?? 0);
      expect(logs).toContain("\n");
      expect(pid).toBeGreaterThan(0);
    });
    await r.apply([], [tombstone(p, 1)]);
    // apply returns once the stop has begun (docs/protocol.md § 4); the pod goes after its grace.
    await until(() => {
      expect(find(r, "stubborn")).toBeUndefined();
      expect(existsSync(path.join(workDir, "stubborn"))).toBe(false);
    });
    expect(alive(pid)).toBe(false);
  });

  it("refuses a pod whose app has no command, and pods beyond capacity", async () => {
    const { r } = runtime({ capacity: { pods: "1" } });
    await r.apply([desiredPod({ uid: "nocmd", apps: [{ name: "main" }] })], []);
    expect(find(r, "nocmd")).toMatchObject({ phase: "Pending", reason: "NoCommand" });
    const ok = pod("ok", "Always", script("main", "setInterval(()=>{},1000)"));
    const extra = pod("extra", "Always", script("main", "setInterval(()=>{},1000)"));
    await r.apply([ok, extra], []);
    expect(find(r, "ok")?.phase).toBe("Running");
    expect(find(r, "extra")).toMatchObject({ phase: "Pending", reason: "OutOfpods" });
    // Capacity freed by a later document: the refused pod starts.
    await r.apply([extra], []);
    await until(() => expect(find(r, "extra")?.phase).toBe("Running"));
  });

  it("waits FetchingFiles while a referenced file cannot be fetched, FileIntegrityError when it is wrong", async () => {
    const workDir = mkdtempSync(path.join(os.tmpdir(), "devicelet-proc-"));
    let serve: () => Promise<Buffer> = () => Promise.reject(new Error("connection refused"));
    const r = new ProcessRuntime({
      workDir,
      logger,
      backoff: { initialMs: 20, maxMs: 40 },
      fetcher: () => serve(),
    });
    runtimes.push(r);
    const ref = { url: "https://blobs.example/m", sha256: "a".repeat(64), size: 3 };
    await r.apply(
      [
        pod(
          "ref",
          "Always",
          script("main", "setInterval(()=>{},1000)", { files: [{ path: "/m.bin", ref }] }),
        ),
      ],
      [],
    );
    expect(find(r, "ref")).toMatchObject({
      phase: "Pending",
      apps: [{ status: { state: "waiting", reason: "FetchingFiles" } }],
    });
    serve = () => Promise.resolve(Buffer.from("bad"));
    await until(() =>
      expect(find(r, "ref")?.apps[0]?.status).toMatchObject({ reason: "FileIntegrityError" }),
    );
  });

  it("execs in the app's folder and restarts an app on request", async () => {
    const { r } = runtime();
    await r.apply([pod("p", "Always", script("main", "setInterval(()=>{},1000)", { env: { X: "42" } }))], []);
    const result = await r.exec("p", "main", [
      node,
      "-e",
      "console.log(process.env.X, process.cwd().endsWith('/p/main')); process.exit(7)",
    ]);
    expect(result).toEqual({ exitCode: 7, output: "42 true\n" });
    expect((await r.exec("p", "main", ["/nonexistent/binary"])).exitCode).toBe(127);
    await r.restartApp("p", "main");
    expect(find(r, "p")?.apps[0]).toMatchObject({ restartCount: 1, status: { state: "running" } });
  });
});
