import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { ReportedApp, ReportedPod } from "../../src/protocol/types.ts";
import { withUsablePodIP, workloadStatusFor, type StatusInput } from "./status-map.ts";

const NOW = new Date("2026-03-01T12:00:00.000Z");
const T = "2026-03-01T11:59:00.000Z";
const H1 = "1".repeat(64);
const H2 = "2".repeat(64);
const pod = { namespace: "default", name: "sensor-0", uid: "u-1" };

const app = (name: string, status: ReportedApp["status"], extra: Partial<ReportedApp> = {}): ReportedApp => ({
  name,
  image: `registry.example/${name}:2`,
  status,
  ready: status.state === "running",
  restartCount: 0,
  ...extra,
});
const report = (over: Partial<ReportedPod> = {}): ReportedPod => ({
  uid: pod.uid,
  hash: H1,
  phase: "Running",
  apps: [
    app("sensor", { state: "running", startedAt: T }),
    app("uplink", { state: "running", startedAt: T }),
  ],
  ...over,
});
const input = (over: Partial<StatusInput> = {}): StatusInput => ({
  pod,
  desiredHash: H1,
  appNames: ["sensor", "uplink"],
  images: { sensor: "registry.example/sensor:2", uplink: "registry.example/uplink:2" },
  presence: "online",
  delivery: "applied",
  now: NOW,
  ...over,
});
const waitingReasons = (s: ReturnType<typeof workloadStatusFor>) =>
  s.apps.map((a) => (a.state.kind === "waiting" ? a.state.reason : a.state.kind));

describe("workloadStatusFor: Running only for the desired hash", () => {
  it("is Running when the device reports the desired hash Running", () => {
    const s = workloadStatusFor(input({ reported: report(), address: "10.0.0.7" }));
    expect(s).toMatchObject({
      phase: "Running",
      deviceConnected: true,
      podIP: "10.0.0.7",
      observedAt: NOW,
      pod,
    });
    expect(s.apps[0]).toEqual({
      name: "sensor",
      image: "registry.example/sensor:2",
      state: { kind: "running", startedAt: new Date(T) },
      ready: true,
      restartCount: 0,
    });
  });

  it("keeps an older version's app states, but as Pending/Updating", () => {
    const s = workloadStatusFor(input({ desiredHash: H2, delivery: "received", reported: report() }));
    expect(s).toMatchObject({ phase: "Pending", reason: "Updating" });
    expect(s.message).toContain("older version");
    expect(s.apps.map((a) => a.state.kind)).toEqual(["running", "running"]);
  });

  it("says an update is queued behind an offline device in the Updating message", () => {
    const s = workloadStatusFor(
      input({ desiredHash: H2, delivery: "queued", presence: "lost", reported: report() }),
    );
    expect(s).toMatchObject({ phase: "Pending", reason: "Updating", deviceConnected: false });
    expect(s.message).toContain("lost");
  });

  it("ignores a report about another pod with the same name", () => {
    const s = workloadStatusFor(input({ delivery: "queued", reported: report({ uid: "u-old" }) }));
    expect(s).toMatchObject({ phase: "Pending", reason: "Queued" });
  });

  it("never says Running when the device says Pending, and passes its reason on", () => {
    const waiting = app("sensor", { state: "waiting", reason: "FetchingFiles", message: "2 of 3" });
    const s = workloadStatusFor(
      input({ reported: report({ phase: "Pending", reason: "FetchingFiles", apps: [waiting] }) }),
    );
    expect(s).toMatchObject({ phase: "Pending", reason: "FetchingFiles" });
    expect(s.apps[0]?.state).toEqual({ kind: "waiting", reason: "FetchingFiles", message: "2 of 3" });
    expect(s.apps[1]?.state).toMatchObject({ kind: "waiting", reason: "ContainerCreating" });
  });
});

