/**
 * PodController without a cluster: the in-memory API server of test/support/fake-kube.ts, the
 * mock provider, and a FakeClock that every timer of both runs on. Time moves only when a test
 * moves it, and each test asserts the end state: what the API server holds and what the devices
 * run. The edge cases are those a restart or a slow watch brings: a pod re-created under the same
 * name, a ConfigMap that appears late, work left behind by a pod deleted while devicelet was down,
 * a status write racing a stale cache, and adoption of what the provider already runs.
 */
import pino from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { FakeClock } from "../base/fake-clock.ts";
import type { ConfigMap, Pod, PodStatusPatch } from "../kube/index.ts";
import type { EventToRecord } from "../kube/events.ts";
import { notFound } from "../provider/errors.ts";
import type { PodRef, ProviderPod, WorkloadStatus } from "../provider/types.ts";
import { createMockProvider, type MockProvider } from "../../providers/mock/index.ts";
import { apiError, FakeKube } from "../../test/support/fake-kube.ts";
import { PodController, type PodControllerOptions } from "./controller.ts";
import type { PodStartStage } from "./start-trace.ts";

const logger = pino({ level: "silent" });
const NODE = "node-1";
const DEVICE = "dev-1";

let stops: AbortController[] = [];
afterEach(() => {
  for (const s of stops) s.abort();
  stops = [];
});

interface World {
  readonly clock: FakeClock;
  readonly kube: FakeKube;
  readonly provider: MockProvider;
  /** Provider deletes, with the grace period asked for. */
  readonly deletes: { uid: string; gracePeriodSeconds: number }[];
  /** The refs those deletes named. */
  readonly deletedRefs: PodRef[];
  /** Work the provider lists but no longer has by the time it is asked to delete it. */
  readonly phantom: ProviderPod[];
}

async function world(appStartDelayMs = 100): Promise<World> {
  const clock = new FakeClock(Date.parse("2026-03-01T12:00:00Z"));
  const kube = new FakeKube({ clock });
  const provider = createMockProvider(
    { devices: [{ id: DEVICE }], appStartDelayMs, appStopDelayMs: 100 },
    { logger, clock },
  );
  const stop = new AbortController();
  stops.push(stop);
  await provider.start(stop.signal);
  const deletes: World["deletes"] = [];
  const deletedRefs: PodRef[] = [];
  const deletePod = provider.deletePod.bind(provider);
  provider.deletePod = (ref, options) => {
    deletes.push({ uid: ref.uid, gracePeriodSeconds: options.gracePeriodSeconds });
    deletedRefs.push({ ...ref });
    return deletePod(ref, options);
  };
  const phantom: ProviderPod[] = [];
  const listPods = provider.listPods.bind(provider);
  provider.listPods = async () => [...(await listPods()), ...phantom];
  return { clock, kube, provider, deletes, deletedRefs, phantom };
}

/** A PodController on `w` (a second one on the same world is devicelet after a restart). */
async function startController(
  w: World,
  extra: Pick<PodControllerOptions, "onStartStage"> & Partial<Pick<PodControllerOptions, "logger">> = {},
) {
  const stop = new AbortController();
  stops.push(stop);
  let [device] = await w.provider.listDevices();
  if (!device) throw new Error("no device");
  const events: EventToRecord[] = [];
  const listeners: ((nodeName: string) => void)[] = [];
  const controller = new PodController({
    kube: w.kube,
    provider: w.provider,
    nodes: {
      byNodeName: (name) => (name === NODE && device ? { name, deviceId: DEVICE, device } : undefined),
      hasNodeName: (name) => name === NODE,
      onNodeNames: () => () => undefined,
      onDeviceChange: (listener) => {
        listeners.push((n) => {
          if (device) listener(n, device);
        });
        return () => undefined;
      },
      transport: () => ({ connected: true, message: "" }),
    },
    events: { record: (e) => events.push(e) },
    logger,
    clock: w.clock,
    config: {
      baseRetryDelayMs: 200,
      maxRetryDelayMs: 2_000,
      statusDebounceMs: 50,
      ipRange: "10.250.0.0/16",
      kubeletAddress: "127.0.0.1",
      resyncIntervalMs: 0,
    },
    ...extra,
  });
  await controller.start(stop.signal);
  await w.clock.advanceAsync(0);
  /** The node controller's word that the device changed: every pod on the node is looked at. */
  const deviceChanged = () => listeners.forEach((l) => l(NODE));
  // As the node controller does: the device as the provider reports it now, and a word to the pods.
  w.provider.watchDevices({
    changed: (d) => {
      if (stop.signal.aborted) return;
      device = d;
      deviceChanged();
    },
    gone: () => undefined,
  });
  return { controller, events, stop, deviceChanged };
}

