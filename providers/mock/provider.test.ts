import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { ConfigError } from "../../src/config/index.ts";
import { isInvalidInput, isNotFound, isTransient } from "../../src/provider/errors.ts";
import {
  hasDeletionNotifier,
  hasAttach,
  hasDeviceInventory,
  hasExec,
  hasLogs,
  hasPortForward,
  hasStats,
  hasStatusNotifier,
  hasLifecycle,
} from "../../src/provider/types.ts";
import { createMockProvider, expandDevices, matchesImage, type MockConfigInput } from "./index.ts";
import { REMOVED_CREATES_KEPT } from "./provider.ts";
import { collect, ManualClock, record, refOf, silentLogger, workload } from "./testing.ts";

const started = async (config: MockConfigInput, random?: () => number) => {
  const provider = createMockProvider(config, { logger: silentLogger, ...(random ? { random } : {}) });
  const rec = record(provider);
  const abort = new AbortController();
  await provider.start(abort.signal);
  return { provider, rec, abort };
};

beforeEach(() => {
  vi.useFakeTimers({ now: new Date("2026-01-01T00:00:00Z") });
});
afterEach(() => {
  vi.useRealTimers();
});

describe("MockProvider", () => {
  it("implements every capability the engine detects", async () => {
    const { provider } = await started({});
    for (const guard of [
      hasStatusNotifier,
      hasDeletionNotifier,
      hasDeviceInventory,
      hasLogs,
      hasExec,
      hasAttach,
      hasPortForward,
      hasStats,
      hasLifecycle,
    ]) {
      expect(guard(provider)).toBe(true);
    }
    expect(provider.name).toBe("mock");
    expect(provider.supports).toContain("spec.containers[].ports");
  });

  it("runs a pod after appStartDelayMs and pushes each status change", async () => {
    const { provider, rec } = await started({ devices: { count: 2 } });
    await provider.createPod(workload("web", "mock-1"));
    expect(rec.last("web")).toMatchObject({
      phase: "Pending",
      reason: "ContainerCreating",
      deviceConnected: true,
    });
    await vi.advanceTimersByTimeAsync(199);
    expect((await provider.getPodStatus(workload("web", "mock-1").pod))?.phase).toBe("Pending");
    await vi.advanceTimersByTimeAsync(1);
    const running = rec.last("web");
    expect(running).toMatchObject({ phase: "Running", deviceConnected: true });
    expect(running?.apps).toMatchObject([
      { name: "app0", ready: true, restartCount: 0, state: { kind: "running" } },
    ]);
    expect(await provider.getPodStatus(workload("web", "mock-1").pod)).toMatchObject({ phase: "Running" });
    expect(await provider.listPods()).toEqual([
      {
        pod: { namespace: "default", name: "web", uid: "uid-web" },
        nodeName: "mock-1",
        hash: workload("web", "mock-1").hash,
        // Kept, so a pod deleted while devicelet was down is stopped with its own grace.
        terminationGracePeriodSeconds: 30,
      },
    ]);
    expect(provider.stats()).toMatchObject({ creates: 1, applied: 1, pods: 1 });
  });

  it("creating the hash it already holds is a no-op and is not counted", async () => {
    const { provider } = await started({});
    const w = workload("a", "mock-0");
    await provider.createPod(w);
    await provider.createPod(w);
    await provider.updatePod(w);
    expect(provider.stats()).toMatchObject({
      creates: 1,
      createsByUid: { "uid-a": 1 },
      noops: 2,
      applied: 1,
    });
    await provider.createPod(workload("a", "mock-0", { images: ["example.com/app:2"] }));
    expect(provider.stats()).toMatchObject({ creates: 1, updates: 1, applied: 2 });
  });

  it("counts a pod created again after its removal, and forgets the oldest removed pods' counts", async () => {
    const { provider } = await started({ devices: { count: 1 } });
    const churn = async (name: string) => {
      const w = workload(name, "mock-0");
      await provider.createPod(w);
      await provider.deletePod(w.pod, { gracePeriodSeconds: 0 });
    };
    await churn("first");
    await churn("first"); // resurrected: the engine must never do this
    expect(provider.stats().createsByUid["uid-first"]).toBe(2);
    for (let i = 0; i < REMOVED_CREATES_KEPT; i++) await churn(`p${i}`);
    await provider.createPod(workload("held", "mock-0"));
    const { createsByUid, creates, pods } = provider.stats();
    // The held pod and the last removed ones; "first" was the oldest and is forgotten.
    expect(Object.keys(createsByUid)).toHaveLength(REMOVED_CREATES_KEPT + 1);
    expect(createsByUid).not.toHaveProperty("uid-first");
    expect(createsByUid).toMatchObject({
      "uid-held": 1,
      "uid-p0": 1,
      [`uid-p${REMOVED_CREATES_KEPT - 1}`]: 1,
    });
    expect([creates, pods]).toEqual([REMOVED_CREATES_KEPT + 3, 1]);
  });

  it("queues pods for an offline device, keeps only the latest, applies it once on reconnect", async () => {
    const { provider, rec } = await started({ devices: { count: 1 } });
    provider.setConnected("mock-0", false);
    await provider.createPod(workload("q", "mock-0", { images: ["app:1"] }));
    expect(rec.last("q")).toMatchObject({
      phase: "Pending",
      reason: "DeviceOffline",
      deviceConnected: false,
    });
    await provider.updatePod(workload("q", "mock-0", { images: ["app:2"] }));
    await provider.updatePod(workload("q", "mock-0", { images: ["app:3"] }));
    await vi.advanceTimersByTimeAsync(10_000);
    expect(provider.stats()).toMatchObject({ applied: 0, queued: 1, updates: 2 });
    expect((await provider.getPodStatus(workload("q", "mock-0").pod))?.phase).toBe("Pending");

    provider.setConnected("mock-0", true);
    await vi.advanceTimersByTimeAsync(200);
    expect(provider.stats()).toMatchObject({ applied: 1, queued: 0, creates: 1 });
    expect(rec.last("q")).toMatchObject({
      phase: "Running",
      deviceConnected: true,
      apps: [expect.objectContaining({ image: "app:3" })],
    });
    expect((await provider.listPods())[0]?.hash).toBe(workload("q", "mock-0", { images: ["app:3"] }).hash);
  });

  it("reports last-known status while offline and refreshes it on reconnect", async () => {
    const { provider, rec } = await started({ devices: { count: 1, address: "192.0.2.7" } });
    await provider.createPod(workload("p", "mock-0"));
    await vi.advanceTimersByTimeAsync(200);
    provider.setConnected("mock-0", false);
    expect(rec.last("p")).toMatchObject({ phase: "Running", deviceConnected: false, podIP: "192.0.2.7" });
    expect(rec.devices.at(-1)).toMatchObject({
      id: "mock-0",
      connected: false,
      lastSeen: new Date("2026-01-01T00:00:00.200Z"),
    });
    await vi.advanceTimersByTimeAsync(5_000);
    provider.setConnected("mock-0", true);
    expect(rec.last("p")).toMatchObject({ phase: "Running", deviceConnected: true });
    expect(rec.devices.at(-1)).toMatchObject({
      connected: true,
      lastSeen: new Date("2026-01-01T00:00:05.200Z"),
    });
    expect(provider.stats().applied).toBe(1); // nothing re-applied
  });

  it("while offline, reports the status the device went away with, not what its apps did since", async () => {
    const { provider, rec } = await started({ devices: { count: 1 }, appStartDelayMs: 1_000 });
    await provider.createPod(workload("p", "mock-0"));
    await vi.advanceTimersByTimeAsync(500);
    provider.setConnected("mock-0", false);
    const away = { phase: "Pending", reason: "ContainerCreating", deviceConnected: false };
    expect(rec.last("p")).toMatchObject(away);
    // The app starts on the device meanwhile; devicelet cannot know until it is back.
    await vi.advanceTimersByTimeAsync(2_000);
    expect(await provider.getPodStatus(refOf(workload("p", "mock-0")))).toMatchObject({
      ...away,
      apps: [{ state: { kind: "waiting", reason: "ContainerCreating" }, ready: false }],
      observedAt: new Date("2026-01-01T00:00:02.500Z"),
    });
    provider.setConnected("mock-0", true);
    expect(rec.last("p")).toMatchObject({ phase: "Running", deviceConnected: true });
    // Away again: now with what it ran when it went.
    provider.setConnected("mock-0", false);
    expect(rec.last("p")).toMatchObject({ phase: "Running", deviceConnected: false });
  });

  it("keeps a tombstone for a delete while offline and carries it out on reconnect", async () => {
    const { provider, rec } = await started({});
    const w = workload("t", "mock-0");
    await provider.createPod(w);
    await vi.advanceTimersByTimeAsync(200);
    provider.setConnected("mock-0", false);
    await provider.deletePod(w.pod, { gracePeriodSeconds: 30 });
    await vi.advanceTimersByTimeAsync(60_000);
    expect(rec.deleted).toEqual([]);
    expect(provider.stats()).toMatchObject({ tombstones: 1, deletes: 1 });
    expect(await provider.listPods()).toHaveLength(1);

    provider.setConnected("mock-0", true);
    expect(rec.deleted).toEqual([]);
    await vi.advanceTimersByTimeAsync(100); // appStopDelayMs
    expect(rec.deleted).toEqual([refOf(w)]);
    expect(rec.last("t")).toMatchObject({
      phase: "Succeeded",
      apps: [{ state: { kind: "terminated", exitCode: 0 } }],
    });
    expect(await provider.listPods()).toEqual([]);
    expect(await provider.getPodStatus(w.pod)).toBeUndefined();
  });

  it("drops a queued pod that never reached its device at once", async () => {
    const { provider, rec } = await started({});
    provider.setConnected("mock-0", false);
    const w = workload("never", "mock-0");
    await provider.createPod(w);
    await provider.deletePod(w.pod, { gracePeriodSeconds: 30 });
    expect(rec.deleted).toEqual([refOf(w)]);
    provider.setConnected("mock-0", true);
    expect(provider.stats()).toMatchObject({ applied: 0, pods: 0 });
  });

  it("stops after min(grace, appStopDelayMs), or at once with grace 0", async () => {
    const { provider, rec } = await started({ appStopDelayMs: 150 });
    const [a, b, c] = [workload("a", "mock-0"), workload("b", "mock-0"), workload("c", "mock-0")];
    for (const w of [a, b, c]) await provider.createPod(w);
    await vi.advanceTimersByTimeAsync(200);
    await provider.deletePod(a.pod, { gracePeriodSeconds: 30 });
    expect(rec.last("a")).toMatchObject({ phase: "Running", apps: [{ ready: false }] });
    await provider.deletePod(b.pod, { gracePeriodSeconds: 0 });
    expect(rec.deleted).toEqual([refOf(b)]);
    expect(rec.last("b")).toMatchObject({
      phase: "Failed",
      apps: [{ state: { exitCode: 137 } }],
    });
    await vi.advanceTimersByTimeAsync(149);
    expect(rec.deleted).toEqual([refOf(b)]);
    await vi.advanceTimersByTimeAsync(1);
    expect(rec.deleted).toEqual([refOf(b), refOf(a)]);
    // A second, shorter delete of a pod already stopping finishes it at once.
    await provider.deletePod(c.pod, { gracePeriodSeconds: 30 });
    await provider.deletePod(c.pod, { gracePeriodSeconds: 0 });
    expect(rec.deleted).toEqual([refOf(b), refOf(a), refOf(c)]);
    expect(provider.stats()).toMatchObject({ deletes: 3, deleted: 3, pods: 0 });
    // Deleting a pod it no longer holds resolves (the contract: deleting twice is not an error)
    // and is reported deleted again, so an engine waiting for the notice is not left waiting.
    await provider.deletePod(a.pod, { gracePeriodSeconds: 0 });
    expect(provider.stats()).toMatchObject({ deletes: 3, deleted: 3, pods: 0 });
    expect(rec.deleted).toEqual([refOf(b), refOf(a), refOf(c), refOf(a)]);
  });

  it("crash-loops apps whose image matches failImages, with growing restart counts", async () => {
    const { provider, rec } = await started({
      failImages: ["*/crash:*"],
      crashBackoffMs: 200,
      crashBackoffMaxMs: 400,
    });
    await provider.createPod(
      workload("c", "mock-0", { images: ["example.com/crash:1", "example.com/ok:1"] }),
    );
    await vi.advanceTimersByTimeAsync(200 + 100); // start, then run failAfterMs
    const crashed = rec.last("c");
    expect(crashed?.phase).toBe("Running");
    expect(crashed?.apps[0]).toMatchObject({
      ready: false,
      restartCount: 0,
      state: { kind: "waiting", reason: "CrashLoopBackOff" },
      lastState: { kind: "terminated", exitCode: 1, reason: "Error" },
    });
    expect(crashed?.apps[1]).toMatchObject({ ready: true, state: { kind: "running" } });
    await vi.advanceTimersByTimeAsync(200); // back-off 200
    expect(rec.last("c")?.apps[0]).toMatchObject({ restartCount: 1, state: { kind: "running" } });
    await vi.advanceTimersByTimeAsync(100 + 400); // crash, back-off 400
    expect(rec.last("c")?.apps[0]).toMatchObject({ restartCount: 2, state: { kind: "running" } });
    await vi.advanceTimersByTimeAsync(100 + 400); // capped at crashBackoffMaxMs
    expect(rec.last("c")?.apps[0]?.restartCount).toBe(3);
  });

  it("leaves a failed app terminated under restartPolicy Never", async () => {
    const { provider, rec } = await started({ failImages: ["bad"] });
    await provider.createPod(workload("n", "mock-0", { images: ["bad"], restartPolicy: "Never" }));
    await vi.advanceTimersByTimeAsync(10_000);
    expect(rec.last("n")).toMatchObject({
      phase: "Failed",
      apps: [{ restartCount: 0, state: { kind: "terminated", exitCode: 1 } }],
    });
  });

  it("injects Transient create errors at createErrorRate without keeping anything", async () => {
    const draws = [0.1, 0.9];
    const { provider } = await started({ createErrorRate: 0.5 }, () => draws.shift() ?? 0.9);
    const w = workload("e", "mock-0");
    await expect(provider.createPod(w)).rejects.toSatisfy(isTransient);
    expect(provider.stats()).toMatchObject({ createErrors: 1, creates: 0, pods: 0 });
    await provider.createPod(w);
    expect(provider.stats()).toMatchObject({ createErrors: 1, creates: 1 });
  });

  it("refuses unknown devices; an update of an unknown pod creates it", async () => {
    const { provider } = await started({});
    await expect(provider.createPod(workload("x", "nope"))).rejects.toSatisfy(isInvalidInput);
    await provider.updatePod(workload("x", "mock-0"));
    expect(provider.stats()).toMatchObject({ creates: 1, pods: 1 });
    expect(() => {
      provider.setConnected("nope", false);
    }).toThrow(/unknown device/);
  });

  it("follows the offline schedule and takes devices behind a gateway down with it", async () => {
    const { provider, rec } = await started({
      devices: [
        { id: "gw" },
        { id: "mcu-1", gateway: "gw", deviceClass: "mcu" },
        { count: 1, idPrefix: "other-" },
      ],
      offline: [{ device: "gw", afterMs: 1000, forMs: 500 }],
    });
    await vi.advanceTimersByTimeAsync(1000);
    expect(rec.devices.map((d) => [d.id, d.connected])).toEqual([
      ["gw", false],
      ["mcu-1", false],
    ]);
    expect(provider.stats().devicesOnline).toBe(1);
    await vi.advanceTimersByTimeAsync(500);
    expect(rec.devices.slice(2).map((d) => [d.id, d.connected])).toEqual([
      ["gw", true],
      ["mcu-1", true],
    ]);
    const devices = await provider.listDevices();
    expect(devices.map((d) => d.id)).toEqual(["gw", "mcu-1", "other-0"]);
    expect(devices[1]).toMatchObject({
      deviceClass: "mcu",
      gateway: "gw",
      capacity: { cpu: "4", memory: "4Gi", pods: "20" },
    });
  });

  it("serves logs with tail, timestamps and follow", async () => {
    const { provider } = await started({});
    const w = workload("l", "mock-0");
    const signal = new AbortController().signal;
    await provider.createPod(w);
    await vi.advanceTimersByTimeAsync(200);
    const tail = await provider.getContainerLogs(w.pod, "app0", { tailLines: 1, timestamps: true, signal });
    expect(await collect(tail.chunks)).toEqual([
      "2026-01-01T00:00:00.200000000Z [mock] started example.com/app:1\n",
    ]);
    expect(tail.notice).toBeUndefined();

    const follow = await provider.getContainerLogs(w.pod, "app0", { follow: true, signal });
    const followed = collect(follow.chunks);
    await provider.deletePod(w.pod, { gracePeriodSeconds: 1 });
    await vi.advanceTimersByTimeAsync(100);
    expect(await followed).toEqual([
      "[mock] pulling example.com/app:1\n",
      "[mock] started example.com/app:1\n",
      "[mock] stopped (exit code 0)\n",
    ]);
    await expect(provider.getContainerLogs(w.pod, "app0", { signal })).rejects.toSatisfy(isNotFound);
  });
});

