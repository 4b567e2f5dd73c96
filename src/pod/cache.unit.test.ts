/**
 * The pod cache of PodController, with the in-memory API server of test/support/fake-kube.ts, the
 * mock provider and a FakeClock: it holds the pods bound to devicelet's node names (trimmed) and
 * the pods whose work the provider holds, nothing else, whatever the order in which pods and
 * node names arrive. Each test asserts what is cached and what the devices run.
 */
import pino from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { FakeClock } from "../base/fake-clock.ts";
import type { Pod } from "../kube/index.ts";
import type { NodeNameChange } from "../node/controller.ts";
import type { DeviceInfo } from "../provider/types.ts";
import { createMockProvider, type MockProvider } from "../../providers/mock/index.ts";
import { FakeKube } from "../../test/support/fake-kube.ts";
import { PodController, type SharedSources } from "./controller.ts";
import { ReferenceCache } from "./references.ts";
import { SharedPods } from "./shared-pods.ts";

const logger = pino({ level: "silent" });

let stops: AbortController[] = [];
afterEach(() => {
  for (const s of stops) s.abort();
  stops = [];
});

interface World {
  readonly clock: FakeClock;
  readonly kube: FakeKube;
  readonly provider: MockProvider;
  readonly deletes: string[];
}

async function world(): Promise<World> {
  const clock = new FakeClock(Date.parse("2026-03-01T12:00:00Z"));
  const kube = new FakeKube({ clock });
  const provider = createMockProvider(
    { devices: [{ id: "dev-1" }, { id: "dev-2" }], appStartDelayMs: 100, appStopDelayMs: 100 },
    { logger, clock },
  );
  const stop = new AbortController();
  stops.push(stop);
  await provider.start(stop.signal);
  const deletes: string[] = [];
  const deletePod = provider.deletePod.bind(provider);
  provider.deletePod = (ref, options) => {
    deletes.push(ref.uid);
    return deletePod(ref, options);
  };
  return { clock, kube, provider, deletes };
}

/**
 * A PodController whose node controller serves `served` (node name → device id) to begin with;
 * `serve` and `unserve` change that as the node controller does when a device comes and goes.
 */
async function startController(w: World, served: Map<string, string>, shared?: SharedSources) {
  const stop = new AbortController();
  stops.push(stop);
  const devices = new Map<string, DeviceInfo>((await w.provider.listDevices()).map((d) => [d.id, d]));
  const listeners: ((name: string, change: NodeNameChange) => void)[] = [];
  const controller = new PodController({
    kube: w.kube,
    provider: w.provider,
    nodes: {
      byNodeName: (name) => {
        const deviceId = served.get(name);
        const device = deviceId === undefined ? undefined : devices.get(deviceId);
        return deviceId !== undefined && device ? { name, deviceId, device } : undefined;
      },
      hasNodeName: (name) => served.has(name),
      onNodeNames: (listener) => {
        listeners.push(listener);
        return () => undefined;
      },
      onDeviceChange: () => () => undefined,
      transport: () => ({ connected: true, message: "" }),
    },
    events: { record: () => undefined },
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
    ...(shared ? { shared } : {}),
  });
  await controller.start(stop.signal);
  await w.clock.advanceAsync(0);
  const change = (name: string, kind: NodeNameChange) => listeners.forEach((l) => l(name, kind));
  return {
    controller,
    stop,
    serve: (name: string, deviceId: string) => {
      served.set(name, deviceId);
      change(name, "added");
    },
    unserve: (name: string) => {
      served.delete(name);
      change(name, "removed");
    },
  };
}

const pod = (name: string, node: string, extra: Partial<Pod> = {}): Pod => ({
  apiVersion: "v1",
  kind: "Pod",
  metadata: { namespace: "ns", name, uid: `uid-${name}` },
  spec: { nodeName: node, containers: [{ name: "app", image: "example.com/app:1" }] },
  ...extra,
});
const running = async (w: World, name: string) =>
  (await w.provider.getPodStatus({ namespace: "ns", name, uid: `uid-${name}` }))?.phase;
const cached = (controller: PodController, name: string) => controller.cachedPod("ns", name);

