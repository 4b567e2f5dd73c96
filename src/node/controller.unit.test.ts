/**
 * NodeController without a cluster: the in-memory API server of test/support/fake-kube.ts, the
 * mock provider's devices, and a FakeClock under every lease, retry and status heartbeat. Each
 * test asserts what the API server holds at the end: nodes adopted rather than created again
 * after a restart, and leases that survive failing, conflicting and vanishing writes.
 */
import pino, { type Logger } from "pino";
import { afterEach, describe, expect, it, vi } from "vitest";
import { FakeClock } from "../base/fake-clock.ts";
import { parseKubeTime, type Lease } from "../kube/index.ts";
import type { DeviceInventory, DeviceSync, DeviceSyncReporter } from "../provider/types.ts";
import { createMockProvider, type MockProvider } from "../../providers/mock/index.ts";
import { seededRandom } from "../../test/support/seeded-random.ts";
import { apiError, FakeKube } from "../../test/support/fake-kube.ts";
import type { KubeletPortAssigner, NodeControllerOptions } from "./controller-types.ts";
import { RequestTimeoutError } from "../kube/transport.ts";
import { TRANSPORT_TAINT_KEY } from "./build.ts";
import { NodeController } from "./controller.ts";
import { READY_MESSAGE } from "./status-writer.ts";

const logger = pino({ level: "silent" });
const DEVICES = ["dev-0", "dev-1"];

let stops: AbortController[] = [];
afterEach(() => {
  for (const s of stops) s.abort();
  stops = [];
  vi.restoreAllMocks();
});

interface World {
  readonly clock: FakeClock;
  readonly kube: FakeKube;
  readonly provider: MockProvider;
}

async function world(devices = 2): Promise<World> {
  const clock = new FakeClock(Date.parse("2026-03-01T12:00:00Z"));
  const kube = new FakeKube({ clock });
  const provider = createMockProvider({ devices: { count: devices, idPrefix: "dev-" } }, { logger, clock });
  const stop = new AbortController();
  stops.push(stop);
  await provider.start(stop.signal);
  return { clock, kube, provider };
}

/** A NodeController on `w`; a second one on the same world is devicelet after a restart. */
async function startNodes(
  w: World,
  inventory: DeviceInventory = w.provider,
  kubeletPorts?: KubeletPortAssigner,
  log: Logger = logger,
  sync?: DeviceSyncReporter,
  more: Partial<NodeControllerOptions> = {},
) {
  const stop = new AbortController();
  stops.push(stop);
  const nodes = new NodeController({
    ...more,
    ...(sync ? { sync } : {}),
    ...(kubeletPorts ? { kubeletPorts } : {}),
    kube: w.kube,
    inventory,
    providerName: "mock",
    version: "v0.0.0-test",
    logger: log,
    clock: w.clock,
    config: {
      namePrefix: "",
      taintKey: "virtual-kubelet.io/provider",
      extraLabels: { "devicelet.dev/test": "unit" },
      leaseDurationSeconds: 40,
      leaseRenewIntervalSeconds: 10,
      statusMaxIntervalSeconds: 60,
      kubeletPort: 10250,
      kubeletAddress: "127.0.0.1",
      heartbeatQps: 100,
    },
  });
  await nodes.start(stop.signal);
  await w.clock.advanceAsync(0);
  return { nodes, stop };
}

const lease = (w: World, name: string) => w.kube.object("leases", `kube-node-lease/${name}`);
const renewedAt = (l: Lease | undefined) => parseKubeTime(l?.spec?.renewTime ?? "");
const nodeUid = (w: World, name: string) => w.kube.object("nodes", name)?.metadata?.uid;
/** Fails `patchLeaseSpec` of node `name` while `failing()` says so, recording when it was tried. */
const failLeaseOf = (w: World, name: string, failing: (tries: number) => boolean) => {
  const tries: number[] = [];
  w.kube.fail("patchLeaseSpec", (args) => {
    if (args[0] !== name) return undefined;
    tries.push(w.clock.now());
    return failing(tries.length) ? apiError(503, "ServiceUnavailable") : undefined;
  });
  return tries;
};