describe("MockProvider with an injected clock", () => {
  it("moves only with its clock", async () => {
    vi.useRealTimers();
    const clock = new ManualClock(Date.UTC(2026, 0, 1));
    const provider = createMockProvider({ appStartDelayMs: 1000 }, { logger: silentLogger, clock });
    const rec = record(provider);
    await provider.start(new AbortController().signal);
    await provider.createPod(workload("m", "mock-0"));
    clock.advance(999);
    expect(rec.last("m")?.phase).toBe("Pending");
    clock.advance(1);
    expect(rec.last("m")).toMatchObject({
      phase: "Running",
      observedAt: new Date(Date.UTC(2026, 0, 1, 0, 0, 1)),
    });
    await provider.stop();
  });
});

describe("mock config", () => {
  it("validates with paths under /provider/config", () => {
    try {
      createMockProvider(
        { devices: { count: -1, color: "red" }, createErrorRate: 2 } as unknown as MockConfigInput,
        {
          logger: silentLogger,
        },
      );
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      expect((err as ConfigError).problems.map((p) => p.path).sort()).toEqual([
        "/provider/config/createErrorRate",
        "/provider/config/devices/color",
        "/provider/config/devices/count",
      ]);
    }
  });

  it("expands groups and single devices and refuses duplicates", () => {
    expect(() =>
      createMockProvider({ devices: [{ count: 2 }, { id: "mock-1" }] }, { logger: silentLogger }),
    ).toThrow(/mock-1 is defined twice/);
    const provider = createMockProvider(
      {
        devices: [
          { count: 2, idPrefix: "d" },
          { id: "x", zone: "eu" },
        ],
      },
      { logger: silentLogger },
    );
    expect(expandDevices(provider.config).map((d) => [d.id, d.zone])).toEqual([
      ["d0", undefined],
      ["d1", undefined],
      ["x", "eu"],
    ]);
  });

  it("matches image patterns", () => {
    expect(matchesImage("*/crash:*", "registry.io/team/crash:1.2")).toBe(true);
    expect(matchesImage("app:?", "app:1")).toBe(true);
    expect(matchesImage("app:?", "app:10")).toBe(false);
    expect(matchesImage("a.b", "axb")).toBe(false);
  });
});