describe("PodController's pod cache", () => {
  it("never caches a pod bound to a node devicelet does not serve, listed or watched, and trims what it caches", async () => {
    const w = await world();
    w.kube.apply("pods", pod("listed", "kubeadm-1"));
    const { controller } = await startController(w, new Map([["node-1", "dev-1"]]));
    w.kube.apply("pods", pod("watched", "kubeadm-1"));
    const mine = pod("mine", "node-1");
    mine.metadata = { ...mine.metadata, managedFields: [{ manager: "kubectl", operation: "Apply" }] };
    mine.spec = {
      ...mine.spec,
      containers: mine.spec?.containers ?? [],
      tolerations: [{ operator: "Exists" }],
    };
    w.kube.apply("pods", mine);
    await w.clock.advanceAsync(1_000);

    expect(cached(controller, "listed")).toBeUndefined();
    expect(cached(controller, "watched")).toBeUndefined();
    expect(controller.podsOn("kubeadm-1")).toEqual([]);
    expect(w.kube.object("pods", "ns/watched")?.status).toBeUndefined();
    expect(await running(w, "mine")).toBe("Running");
    expect(cached(controller, "mine")?.status?.phase).toBe("Running");
    expect(cached(controller, "mine")?.metadata?.managedFields).toBeUndefined();
    expect(cached(controller, "mine")?.spec?.tolerations).toBeUndefined();
    expect(controller.managedPods().map((p) => p.metadata?.name)).toEqual(["mine"]);
  });

  it("picks up the pods bound to a node name before devicelet serves it, and those bound after", async () => {
    const w = await world();
    const { controller, serve } = await startController(w, new Map([["node-1", "dev-1"]]));
    // Created with spec.nodeName set, before the device of node-2 was known.
    w.kube.apply("pods", pod("early", "node-2"));
    await w.clock.advanceAsync(1_000);
    expect(cached(controller, "early")).toBeUndefined();
    expect(await running(w, "early")).toBeUndefined();

    serve("node-2", "dev-2");
    w.kube.apply("pods", pod("late", "node-2"));
    await w.clock.advanceAsync(1_000);
    expect(await running(w, "early")).toBe("Running");
    expect(await running(w, "late")).toBe("Running");
    expect(w.kube.object("pods", "ns/early")?.status?.phase).toBe("Running");
    expect(
      controller
        .podsOn("node-2")
        .map((p) => p.metadata?.name)
        .sort(),
    ).toEqual(["early", "late"]);
    expect(w.provider.stats().createsByUid).toEqual({ "uid-early": 1, "uid-late": 1 });
  });

  it("picks up the pods of many names served at once with a few lists, not one each", async () => {
    const w = await world();
    const { controller, serve } = await startController(w, new Map([["node-1", "dev-1"]]));
    const names = Array.from({ length: 40 }, (_, i) => `fleet-${i}`);
    for (const name of names) w.kube.apply("pods", pod(`early-${name}`, name));
    await w.clock.advanceAsync(1_000);
    const listsBefore = w.kube.count("list");
    for (const name of names) serve(name, "dev-2");
    await w.clock.advanceAsync(1_000);
    for (const name of names)
      expect(controller.podsOn(name).map((p) => p.metadata?.name)).toEqual([`early-${name}`]);
    // The first name alone, then the 39 that came while it listed, as one list.
    expect(w.kube.count("list") - listsBefore).toBe(2);
  });

  it("drops the pods of a name it stops serving, except those whose work the provider holds, which are deleted as their objects go", async () => {
    const w = await world();
    const { controller, unserve } = await startController(
      w,
      new Map([
        ["node-1", "dev-1"],
        ["node-2", "dev-2"],
      ]),
    );
    w.kube.apply("pods", pod("run", "node-2"));
    w.kube.apply("pods", pod("done", "node-2", { status: { phase: "Succeeded" } }));
    await w.clock.advanceAsync(1_000);
    expect(await running(w, "run")).toBe("Running");
    expect(cached(controller, "done")).toBeDefined();

    // The device of node-2 is retired; its Node is gone, the pod garbage collector not there yet.
    unserve("node-2");
    await w.clock.advanceAsync(1_000);
    expect(cached(controller, "done")).toBeUndefined();
    expect(cached(controller, "run")).toBeDefined();
    expect(await running(w, "run")).toBe("Running");
    expect(w.deletes).toEqual([]);

    w.kube.remove("pods", "ns/run");
    await w.clock.advanceAsync(1_000);
    expect(w.deletes).toEqual(["uid-run"]);
    expect(await running(w, "run")).toBeUndefined();
    expect(cached(controller, "run")).toBeUndefined();
    expect(controller.stats()).toMatchObject({ held: 0, written: 0 });
  });

  it("keeps a pod whose work the provider holds cached after a restart, before its node name is served again", async () => {
    const w = await world();
    const first = await startController(w, new Map([["node-1", "dev-1"]]));
    w.kube.apply("pods", pod("gone", "node-1"));
    await w.clock.advanceAsync(1_000);
    w.kube.apply("pods", pod("keep", "node-1"));
    await w.clock.advanceAsync(1_000);
    expect(await running(w, "keep")).toBe("Running");
    w.kube.remove("pods", "ns/gone");
    await w.clock.advanceAsync(1_000);
    // The first address went to the pod that is gone now.
    expect(w.kube.object("pods", "ns/keep")?.status?.podIP).toBe("10.250.0.2");
    first.stop.abort();

    // Restarted before the provider reported dev-1: node-1 is not one of devicelet's names yet.
    const { controller, serve } = await startController(w, new Map());
    await w.clock.advanceAsync(5_000);
    expect(cached(controller, "keep")).toBeDefined();
    expect(w.deletes).toEqual(["uid-gone"]);
    expect(await running(w, "keep")).toBe("Running");

    serve("node-1", "dev-1");
    await w.clock.advanceAsync(5_000);
    expect(w.provider.stats().createsByUid).toEqual({ "uid-gone": 1, "uid-keep": 1 });
    expect(w.kube.object("pods", "ns/keep")?.status?.phase).toBe("Running");
    // Its address was taken back from its status when it was cached, not allocated anew.
    expect(w.kube.object("pods", "ns/keep")?.status?.podIP).toBe("10.250.0.2");
  });
});

