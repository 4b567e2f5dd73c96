import { describe, expect, it } from "vitest";
import { FakeClock } from "../base/fake-clock.ts";
import { desiredPod, tombstone } from "./fixtures.ts";
import { admit, podPhase, restartDelay } from "./runtime.ts";
import { SimRuntime } from "./sim-runtime.ts";

describe("SimRuntime", () => {
  it("starts apps after the start time, with one change per timer and none while idle", () => {
    const clock = new FakeClock(Date.parse("2026-01-01T00:00:00Z"));
    const runtime = new SimRuntime({ appStartMs: 100, clock });
    let changes = 0;
    runtime.onChange(() => changes++);
    void runtime.apply([desiredPod({ uid: "a" }), desiredPod({ uid: "b" })], []);
    expect(runtime.report().map((p) => p.phase)).toEqual(["Pending", "Pending"]);
    clock.advance(100);
    expect(runtime.report().map((p) => p.phase)).toEqual(["Running", "Running"]);
    expect(runtime.runningPods()).toEqual(["a", "b"]);
    expect(clock.pending).toBe(0);
    expect(changes).toBe(3);
  });

  it("crashes the configured fraction of starts and restarts them with back-off", () => {
    const clock = new FakeClock(0);
    const runtime = new SimRuntime({ failureRate: 1, clock, backoff: { initialMs: 1000, maxMs: 4000 } });
    void runtime.apply(
      [desiredPod({ uid: "a", restartPolicy: "Always" }), desiredPod({ uid: "n", restartPolicy: "Never" })],
      [],
    );
    expect(runtime.report()[0]?.apps[0]).toMatchObject({
      status: { state: "waiting", reason: "CrashLoopBackOff" },
      lastStatus: { state: "terminated", exitCode: 1 },
      restartCount: 0,
    });
    expect(runtime.report()[1]).toMatchObject({ phase: "Failed" });
    clock.advance(1000 + 2000 + 4000);
    expect(runtime.report()[0]?.apps[0]?.restartCount).toBe(3);
  });

  it("forgets tombstoned pods and keeps unchanged ones as they are", async () => {
    const runtime = new SimRuntime();
    const [a, b] = [desiredPod({ uid: "a" }), desiredPod({ uid: "b" })];
    await runtime.apply([a, b], []);
    await runtime.restartApp("b", "main");
    await runtime.apply([b], [tombstone(a)]);
    expect(runtime.report()).toMatchObject([{ uid: "b", apps: [{ restartCount: 1 }] }]);
  });
});

describe("kubelet rules", () => {
  it("doubles the back-off up to its cap", () => {
    const o = { initialMs: 10_000, maxMs: 300_000 };
    expect([1, 2, 3, 6, 50].map((n) => restartDelay(n, o))).toEqual([
      10_000, 20_000, 40_000, 300_000, 300_000,
    ]);
  });

  it("computes pod phase from app states", () => {
    const run = { status: { state: "running", startedAt: "x" }, started: true, final: false } as const;
    const ok = {
      status: { state: "terminated", exitCode: 0, reason: "Completed", finishedAt: "x" },
      started: true,
      final: true,
    } as const;
    const bad = {
      status: { state: "terminated", exitCode: 2, reason: "Error", finishedAt: "x" },
      started: true,
      final: true,
    } as const;
    const wait = {
      status: { state: "waiting", reason: "ContainerCreating" },
      started: false,
      final: false,
    } as const;
    const backoff = {
      status: { state: "waiting", reason: "CrashLoopBackOff" },
      started: true,
      final: false,
    } as const;
    const phases = [[wait], [run, wait], [run, backoff], [ok, run], [ok, ok], [ok, bad]].map((apps) =>
      podPhase(apps),
    );
    expect(phases).toEqual(["Pending", "Pending", "Running", "Running", "Succeeded", "Failed"]);
  });

  it("admits existing pods first and refuses what does not fit by cpu, memory or count", () => {
    const withRequests = (uid: string, cpu: string, memory = "1Mi") =>
      desiredPod({ uid, apps: [{ name: "main", resources: { requests: { cpu, memory } } }] });
    const pods = [withRequests("new", "600m"), withRequests("old", "500m"), withRequests("big", "1", "2Gi")];
    const refused = admit(pods, { cpu: "1", memory: "1Gi", pods: "10" }, new Set(["old"]));
    expect([...refused.keys()].sort()).toEqual(["big", "new"]);
    expect(refused.get("new")?.reason).toBe("OutOfcpu");
  });
});