describe("workloadStatusFor: before the device runs it", () => {
  it.each([
    ["offline", "DeviceOffline"],
    ["lost", "DeviceOffline"],
    ["unknown", "DeviceOffline"],
    ["online", "Queued"],
  ] as const)("queued for a device that is %s: %s", (presence, reason) => {
    const s = workloadStatusFor(input({ presence, delivery: "queued" }));
    expect(s).toMatchObject({ phase: "Pending", reason, deviceConnected: presence === "online" });
    expect(waitingReasons(s)).toEqual([reason, reason]);
    expect(s.apps.map((a) => a.image)).toEqual(["registry.example/sensor:2", "registry.example/uplink:2"]);
  });

  it("a sleeping device: DeviceSleeping, with the wake time", () => {
    const s = workloadStatusFor(
      input({ presence: "sleeping", wakeAt: "2026-03-01T12:15:00Z", delivery: "queued" }),
    );
    expect(s).toMatchObject({ phase: "Pending", reason: "DeviceSleeping", deviceConnected: false });
    expect(s.message).toContain("2026-03-01T12:15:00.000Z");
    const noTime = workloadStatusFor(input({ presence: "sleeping", wakeAt: "soon", delivery: "queued" }));
    expect(noTime).toMatchObject({
      reason: "DeviceSleeping",
      message: "the device is sleeping; the workload is queued",
    });
  });

  it.each(["received", "applied"] as const)("%s but not reported yet: Applying", (delivery) => {
    const s = workloadStatusFor(input({ delivery }));
    expect(s).toMatchObject({ phase: "Pending", reason: "Applying" });
    expect(waitingReasons(s)).toEqual(["Applying", "Applying"]);
  });

  it("a rejected document: Pending/DeviceRejected with the device's words, apps waiting with that reason", () => {
    const rejection = { reason: "InsufficientMemory", message: "needs 512Mi, 180Mi free" };
    const s = workloadStatusFor(input({ delivery: "rejected", rejection, presence: "offline" }));
    expect(s).toMatchObject({ phase: "Pending", reason: "DeviceRejected" });
    expect(s.message).toBe("InsufficientMemory: needs 512Mi, 180Mi free");
    expect(s.apps.map((a) => a.state)).toEqual([
      { kind: "waiting", reason: "DeviceRejected", message: s.message },
      { kind: "waiting", reason: "DeviceRejected", message: s.message },
    ]);
  });

  it("a rejected update while the old version runs: still DeviceRejected, apps as the device says", () => {
    const s = workloadStatusFor(input({ desiredHash: H2, delivery: "rejected", reported: report() }));
    expect(s).toMatchObject({ phase: "Pending", reason: "DeviceRejected" });
    expect(s.apps.map((a) => a.state.kind)).toEqual(["running", "running"]);
  });

  it("a report of the desired hash wins over a rejection of another document", () => {
    const s = workloadStatusFor(input({ delivery: "rejected", reported: report() }));
    expect(s.phase).toBe("Running");
  });
});

describe("workloadStatusFor: terminal phases and app states", () => {
  const exited = (name: string, exitCode: number) =>
    app(name, {
      state: "terminated",
      exitCode,
      reason: exitCode === 0 ? "Completed" : "Error",
      finishedAt: T,
    });

  it("Failed when the device says so and every app has terminated (restartPolicy Never)", () => {
    const s = workloadStatusFor(
      input({ reported: report({ phase: "Failed", apps: [exited("sensor", 3), exited("uplink", 0)] }) }),
    );
    expect(s.phase).toBe("Failed");
    expect(s.apps[0]?.state).toEqual({
      kind: "terminated",
      exitCode: 3,
      reason: "Error",
      finishedAt: new Date(T),
    });
  });

  it("Succeeded when every app exited and the device says Succeeded", () => {
    const s = workloadStatusFor(
      input({ reported: report({ phase: "Succeeded", apps: [exited("sensor", 0), exited("uplink", 0)] }) }),
    );
    expect(s.phase).toBe("Succeeded");
  });

  it("never a terminal phase while an app still runs, nor for an older hash", () => {
    const running = app("uplink", { state: "running", startedAt: T });
    const partly = workloadStatusFor(
      input({ reported: report({ phase: "Failed", apps: [exited("sensor", 1), running] }) }),
    );
    expect(partly.phase).toBe("Pending");
    const old = workloadStatusFor(
      input({
        desiredHash: H2,
        reported: report({ phase: "Failed", apps: [exited("sensor", 1), exited("uplink", 1)] }),
      }),
    );
    expect(old).toMatchObject({ phase: "Pending", reason: "Updating" });
  });

  it("maps last states, restart counts and readiness; apps follow the spec order", () => {
    const crashed = app(
      "uplink",
      { state: "waiting", reason: "CrashLoopBackOff", message: "back-off 40s" },
      {
        lastStatus: { state: "terminated", exitCode: 137, reason: "OOMKilled", startedAt: T, finishedAt: T },
        restartCount: 4,
        ready: true,
      },
    );
    const extra = app("sidecar", { state: "running", startedAt: T });
    const s = workloadStatusFor(
      input({
        reported: report({ apps: [extra, crashed, app("sensor", { state: "running", startedAt: T })] }),
      }),
    );
    expect(s.apps.map((a) => a.name)).toEqual(["sensor", "uplink"]);
    expect(s.apps[1]).toEqual({
      name: "uplink",
      image: "registry.example/uplink:2",
      state: { kind: "waiting", reason: "CrashLoopBackOff", message: "back-off 40s" },
      lastState: {
        kind: "terminated",
        exitCode: 137,
        reason: "OOMKilled",
        startedAt: new Date(T),
        finishedAt: new Date(T),
      },
      ready: false,
      restartCount: 4,
    });
  });

  it("an app the device does not report waits as ContainerCreating, with the spec image", () => {
    const s = workloadStatusFor(
      input({ reported: report({ apps: [app("sensor", { state: "running", startedAt: T })] }) }),
    );
    expect(s.apps[1]).toEqual({
      name: "uplink",
      image: "registry.example/uplink:2",
      state: {
        kind: "waiting",
        reason: "ContainerCreating",
        message: "the device has not reported this app yet",
      },
      ready: false,
      restartCount: 0,
    });
  });

  it("has no podIP without an address", () => {
    expect(workloadStatusFor(input({ reported: report() }))).not.toHaveProperty("podIP");
  });
});