describe("PodControllers sharing one pod informer and one reference cache (shard engines)", () => {
  it("each runs the pods of its own nodes, picked up when it starts, over one pod watch and one ConfigMap watch", async () => {
    const w = await world();
    const stop = new AbortController();
    stops.push(stop);
    const shared = {
      pods: new SharedPods({ client: w.kube, logger, clock: w.clock }),
      references: new ReferenceCache({ kube: w.kube, logger, clock: w.clock }),
    };
    void shared.pods.start(stop.signal);
    void shared.references.start(stop.signal);
    w.kube.apply("configmaps", { metadata: { namespace: "ns", name: "cfg" }, data: { mode: "one" } });
    const withConfig = (name: string, node: string) =>
      pod(name, node, {
        spec: {
          nodeName: node,
          containers: [
            { name: "app", image: "example.com/app:1", volumeMounts: [{ name: "c", mountPath: "/c" }] },
          ],
          volumes: [{ name: "c", configMap: { name: "cfg" } }],
        },
      });
    // Bound before either controller starts: the shared list drops them (no node served yet).
    w.kube.apply("pods", withConfig("one", "node-1"));
    w.kube.apply("pods", withConfig("two", "node-2"));
    await w.clock.advanceAsync(1_000);
    expect(shared.pods.size).toBe(0);

    // Each shard's engine has a provider of its own.
    const other = createMockProvider(
      { devices: [{ id: "dev-2" }], appStartDelayMs: 100, appStopDelayMs: 100 },
      { logger, clock: w.clock },
    );
    await other.start(stop.signal);
    const w2 = { ...w, provider: other };
    const first = await startController(w, new Map([["node-1", "dev-1"]]), shared);
    const second = await startController(w2, new Map([["node-2", "dev-2"]]), shared);
    w.kube.apply("pods", pod("three", "node-2"));
    await w.clock.advanceAsync(1_000);
    expect(await running(w, "one")).toBe("Running");
    expect(await running(w2, "two")).toBe("Running");
    expect(await running(w2, "three")).toBe("Running");
    expect([w.provider.stats().creates, other.stats().creates]).toEqual([1, 2]);
    expect(first.controller.managedPods().map((p) => p.metadata?.name)).toEqual(["one"]);
    expect(
      second.controller
        .managedPods()
        .map((p) => p.metadata?.name)
        .sort(),
    ).toEqual(["three", "two"]);
    expect(cached(first.controller, "two")).toBeUndefined();
    expect(w.kube.watching("pods")).toBe(1);
    expect(w.kube.watching("configmaps")).toBe(1);

    // A ConfigMap edit reaches the pod of each controller once: one update each.
    w.kube.apply("configmaps", { metadata: { namespace: "ns", name: "cfg" }, data: { mode: "two" } });
    await w.clock.advanceAsync(1_000);
    expect(first.controller.stats().updates).toBe(1);
    expect(second.controller.stats().updates).toBe(1);

    // The first stops (its shard moved): its pods leave the shared cache, the second's stay.
    first.stop.abort();
    await w.clock.advanceAsync(1_000);
    expect(shared.pods.size).toBe(2);
    expect(cached(second.controller, "two")).toBeDefined();
    expect(w.kube.watching("pods")).toBe(1);
  });
});