const pod = (name: string, uid: string, extra: Partial<NonNullable<Pod["spec"]>> = {}): Pod => ({
  apiVersion: "v1",
  kind: "Pod",
  metadata: { namespace: "ns", name, uid },
  spec: {
    nodeName: NODE,
    terminationGracePeriodSeconds: 20,
    containers: [{ name: "app", image: "example.com/app:1" }],
    ...extra,
  },
});

const stored = (w: World, name: string) => w.kube.object("pods", `ns/${name}`);
const phase = (w: World, name: string) => stored(w, name)?.status?.phase;
const statusWrites = (w: World) =>
  w.kube.calls.filter((c) => c.verb === "patchPodStatus").map((c) => c.args[0] as PodStatusPatch);
const running = async (w: World, uid: string) =>
  (await w.provider.getPodStatus({ namespace: "ns", name: "", uid }))?.phase;

describe("PodController (fake API server, FakeClock)", () => {
  it("times a pod start by stage, once, from the pod seen bound to its Running status written", async () => {
    const w = await world();
    const stages: [PodStartStage, number][] = [];
    const lines: Record<string, unknown>[] = [];
    const debug = pino(
      { level: "debug" },
      { write: (line: string) => lines.push(JSON.parse(line) as Record<string, unknown>) },
    );
    await startController(w, {
      onStartStage: (stage, seconds) => stages.push([stage, seconds]),
      logger: debug,
    });
    // Bound by a scheduler 2 s before this process saw it.
    const seen = w.clock.now();
    const scheduled = new Date(seen - 2_000).toISOString();
    w.kube.apply("pods", {
      ...pod("web", "uid-1"),
      status: { conditions: [{ type: "PodScheduled", status: "True", lastTransitionTime: scheduled }] },
    });
    await w.clock.advanceAsync(1_000);
    expect(phase(w, "web")).toBe("Running");
    // On the FakeClock: the mock starts the app 100 ms after createPod and pushes Running at once;
    // the first Running of a starting pod is written at once, without the status debounce (50 ms).
    expect(stages).toEqual([
      ["watch", 2],
      ["queue", 0],
      ["provider", 0],
      ["device", 0.1],
      ["status", 0],
    ]);
    // The same start, per pod and by the clock, at debug level.
    const timelines = lines.filter((l) => l.msg === "pod start timeline (ms since the epoch)");
    expect(timelines).toEqual([
      expect.objectContaining({
        pod: "ns/web",
        boundMs: seen - 2_000,
        seenMs: seen,
        creatingMs: seen,
        createdMs: seen,
        reportedMs: seen + 100,
        writtenMs: seen + 100,
      }),
    ]);
    // Running again after a device change is not a new start.
    await w.clock.advanceAsync(5_000);
    expect(stages).toHaveLength(5);
    expect(lines.filter((l) => l.msg === "pod start timeline (ms since the epoch)")).toHaveLength(1);
  });

  it("writes a pod the device starts within the first-status wait once: Running, never Pending", async () => {
    const w = await world(900);
    await startController(w);
    w.kube.apply("pods", pod("web", "uid-1"));
    await w.clock.advanceAsync(899);
    expect(statusWrites(w)).toHaveLength(0);
    // The moment the device reports it Running, not a debounce later.
    await w.clock.advanceAsync(1);
    expect(statusWrites(w).map((s) => s.status.phase)).toEqual(["Running"]);
    await w.clock.advanceAsync(2_000);
    expect(statusWrites(w).map((s) => s.status.phase)).toEqual(["Running"]);
  });

  it("folds later status changes of a started pod into one write a debounce after the first", async () => {
    const w = await world();
    // The provider's status pushes, to send the controller changes the mock would not make; its
    // getPodStatus answers with the last one, as the contract asks.
    let push: ((status: WorkloadStatus) => void) | undefined;
    let pushed: WorkloadStatus | undefined;
    const notifyStatus = w.provider.notifyStatus.bind(w.provider);
    w.provider.notifyStatus = (callback) => {
      push = (status) => {
        pushed = status;
        callback(status);
      };
      notifyStatus(callback);
    };
    const getPodStatus = w.provider.getPodStatus.bind(w.provider);
    w.provider.getPodStatus = async (ref) => pushed ?? (await getPodStatus(ref));
    await startController(w);
    w.kube.apply("pods", pod("web", "uid-1"));
    await w.clock.advanceAsync(1_000);
    expect(statusWrites(w).map((s) => s.status.phase)).toEqual(["Running"]);
    const now = await w.provider.getPodStatus({ namespace: "ns", name: "web", uid: "uid-1" });
    if (!now || !push) throw new Error("no status");
    // The app restarts twice in quick succession: one write, 50 ms after the first change.
    const app = now.apps[0] as WorkloadStatus["apps"][number];
    push({ ...now, apps: [{ ...app, restartCount: 1 }], observedAt: new Date(w.clock.now()) });
    await w.clock.advanceAsync(20);
    push({ ...now, apps: [{ ...app, restartCount: 2 }], observedAt: new Date(w.clock.now()) });
    await w.clock.advanceAsync(29);
    expect(statusWrites(w)).toHaveLength(1);
    await w.clock.advanceAsync(1);
    expect(statusWrites(w)).toHaveLength(2);
    expect(stored(w, "web")?.status?.containerStatuses?.[0]?.restartCount).toBe(2);
  });

  it("writes Pending when the device has not reported by the end of the first-status wait, then Running", async () => {
    const w = await world(3_000);
    await startController(w);
    w.kube.apply("pods", pod("web", "uid-1"));
    await w.clock.advanceAsync(999);
    expect(statusWrites(w)).toHaveLength(0);
    await w.clock.advanceAsync(1);
    expect(statusWrites(w).map((s) => s.status.phase)).toEqual(["Pending"]);
    expect(stored(w, "web")?.status?.containerStatuses?.[0]?.state?.waiting?.reason).toBe(
      "ContainerCreating",
    );
    await w.clock.advanceAsync(2_100);
    expect(statusWrites(w).map((s) => s.status.phase)).toEqual(["Pending", "Running"]);
  });

  it("replaces a pod re-created under the same name: the old one is stopped, the new one created", async () => {
    const w = await world();
    await startController(w);
    w.kube.apply("pods", pod("web", "uid-1"));
    await w.clock.advanceAsync(1_000);
    expect(phase(w, "web")).toBe("Running");
    expect(await running(w, "uid-1")).toBe("Running");

    // A StatefulSet-style replacement: the old object force-deleted, a new one of the same name.
    const writesBefore = statusWrites(w).length;
    w.kube.remove("pods", "ns/web");
    w.kube.apply("pods", pod("web", "uid-2", { terminationGracePeriodSeconds: 5 }));
    await w.clock.advanceAsync(2_000);

    expect(w.deletes).toEqual([{ uid: "uid-1", gracePeriodSeconds: 20 }]);
    expect(await running(w, "uid-1")).toBeUndefined();
    expect(await running(w, "uid-2")).toBe("Running");
    expect(w.provider.stats().createsByUid).toEqual({ "uid-1": 1, "uid-2": 1 });
    expect(stored(w, "web")?.metadata?.uid).toBe("uid-2");
    expect(phase(w, "web")).toBe("Running");
    // Every status write since carried the new pod's UID as its precondition.
    const since = statusWrites(w).slice(writesBefore);
    expect(since.length).toBeGreaterThan(0);
    expect(since.map((p) => p.uid)).toEqual(since.map(() => "uid-2"));
  });

  it("replaces a pod re-created while the pod watch was down, which the re-list shows as one update", async () => {
    const w = await world();
    await startController(w);
    w.kube.apply("pods", pod("web", "uid-1"));
    await w.clock.advanceAsync(1_000);
    expect(await running(w, "uid-1")).toBe("Running");

    // The watch misses the delete and the create; its resourceVersion is then too old (410), and
    // the re-list finds the name with another UID: no delete event for the old pod, ever.
    w.kube.holdWatches("pods");
    w.kube.remove("pods", "ns/web");
    w.kube.apply("pods", pod("web", "uid-2", { terminationGracePeriodSeconds: 5 }));
    const writesBefore = statusWrites(w).length;
    w.kube.compact();
    w.kube.failWatches("pods", apiError(410, "Expired"));
    w.kube.releaseWatches("pods");
    await w.clock.advanceAsync(2_000);

    expect(w.deletes).toEqual([{ uid: "uid-1", gracePeriodSeconds: 20 }]);
    expect(await running(w, "uid-1")).toBeUndefined();
    expect(await running(w, "uid-2")).toBe("Running");
    expect(w.provider.stats().createsByUid).toEqual({ "uid-1": 1, "uid-2": 1 });
    expect(phase(w, "web")).toBe("Running");
    const since = statusWrites(w).slice(writesBefore);
    expect(since.length).toBeGreaterThan(0);
    expect(since.map((p) => p.uid)).toEqual(since.map(() => "uid-2"));
  });

  it("waits with CreateContainerConfigError for a missing ConfigMap and starts the pod once it appears", async () => {
    const w = await world();
    const { controller } = await startController(w);
    const env = [{ name: "MODE", valueFrom: { configMapKeyRef: { name: "cfg", key: "mode" } } }];
    w.kube.apply(
      "pods",
      pod("cfg", "uid-c", { containers: [{ name: "app", image: "example.com/app:1", env }] }),
    );
    await w.clock.advanceAsync(1_000);
    const waiting = stored(w, "cfg")?.status;
    expect(waiting?.phase).toBe("Pending");
    expect(waiting?.containerStatuses?.[0]?.state?.waiting?.reason).toBe("CreateContainerConfigError");
    expect(waiting?.containerStatuses?.[0]?.state?.waiting?.message).toContain("cfg");
    expect(w.provider.stats().creates).toBe(0);

    // The ConfigMap appears: its watch, not the 5 s re-check, brings the pod up.
    const cm: ConfigMap = { metadata: { namespace: "ns", name: "cfg" }, data: { mode: "fast" } };
    w.kube.apply("configmaps", cm);
    await w.clock.advanceAsync(1_000);
    expect(phase(w, "cfg")).toBe("Running");
    expect(w.provider.stats().createsByUid).toEqual({ "uid-c": 1 });
    expect(controller.stats().queue.failed).toBe(0);
  });

  it("stops work whose pod was deleted while devicelet was down, with its kept grace, and forgets it", async () => {
    const w = await world();
    // The device runs "gone" (grace 45); its pod object was deleted while devicelet was down.
    const first = await startController(w);
    w.kube.apply("pods", pod("gone", "uid-gone", { terminationGracePeriodSeconds: 45 }));
    await w.clock.advanceAsync(1_000);
    expect(await running(w, "uid-gone")).toBe("Running");
    first.stop.abort();
    const writes = w.kube.count("patchPodStatus");
    w.kube.remove("pods", "ns/gone");
    w.phantom.push({ pod: { namespace: "ns", name: "lost", uid: "uid-lost" }, nodeName: NODE, hash: "h" });

    const { controller } = await startController(w);
    await w.clock.advanceAsync(5_000);
    expect(w.deletes).toContainEqual({ uid: "uid-gone", gracePeriodSeconds: 45 });
    // Named in full, though the controller keeps only the key and the uid of held work.
    expect(w.deletedRefs).toContainEqual({ namespace: "ns", name: "gone", uid: "uid-gone" });
    expect(w.deletedRefs).toContainEqual({ namespace: "ns", name: "lost", uid: "uid-lost" });
    expect(await running(w, "uid-gone")).toBeUndefined();
    expect(w.provider.stats().pods).toBe(0);
    // "lost" was listed but the provider no longer has it (NotFound): forgotten, not retried.
    expect(w.deletes).toContainEqual({ uid: "uid-lost", gracePeriodSeconds: 30 });
    const settled = controller.stats();
    expect(settled).toMatchObject({ held: 0, written: 0 });
    await w.clock.advanceAsync(3_600_000);
    expect(controller.stats().queue).toMatchObject({
      processed: settled.queue.processed,
      delayed: 0,
    });
    expect(w.deletes.filter((d) => d.uid === "uid-lost")).toHaveLength(1);
    expect(w.kube.count("patchPodStatus")).toBe(writes);
  });

  it("gives the device the whole grace period from its stop request when the deletion waited past its deadline", async () => {
    const w = await world();
    const first = await startController(w);
    w.kube.apply("pods", pod("late", "uid-late"));
    w.kube.apply("pods", pod("stuck", "uid-stuck"));
    await w.clock.advanceAsync(1_000);
    expect(await running(w, "uid-late")).toBe("Running");
    expect(await running(w, "uid-stuck")).toBe("Running");
    // Deleted with a grace period of 2 s that is over before devicelet gets to them, as in a burst of
    // deletes behind a queue, or here while it was down. "stuck"'s device never confirms.
    first.stop.abort();
    w.kube.deletePodAsUser("ns", "late", 2);
    w.kube.deletePodAsUser("ns", "stuck", 2);
    await w.clock.advanceAsync(10_000);
    const deletePod = w.provider.deletePod.bind(w.provider);
    w.provider.deletePod = (ref, options) =>
      ref.uid === "uid-stuck" ? Promise.resolve() : deletePod(ref, options);
    const writes = w.kube.count("patchPodStatus");
    const waiting = () =>
      stored(w, "stuck")?.status?.conditions?.find((c) => c.type === "devicelet.dev/StopConfirmed");

    await startController(w);
    // "late" stops 100 ms after it is asked to: gone, with no status written for it on the way.
    await w.clock.advanceAsync(1_000);
    expect(stored(w, "late")).toBeUndefined();
    expect(w.deletes).toContainEqual({ uid: "uid-late", gracePeriodSeconds: 2 });
    // "stuck" is not said to be waiting for its device before 2 s from devicelet's request...
    await w.clock.advanceAsync(900);
    expect(waiting()).toBeUndefined();
    expect(w.kube.count("patchPodStatus")).toBe(writes);
    // ...and is once they are over.
    await w.clock.advanceAsync(200);
    expect(waiting()).toMatchObject({ status: "False", reason: "WaitingForDevice" });
    expect(stored(w, "stuck")).toBeDefined();
  });

  it("sends its final delete once while the pod cache still shows the removed pod", async () => {
    const w = await world();
    const { controller, deviceChanged } = await startController(w);
    w.kube.apply("pods", pod("gone", "uid-gone"));
    await w.clock.advanceAsync(1_000);
    expect(phase(w, "gone")).toBe("Running");

    w.kube.deletePodAsUser("ns", "gone", 1);
    await w.clock.advanceAsync(10);
    expect(w.deletes).toContainEqual({ uid: "uid-gone", gracePeriodSeconds: 1 });
    // The watch falls behind while the device confirms (100 ms) and devicelet removes the object.
    w.kube.holdWatches("pods");
    await w.clock.advanceAsync(500);
    expect(stored(w, "gone")).toBeUndefined();
    expect(w.kube.count("deletePod")).toBe(1);
    // Reconciles of the pod as the cache still has it send nothing more: for the API server's
    // first phase of the delete (grace 0 stored, a MODIFIED event), and for a device change.
    w.kube.stepWatches("pods", 1);
    await w.clock.advanceAsync(100);
    expect(w.kube.count("deletePod")).toBe(1);
    deviceChanged();
    await w.clock.advanceAsync(1_000);
    expect(w.kube.count("deletePod")).toBe(1);

    expect(controller.stats().removing).toBe(1);
    w.kube.releaseWatches("pods");
    await w.clock.advanceAsync(1_000);
    expect(w.kube.count("deletePod")).toBe(1);
    expect(controller.stats().removing).toBe(0);
    // A new pod of the same name is started, not taken for the removed one.
    w.kube.apply("pods", pod("gone", "uid-again"));
    await w.clock.advanceAsync(1_000);
    expect(phase(w, "gone")).toBe("Running");
    expect(await running(w, "uid-again")).toBe("Running");
  });

  it("keeps no mark of a pod removed by someone else while its device was asked to stop it", async () => {
    const w = await world();
    const { controller } = await startController(w);
    w.kube.apply("pods", pod("raced", "uid-raced"));
    await w.clock.advanceAsync(1_000);
    expect(phase(w, "raced")).toBe("Running");
    // The object goes (and its watch says so) while the provider handles the stop, which answers
    // that it has nothing left: devicelet's own delete then finds nothing.
    w.provider.deletePod = async () => {
      w.kube.remove("pods", "ns/raced");
      await new Promise((resolve) => setImmediate(resolve));
      throw notFound("no such pod");
    };
    w.kube.deletePodAsUser("ns", "raced", 5);
    await w.clock.advanceAsync(1_000);
    expect(stored(w, "raced")).toBeUndefined();
    expect(controller.stats()).toMatchObject({ held: 0, removing: 0 });
  });

  it("removes a pod an earlier process's final delete left half-done (grace 0 stored, the object still there)", async () => {
    const w = await world();
    const base = pod("half", "uid-half");
    w.kube.apply("pods", {
      ...base,
      metadata: {
        ...base.metadata,
        deletionTimestamp: "2026-03-01T11:59:00Z",
        deletionGracePeriodSeconds: 0,
      },
    });
    await startController(w);
    await w.clock.advanceAsync(1_000);
    expect(stored(w, "half")).toBeUndefined();
    expect(w.kube.count("deletePod")).toBe(1);
  });

  it("never writes a status over a newer pod of the same name while the pod cache lags", async () => {
    const w = await world();
    await startController(w);
    w.kube.apply("pods", pod("lag", "uid-old"));
    await w.clock.advanceAsync(1_000);
    expect(phase(w, "lag")).toBe("Running");

    // The pod watch falls behind; meanwhile the pod is replaced, and the device reports on the old one.
    w.kube.holdWatches("pods");
    w.kube.remove("pods", "ns/lag");
    const fresh = w.kube.apply("pods", pod("lag", "uid-new"));
    w.provider.setConnected(DEVICE, false);
    await w.clock.advanceAsync(1_000);
    // The stale reconcile's write was refused by its UID precondition: the new pod is untouched.
    const refused = statusWrites(w).filter((p) => p.uid === "uid-old");
    expect(refused.at(-1)?.status.conditions?.find((c) => c.type === "Ready")?.status).toBe("False");
    expect(stored(w, "lag")).toEqual(fresh);

    w.provider.setConnected(DEVICE, true);
    w.kube.releaseWatches("pods");
    await w.clock.advanceAsync(5_000);
    expect(stored(w, "lag")?.metadata?.uid).toBe("uid-new");
    expect(phase(w, "lag")).toBe("Running");
    expect(await running(w, "uid-old")).toBeUndefined();
    expect(await running(w, "uid-new")).toBe("Running");
  });

  it("does not write the same status twice while the watch has not caught up with its write", async () => {
    const w = await world();
    const { controller, deviceChanged } = await startController(w);
    w.kube.apply("pods", pod("slow", "uid-s"));
    await w.clock.advanceAsync(1_000);
    expect(phase(w, "slow")).toBe("Running");
    const writes = w.kube.count("patchPodStatus");

    // The device goes offline while the pod watch lags: the cache still shows the pod Running.
    w.kube.holdWatches("pods");
    w.provider.setConnected(DEVICE, false);
    await w.clock.advanceAsync(1_000);
    expect(w.kube.count("patchPodStatus")).toBe(writes + 1);
    expect(stored(w, "slow")?.status?.conditions?.find((c) => c.type === "Ready")?.status).toBe("False");
    // Looked at again against the stale cache: what it would write is what it wrote already.
    const processed = controller.stats().queue.processed;
    deviceChanged();
    await w.clock.advanceAsync(1_000);
    expect(controller.stats().queue.processed).toBeGreaterThan(processed);
    expect(w.kube.count("patchPodStatus")).toBe(writes + 1);
    // And once the watch has caught up, still nothing new to write.
    w.kube.releaseWatches("pods");
    deviceChanged();
    await w.clock.advanceAsync(1_000);
    expect(w.kube.count("patchPodStatus")).toBe(writes + 1);
  });

  it("adopts after a restart what the provider already runs: nothing created, updated or re-written", async () => {
    const w = await world();
    const first = await startController(w);
    w.kube.apply("pods", pod("keep", "uid-k"));
    await w.clock.advanceAsync(1_000);
    expect(phase(w, "keep")).toBe("Running");
    const before = { writes: w.kube.count("patchPodStatus"), mock: w.provider.stats() };
    first.stop.abort();

    const { controller } = await startController(w);
    await w.clock.advanceAsync(10_000);
    expect(controller.stats()).toMatchObject({ held: 1, creates: 0, updates: 0, deletes: 0 });
    const after = w.provider.stats();
    expect(after.createsByUid).toEqual({ "uid-k": 1 });
    expect(after.updates).toBe(before.mock.updates);
    expect(after.noops).toBe(before.mock.noops);
    expect(w.kube.count("patchPodStatus")).toBe(before.writes);
    expect(phase(w, "keep")).toBe("Running");
  });

  it("retries a failed status write with backoff on the clock and gets through", async () => {
    const w = await world();
    const { controller } = await startController(w);
    w.kube.apply("pods", pod("flaky", "uid-f"));
    await w.clock.advanceAsync(1_000);
    expect(phase(w, "flaky")).toBe("Running");

    const at: number[] = [];
    w.kube.fail("patchPodStatus", () => {
      at.push(w.clock.now());
      return at.length <= 3 ? apiError(503, "ServiceUnavailable") : undefined;
    });
    w.provider.setConnected(DEVICE, false);
    await w.clock.advanceAsync(10_000);
    expect(stored(w, "flaky")?.status?.conditions?.find((c) => c.type === "Ready")?.status).toBe("False");
    // Three failures, then through. Each failure counts (200 ms doubling, ±20 %), whatever else
    // woke the pod meanwhile: the try after the third comes 800 ms later.
    expect(at).toHaveLength(4);
    const last = (at[3] ?? 0) - (at[2] ?? 0);
    expect(last).toBeGreaterThanOrEqual(640);
    expect(last).toBeLessThanOrEqual(960);
    expect(controller.stats().queue).toMatchObject({ failed: 3, delayed: 0 });
  });

  it("has as many creates under way as the provider's concurrentPods asks for, 64 without it", async () => {
    /** Pods created while every create waits: how many calls the controller made before any ended. */
    const underWay = async (concurrentPods: number | undefined) => {
      const w = await world();
      let release!: () => void;
      const released = new Promise<void>((resolve) => (release = resolve));
      let calls = 0;
      const createPod = w.provider.createPod.bind(w.provider);
      w.provider.createPod = async (workload) => {
        calls++;
        await released;
        return createPod(workload);
      };
      Object.assign(w.provider, { concurrentPods });
      await startController(w);
      for (let i = 0; i < 100; i++) w.kube.apply("pods", pod(`p${i}`, `uid-${i}`));
      await w.clock.advanceAsync(1_000);
      const waiting = calls;
      release();
      await w.clock.advanceAsync(2_000);
      expect(w.provider.stats().creates).toBe(100);
      return waiting;
    };
    expect(await underWay(undefined)).toBe(64);
    expect(await underWay(40)).toBe(40);
  });
});