describe("NodeController (fake API server, FakeClock)", () => {
  it("registers a node and a Lease per device, and adopts both after a restart without creating them again", async () => {
    const w = await world();
    const first = await startNodes(w);
    expect(w.kube.objects("nodes").map((n) => n.metadata?.name)).toEqual(DEVICES);
    for (const name of DEVICES) {
      expect(lease(w, name)?.metadata?.ownerReferences?.[0]?.uid).toBe(nodeUid(w, name));
      expect(renewedAt(lease(w, name))).toBe(w.clock.now());
    }
    const uids = DEVICES.map((n) => nodeUid(w, n));
    const created = { nodes: w.kube.count("createNode"), leases: w.kube.count("createLease") };
    expect(created).toEqual({ nodes: 2, leases: 2 });
    // A Node it just created has no Lease yet: created at once, no patch meeting a 404 first.
    expect(w.kube.count("patchLeaseSpec")).toBe(0);
    first.stop.abort();

    // Down for a while: nothing renews. Then a new process starts.
    await w.clock.advanceAsync(30_000);
    const downAt = w.clock.now();
    expect(renewedAt(lease(w, "dev-0"))).toBeLessThan(downAt);
    const { nodes } = await startNodes(w);
    expect(w.kube.count("createNode")).toBe(created.nodes);
    expect(w.kube.count("createLease")).toBe(created.leases);
    expect(DEVICES.map((n) => nodeUid(w, n))).toEqual(uids);
    // Its first renewals come at once: the leases were nearly stale.
    for (const name of DEVICES) expect(renewedAt(lease(w, name))).toBe(downAt);
    expect(nodes.byNodeName("dev-0")?.deviceId).toBe("dev-0");
    const ready = w.kube.object("nodes", "dev-0")?.status?.conditions?.find((c) => c.type === "Ready");
    expect(ready?.status).toBe("True");
  });

  it("creates a Node with the status, in-sync label and taint its first heartbeat would write, and writes none of them after", async () => {
    const w = await world();
    const sync: DeviceSyncReporter = {
      deviceSync: () => ({ desiredGeneration: 1, appliedGeneration: 1 }),
      notifyDeviceSync: () => undefined,
    };
    // The broker is unreachable as the nodes register: TransportConnected False, and the taint.
    await startNodes(w, w.provider, undefined, logger, sync, {
      transport: () => ({ ready: false, message: "broker unreachable" }),
    });
    expect(w.kube.count("createNode")).toBe(2);
    expect(w.kube.count("createLease")).toBe(2);
    const node = w.kube.object("nodes", "dev-0");
    const condition = (type: string) => node?.status?.conditions?.find((c) => c.type === type);
    expect(condition("Ready")).toMatchObject({ status: "True", message: READY_MESSAGE });
    expect(condition("TransportConnected")).toMatchObject({ status: "False", message: "broker unreachable" });
    expect(condition("DeviceInSync")?.status).toBe("True");
    expect(node?.status?.capacity?.pods).toBeDefined();
    expect(node?.metadata?.labels?.["devicelet.dev/in-sync"]).toBe("true");
    expect(node?.spec?.taints?.map((t) => t.key)).toContain(TRANSPORT_TAINT_KEY);
    // The heartbeats find nothing new, and nothing is due before three quarters of the 60 s.
    await w.clock.advanceAsync(40_000);
    expect(w.kube.count("patchNodeStatus")).toBe(0);
    expect(w.kube.count("patchNode")).toBe(0);
    // Due by 60 s at the latest: each node's status is written again by the heartbeat after it.
    await w.clock.advanceAsync(30_000);
    expect(w.kube.count("patchNodeStatus")).toBe(2);
    expect(w.kube.count("patchNode")).toBe(0);
  });

  it("patches the in-sync label once, not again each time its lagging cache still lacks it", async () => {
    const w = await world();
    const states = new Map<string, DeviceSync>();
    const listeners: ((deviceId: string) => void)[] = [];
    const sync: DeviceSyncReporter = {
      deviceSync: (id) => states.get(id),
      notifyDeviceSync: (callback) => listeners.push(callback),
    };
    await startNodes(w, w.provider, undefined, logger, sync);
    const inSyncPatches = () =>
      w.kube.calls.filter(
        (c) =>
          (c.verb === "patchNode" || c.verb === "patchNodeStatus") &&
          JSON.stringify(c.args).includes("in-sync"),
      );
    const label = () => w.kube.object("nodes", "dev-0")?.metadata?.labels?.["devicelet.dev/in-sync"];
    const report = async (generation: number) => {
      states.set("dev-0", { desiredGeneration: generation, appliedGeneration: generation });
      for (const l of listeners) l("dev-0");
      await w.clock.advanceAsync(0);
    };

    // The node informer lags (a burst of pod work): the device reports three times meanwhile.
    w.kube.holdWatches("nodes");
    for (const generation of [1, 2, 3]) await report(generation);
    expect(label()).toBe("true");
    expect(inSyncPatches()).toHaveLength(1);
    // Set with the DeviceInSync condition it follows, in the status patch: no node patch of its own.
    expect(inSyncPatches()[0]?.verb).toBe("patchNodeStatus");
    expect(w.kube.count("patchNode")).toBe(0);
    w.kube.releaseWatches("nodes");
    await report(4);
    expect(inSyncPatches()).toHaveLength(1);

    // Someone else removes the label: the next look puts it back, from the cache that shows it gone.
    const node = w.kube.object("nodes", "dev-0") ?? {};
    const { "devicelet.dev/in-sync": _removed, ...labels } = node.metadata?.labels ?? {};
    w.kube.apply("nodes", { ...node, metadata: { ...node.metadata, labels } });
    await w.clock.advanceAsync(0);
    expect(label()).toBeUndefined();
    await report(5);
    expect(label()).toBe("true");
    expect(inSyncPatches()).toHaveLength(2);
    // The status had nothing new to write: the label went back alone.
    expect(inSyncPatches()[1]?.verb).toBe("patchNode");
  });

  it("advertises each node's own kubelet port, keeps it after a restart and frees it when the device goes", async () => {
    const w = await world();
    /** Hands out 20000, 20001, … in order of asking; remembers what was preferred and released. */
    const assigner = () => {
      const held = new Map<string, number>();
      const preferred = new Map<string, number | undefined>();
      const released: string[] = [];
      let next = 20000;
      const ports: KubeletPortAssigner = {
        assign: (node, want) => {
          preferred.set(node, want);
          if (!held.has(node)) held.set(node, want ?? next++);
          return Promise.resolve(held.get(node) ?? 0);
        },
        release: (node) => {
          released.push(node);
          held.delete(node);
          return Promise.resolve();
        },
      };
      return { ports, held, preferred, released };
    };
    const first = assigner();
    const run = await startNodes(w, w.provider, first.ports);
    const portOf = (name: string) =>
      w.kube.object("nodes", name)?.status?.daemonEndpoints?.kubeletEndpoint?.Port;
    expect(DEVICES.map(portOf)).toEqual(DEVICES.map((d) => first.held.get(d)));
    expect(new Set(DEVICES.map(portOf)).size).toBe(2);
    // A heartbeat's status write keeps the node's own port.
    await w.clock.advanceAsync(61_000);
    expect(DEVICES.map(portOf)).toEqual(DEVICES.map((d) => first.held.get(d)));
    run.stop.abort();
    const second = assigner();
    await startNodes(w, w.provider, second.ports);
    expect(DEVICES.map((d) => second.preferred.get(d))).toEqual(DEVICES.map((d) => first.held.get(d)));
    w.provider.removeDevice("dev-1");
    await w.clock.advanceAsync(0);
    await w.clock.advanceAsync(1_000);
    expect(second.released).toEqual(["dev-1"]);
  });

  it("heartbeats the nodes of an earlier run before the provider reports any device", async () => {
    const w = await world();
    const first = await startNodes(w);
    first.stop.abort();
    await w.clock.advanceAsync(30_000);

    // The provider waits for its broker: no device yet. The nodes stay Ready all the same.
    const silent: DeviceInventory = { listDevices: () => Promise.resolve([]), watchDevices: () => undefined };
    const { nodes } = await startNodes(w, silent);
    await w.clock.advanceAsync(60_000);
    expect(w.kube.count("createNode")).toBe(2);
    for (const name of DEVICES) expect(renewedAt(lease(w, name))).toBeGreaterThan(w.clock.now() - 12_000);
    // Known by name for the heartbeat only: no pod is routed to a device nobody has reported.
    expect(nodes.byNodeName("dev-0")).toBeUndefined();
  });

  it("tells which node names are its own: an earlier run's before their device is reported, a new device's, not a gone one's", async () => {
    const w = await world();
    const first = await startNodes(w);
    first.stop.abort();
    let watcher: Parameters<DeviceInventory["watchDevices"]>[0] | undefined;
    const later: DeviceInventory = {
      listDevices: () => Promise.resolve([]),
      watchDevices: (wt) => (watcher = wt),
    };
    const { nodes } = await startNodes(w, later);
    const changes: string[] = [];
    nodes.onNodeNames((name, change) => changes.push(`${change} ${name}`));
    // Known by name from the start, so the pods bound to them are cached, though not yet routed.
    expect(DEVICES.map((n) => nodes.hasNodeName(n))).toEqual([true, true]);
    expect(nodes.byNodeName("dev-0")).toBeUndefined();
    expect(nodes.hasNodeName("kubeadm-1")).toBe(false);

    const [device] = await w.provider.listDevices();
    if (!device || !watcher) throw new Error("no device or watcher");
    watcher.changed({ ...device, id: "dev-9" });
    expect(nodes.hasNodeName("dev-9")).toBe(true);
    watcher.changed({ ...device, id: "dev-9", connected: false }); // a change, not a new name
    watcher.gone("dev-0");
    await w.clock.advanceAsync(1_000);
    expect(changes).toEqual(["added dev-9", "removed dev-0"]);
    expect(nodes.hasNodeName("dev-0")).toBe(false);
    expect(w.kube.object("nodes", "dev-0")).toBeUndefined();
  });

  it("heartbeats a node whose create the API server carried out but answered too late", async () => {
    const w = await world();
    // The create reaches the API server, which stores the Node, but its answer never comes back
    // in time (a 5,000-device registration on two busy cores did this to 4 nodes).
    const create = w.kube.createNode.bind(w.kube);
    let lost = 0;
    vi.spyOn(w.kube, "createNode").mockImplementation(async (node) => {
      const made = await create(node);
      if (node.metadata?.name !== "dev-0" || lost++ > 0) return made;
      throw new RequestTimeoutError("create", "nodes", new Error("aborted"));
    });
    w.kube.holdWatches("nodes");
    await startNodes(w);
    await w.clock.advanceAsync(5_000);
    expect(lost).toBe(1);
    expect(w.kube.objects("nodes").map((n) => n.metadata?.name)).toEqual(DEVICES);
    // Its Lease is there and renewed like the other's: no node-lifecycle controller takes it for dead.
    expect(lease(w, "dev-0")?.metadata?.ownerReferences?.[0]?.uid).toBe(nodeUid(w, "dev-0"));
    expect(renewedAt(lease(w, "dev-0"))).toBeGreaterThan(w.clock.now() - 5_000);
    await w.clock.advanceAsync(60_000);
    expect(renewedAt(lease(w, "dev-0"))).toBeGreaterThan(w.clock.now() - 12_000);
  });

  it("registers a new device's node ahead of the status refreshes of the nodes it has", async () => {
    const w = await world(40);
    let watcher: Parameters<DeviceInventory["watchDevices"]>[0] | undefined;
    const inventory: DeviceInventory = {
      listDevices: () => w.provider.listDevices(),
      watchDevices: (wt) => (watcher = wt),
    };
    await startNodes(w, inventory);
    expect(w.kube.count("createNode")).toBe(40);
    // The API server holds node status writes: the refreshes due after a minute take every
    // worker of the node queue (32), and the other nodes' refreshes wait in line.
    const order: string[] = [];
    const held: (() => void)[] = [];
    const patch = w.kube.patchNodeStatus.bind(w.kube);
    vi.spyOn(w.kube, "patchNodeStatus").mockImplementation(async (...args) => {
      order.push("refresh");
      await new Promise<void>((resolve) => held.push(resolve));
      return patch(...args);
    });
    const create = w.kube.createNode.bind(w.kube);
    vi.spyOn(w.kube, "createNode").mockImplementation((node) => {
      order.push(`create ${node.metadata?.name ?? ""}`);
      return create(node);
    });
    // Two minutes: every node's refresh is due, 32 held and 8 in line.
    await w.clock.advanceAsync(120_000);
    expect(order).toEqual(Array.from({ length: 32 }, () => "refresh"));
    const [device] = await w.provider.listDevices();
    if (!device || !watcher) throw new Error("no device or watcher");
    watcher.changed({ ...device, id: "dev-new" });
    // One write answered: the worker it frees registers the new device, not the next refresh.
    held.shift()?.();
    await w.clock.advanceAsync(0);
    expect(order[32]).toBe("create dev-new");
    for (let i = 0; i < 200 && held.length > 0; i++) {
      held.shift()?.();
      await w.clock.advanceAsync(0);
    }
    expect(w.kube.object("nodes", "dev-new")).toBeDefined();
  });

  it("retries a failed lease renewal with backoff on the clock, then renews every interval again", async () => {
    const w = await world();
    const { nodes } = await startNodes(w);
    const tries = failLeaseOf(w, "dev-0", (n) => n <= 3);
    await w.clock.advanceAsync(30_000);
    // The first renewal fails, then 0.5, 1 and 2 s (±20 %) between the tries: well inside the lease.
    const gaps = tries.slice(1, 4).map((t, i) => t - (tries[i] ?? 0));
    [500, 1_000, 2_000].forEach((step, i) => {
      expect(gaps[i]).toBeGreaterThanOrEqual(0.8 * step);
      expect(gaps[i]).toBeLessThanOrEqual(1.2 * step);
    });
    expect(renewedAt(lease(w, "dev-0"))).toBeGreaterThan(tries[3] ?? Infinity);
    expect(nodes.leaseRenewals().get("dev-0")).toBeGreaterThanOrEqual(3);
    // Back on its interval: after the fourth try, renewals are 9–11 s apart.
    const after = tries.slice(3);
    expect(after.length).toBeGreaterThanOrEqual(2);
    for (let i = 1; i < after.length; i++)
      expect((after[i] ?? 0) - (after[i - 1] ?? 0)).toBeGreaterThanOrEqual(9_000);
  });

  it("writes the summary of lease failures not logged one by one when it stops", async () => {
    const lines: { msg: string; failures?: number }[] = [];
    const recording = pino(
      { level: "info" },
      { write: (line: string) => lines.push(JSON.parse(line) as never) },
    );
    const w = await world();
    const { stop } = await startNodes(w, w.provider, undefined, recording);
    w.kube.fail("patchLeaseSpec", () => apiError(503, "ServiceUnavailable"));
    // Both leases fail their renewal and three retries: eight failures, five of them logged one by one.
    await w.clock.advanceAsync(16_000);
    const one = lines.filter((l) => l.msg.startsWith("node lease renewal failed")).length;
    expect(one).toBe(5);
    expect(lines.some((l) => l.msg.startsWith("node lease renewals failing on more nodes"))).toBe(false);
    stop.abort();
    const summary = lines.find((l) => l.msg.startsWith("node lease renewals failing on more nodes"));
    expect(summary?.failures).toBeGreaterThan(0);
  });

  it("takes back a Lease someone else wrote without re-reading it, and creates it again when it vanished (404)", async () => {
    const w = await world();
    await startNodes(w);
    const theirs = lease(w, "dev-0");
    if (!theirs) throw new Error("no lease");
    w.kube.apply("leases", { ...theirs, spec: { ...theirs.spec, holderIdentity: "someone-else" } });
    const gets = w.kube.count("getLease");
    const patches = w.kube.count("patchLeaseSpec");
    await w.clock.advanceAsync(12_000);
    expect(lease(w, "dev-0")?.spec?.holderIdentity).toBe("dev-0");
    expect(renewedAt(lease(w, "dev-0"))).toBeGreaterThan(w.clock.now() - 12_000);
    expect(w.kube.count("getLease")).toBe(gets);
    // One patch per renewal of each node in those 12 s (every 9 to 11 s): no retries.
    expect(w.kube.count("patchLeaseSpec") - patches).toBeLessThanOrEqual(DEVICES.length * 2);

    w.kube.remove("leases", "kube-node-lease/dev-0");
    const creates = w.kube.count("createLease");
    await w.clock.advanceAsync(12_000);
    const again = lease(w, "dev-0");
    expect(again?.metadata?.ownerReferences?.[0]?.uid).toBe(nodeUid(w, "dev-0"));
    expect(renewedAt(again)).toBeGreaterThan(w.clock.now() - 12_000);
    expect(w.kube.count("createLease")).toBe(creates + 1);
  });

  it("renews every failing lease within a quarter second once one gets through again", async () => {
    // Deterministic jitter, so the leases' backoffs are apart by a known amount.
    vi.spyOn(Math, "random").mockImplementation(seededRandom(11));
    const w = await world();
    await startNodes(w);
    // dev-1 fails from its next renewal on, dev-0 from three seconds later: their retries differ.
    let outage = true;
    const t0 = w.clock.now();
    failLeaseOf(w, "dev-1", () => outage);
    failLeaseOf(w, "dev-0", () => outage && w.clock.now() > t0 + 13_000);
    await w.clock.advanceAsync(60_000);
    const healedAt = w.clock.now();
    expect(DEVICES.map((n) => renewedAt(lease(w, n)) < healedAt - 40_000)).toEqual([true, true]);

    outage = false;
    for (let waited = 0; waited < 10_000; waited += 50) {
      if (DEVICES.some((n) => renewedAt(lease(w, n)) > healedAt)) break;
      await w.clock.advanceAsync(50);
    }
    await w.clock.advanceAsync(300);
    const renewed = DEVICES.map((n) => renewedAt(lease(w, n)));
    for (const t of renewed) expect(t).toBeGreaterThan(healedAt);
    expect(Math.abs((renewed[0] ?? 0) - (renewed[1] ?? 0))).toBeLessThanOrEqual(250);
  });
});