describe("workloadStatusFor: robustness", () => {
  const junk = fc.anything({ maxDepth: 2 });
  const loose = <T>(arb: fc.Arbitrary<T>) =>
    fc.oneof({ arbitrary: arb, weight: 6 }, { arbitrary: junk, weight: 1 });
  const time = fc.oneof(
    fc.date({ noInvalidDate: true }).map((d) => d.toISOString()),
    fc.string({ maxLength: 30 }),
  );
  const appState = fc.oneof(
    fc.record({ state: fc.constant("waiting"), reason: loose(fc.string()), message: loose(fc.string()) }),
    fc.record({ state: fc.constant("running"), startedAt: loose(time) }),
    fc.record({
      state: fc.constant("terminated"),
      exitCode: loose(fc.integer()),
      reason: loose(fc.string()),
      finishedAt: loose(time),
    }),
    junk,
  );
  const names = fc.constantFrom("sensor", "uplink", "x");
  const reportedApp = fc.record(
    {
      name: loose(names),
      image: loose(fc.string()),
      status: appState,
      lastStatus: appState,
      ready: loose(fc.boolean()),
      restartCount: loose(fc.integer()),
    },
    { requiredKeys: ["name", "status"] },
  );
  const reported = fc.record({
    uid: fc.constantFrom(pod.uid, "other"),
    hash: fc.constantFrom(H1, H2),
    phase: loose(fc.constantFrom("Pending", "Running", "Succeeded", "Failed")),
    reason: loose(fc.string()),
    apps: loose(fc.array(reportedApp, { maxLength: 4 })),
  });
  const statusInput = fc.record(
    {
      pod: fc.constant(pod),
      desiredHash: fc.constantFrom(H1, H2),
      appNames: fc.array(names, { maxLength: 3 }),
      images: fc.dictionary(names, fc.string()),
      presence: fc.constantFrom("online", "offline", "lost", "sleeping", "unknown"),
      wakeAt: time,
      delivery: fc.constantFrom("queued", "received", "applied", "rejected"),
      rejection: fc.record({ reason: fc.string(), message: fc.string() }),
      reported: loose(reported),
      address: fc.string({ maxLength: 15 }),
      now: fc.date({ noInvalidDate: true }),
    },
    { requiredKeys: ["pod", "desiredHash", "appNames", "images", "presence", "delivery", "now"] },
  ) as fc.Arbitrary<StatusInput>;

  it("never throws, and never claims more than the device reported", () => {
    fc.assert(
      fc.property(statusInput, (i) => {
        const s = workloadStatusFor(i);
        const r = i.reported as Partial<ReportedPod> | null | undefined;
        const current = typeof r === "object" && r !== null && r.uid === pod.uid && r.hash === i.desiredHash;
        if (s.phase === "Running") expect(current && r.phase === "Running").toBe(true);
        if (s.phase === "Succeeded" || s.phase === "Failed") {
          expect(current && r.phase === s.phase).toBe(true);
          expect(s.apps.every((a) => a.state.kind === "terminated")).toBe(true);
        }
        expect(s.apps.map((a) => a.name)).toEqual(i.appNames);
        expect(s.deviceConnected).toBe(i.presence === "online");
        expect(s.podIP).toBe(i.address ? i.address : undefined);
        for (const a of s.apps) {
          expect(Number.isSafeInteger(a.restartCount) && a.restartCount >= 0).toBe(true);
          if (a.ready) expect(a.state.kind).toBe("running");
          for (const state of [a.state, a.lastState]) {
            if (state?.kind === "running") expect(Number.isNaN(state.startedAt.getTime())).toBe(false);
            if (state?.kind === "terminated") expect(Number.isNaN(state.finishedAt.getTime())).toBe(false);
          }
        }
      }),
      { numRuns: 500 },
    );
  });
});

describe("withUsablePodIP", () => {
  const withAddress = (address: string) => workloadStatusFor(input({ reported: report(), address }));

  it("drops a reported address that is not an IP, and says why", () => {
    for (const bad of ["not-an-ip", "999.1.1.1", "010.1.1.1", "fe80::1%eth0"]) {
      const { status, refused } = withUsablePodIP(withAddress(bad), undefined);
      expect(status, bad).not.toHaveProperty("podIP");
      expect(refused, bad).toContain("is not an IP address");
    }
  });

  it("keeps a good one, and applies the configured check", () => {
    expect(withUsablePodIP(withAddress("10.0.0.7"), undefined)).toEqual({ status: withAddress("10.0.0.7") });
    const inRange = (a: string) => (a.startsWith("10.") ? undefined : `${a} is outside nodes.addressRanges`);
    expect(withUsablePodIP(withAddress("10.0.0.7"), inRange).refused).toBeUndefined();
    const out = withUsablePodIP(withAddress("172.16.0.1"), inRange);
    expect(out.status).not.toHaveProperty("podIP");
    expect(out.refused).toBe("172.16.0.1 is outside nodes.addressRanges");
  });
});
