import { describe, expect, it, vi } from "vitest";
import { FakeClock } from "../base/fake-clock.ts";
import type { Node, NodeStatus } from "../kube/index.ts";
import { testNodeConfig } from "../../test/support/node-config.ts";
import { seededRandom } from "../../test/support/seeded-random.ts";
import { buildNodeStatus, type TransportState } from "./build.ts";
import { newEntry, type NodeEntry } from "./controller-types.ts";
import { writeNodeStatus } from "./status-writer.ts";
import type { DeviceInfo, DeviceSync } from "../provider/types.ts";

// Counts the statuses built, to see the heartbeats that skip building.
vi.mock("./build.ts", async (importOriginal) => {
  const actual = await importOriginal<typeof import("./build.ts")>();
  return { ...actual, buildNodeStatus: vi.fn(actual.buildNodeStatus) };
});
const builds = () => vi.mocked(buildNodeStatus).mock.calls.length;

/** Status is due every 60 s: the writes below, 20 s apart in all, are for other reasons. */
const config = testNodeConfig;

/** An API client that keeps every node status patched and answers with the node as patched. */
function recordingKube() {
  const written: NodeStatus[] = [];
  const kube = {
    patchNodeStatus: (name: string, status: NodeStatus) => {
      written.push(status);
      return Promise.resolve({ metadata: { name }, status } as Node);
    },
  };
  return { kube, written };
}

/** A connected arm64 gateway, as a provider announces it; `over` replaces fields. */
const gateway = (id: string, over: Partial<DeviceInfo> = {}): DeviceInfo => ({
  id,
  deviceClass: "gateway",
  os: "linux",
  arch: "arm64",
  labels: {},
  capacity: {},
  addresses: [],
  connected: true,
  ...over,
});

describe("writeNodeStatus", () => {
  it("writes again at once when the node lifecycle controller marked a condition Unknown, not when next due", async () => {
    const clock = new FakeClock(Date.parse("2026-12-04T00:00:00Z"));
    const { kube, written } = recordingKube();
    const entry = newEntry({ name: "gw-1", device: undefined, problems: [], ownership: "owned" });
    const write = (node: Node) =>
      writeNodeStatus({ kube, config, version: "test", transport: undefined, entry, node, clock });

    const first = await write({ metadata: { name: "gw-1" }, status: {} });
    expect(written).toHaveLength(1);
    const ready = first?.status?.conditions?.find((c) => c.type === "Ready");
    expect(ready?.status).toBe("True");

    // The server's copy as devicelet wrote it, or one not caught up yet: nothing to write.
    clock.advance(10_000);
    expect(await write({ metadata: { name: "gw-1" }, status: first?.status ?? {} })).toBeUndefined();
    expect(await write({ metadata: { name: "gw-1" }, status: {} })).toBeUndefined();
    expect(written).toHaveLength(1);

    // The controller judged the Lease stale during an outage and marked the node Unknown.
    clock.advance(10_000);
    const unknown: Node = {
      metadata: { name: "gw-1" },
      status: {
        conditions: (first?.status?.conditions ?? []).map((c) =>
          c.type === "Ready"
            ? {
                ...c,
                status: "Unknown",
                reason: "NodeStatusUnknown",
                message: "Kubelet stopped posting node status.",
              }
            : c,
        ),
      },
    };
    await write(unknown);
    expect(written).toHaveLength(2);
    expect(written[1]?.conditions?.find((c) => c.type === "Ready")?.status).toBe("True");
  });

  it("writes a device's status once, and again only when something in it changed or it is due", async () => {
    const clock = new FakeClock(Date.parse("2026-12-04T00:00:00.400Z"));
    const { kube, written } = recordingKube();
    const device = gateway("gw-2", {
      capacity: { cpu: "4", memory: "1Gi" },
      addresses: [{ type: "InternalIP", address: "10.0.0.2" }],
      lastSeen: new Date("2026-12-04T00:00:00.700Z"),
    });
    const entry = newEntry({ name: "gw-2", device, problems: [], ownership: "owned" });
    const node: Node = { metadata: { name: "gw-2" }, status: {} };
    const write = () =>
      writeNodeStatus({ kube, config, version: "test", transport: undefined, entry, node, clock });

    await write();
    expect(written).toHaveLength(1);
    // Heartbeats with nothing new: the status built (Dates) matches the one written (strings).
    for (let i = 0; i < 4; i++) {
      clock.advance(10_000);
      expect(await write()).toBeUndefined();
    }
    expect(written).toHaveLength(1);
    entry.device = { ...device, connected: false };
    clock.advance(1_000);
    await write();
    expect(written).toHaveLength(2);
    expect(written[1]?.conditions?.find((c) => c.type === "DeviceConnected")?.status).toBe("False");
    // Due (testNodeConfig: every 60 s) with nothing new: written again.
    clock.advance(60_000);
    await write();
    expect(written).toHaveLength(3);
  });

  it("skips building at heartbeats whose inputs are unchanged, and writes exactly what building every time writes", async () => {
    const grace = 30_000;
    const random = seededRandom(20261206);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)] as T;
    let builtWithMemo = 0;
    let heartbeats = 0;
    for (let run = 0; run < 40; run++) {
      const clock = new FakeClock(Date.parse("2026-12-06T00:00:00.250Z") + run * 3_600_000);
      const base = gateway(`gw-${run}`, {
        capacity: { cpu: "4" },
        addresses: [{ type: "InternalIP", address: "10.0.0.2" }],
        lastSeen: new Date(clock.now()),
      });
      const devices = (): DeviceInfo =>
        pick<DeviceInfo>([
          { ...base }, // announced again, the same
          { ...base, connected: false, lastSeen: new Date(clock.now()) },
          { ...base, connected: false, sleep: { wakeAt: new Date(clock.now() + 600_000) } },
          { ...base, capacity: { cpu: pick(["2", "4", "8"]) } },
        ]);
      const transports = (): TransportState | undefined =>
        pick([
          undefined,
          { connected: true, message: "broker reachable" },
          { connected: false, message: "down" },
        ]);
      const syncs = (): DeviceSync | undefined => {
        const desired = 1 + Math.floor(random() * 4);
        return pick<DeviceSync | undefined>([
          undefined,
          { desiredGeneration: desired, appliedGeneration: desired },
          // Behind, so it turns ApplyPending once the grace has passed with no other change.
          { desiredGeneration: desired, appliedGeneration: desired - 1, behindSince: new Date(clock.now()) },
          { desiredGeneration: desired, appliedGeneration: desired - 1 }, // behind since unknown
          {
            desiredGeneration: desired,
            appliedGeneration: desired - 1,
            behindSince: new Date(clock.now() - 5_000),
            rejected: { generation: desired, reason: "Invalid", message: "bad config" },
          },
        ]);
      };
      // Two writers fed the same: one as devicelet runs it, one that never remembers its inputs.
      // Each draws its intervals from the same sequence: they write at the same heartbeats.
      const memo = {
        ...recordingKube(),
        entry: newEntry({ name: "gw", device: base, problems: [], ownership: "owned" }),
        random: seededRandom(run),
      };
      const every = {
        ...recordingKube(),
        entry: newEntry({ name: "gw", device: base, problems: [], ownership: "owned" }),
        random: seededRandom(run),
      };
      let node: Node = { metadata: { name: "gw" }, status: {} };
      let transport = transports();
      let sync = syncs();
      const write = (w: {
        kube: ReturnType<typeof recordingKube>["kube"];
        entry: NodeEntry;
        random: () => number;
      }) =>
        writeNodeStatus({
          kube: w.kube,
          config,
          version: "test",
          transport,
          entry: w.entry,
          node,
          clock,
          sync: { state: sync && { ...sync }, pendingGraceMs: grace },
          random: w.random,
        });
      for (let step = 0; step < 60; step++) {
        const r = random();
        if (r < 0.06) memo.entry.device = every.entry.device = devices();
        else if (r < 0.1) transport = transports();
        else if (r < 0.16) sync = syncs();
        else if (r < 0.18 && memo.written.length > 0) {
          // The node lifecycle controller marked Ready Unknown after a stale Lease.
          const last = memo.written.at(-1);
          node = {
            metadata: { name: "gw" },
            status: {
              conditions: (last?.conditions ?? []).map((c) =>
                c.type === "Ready" ? { ...c, status: "Unknown", reason: "NodeStatusUnknown" } : c,
              ),
            },
          };
        }
        clock.advance(pick([1_000, 10_000, 10_000, 10_000, 25_000]));
        const before = builds();
        const a = await write(memo);
        builtWithMemo += builds() - before;
        every.entry.unchangedFrom = undefined;
        const b = await write(every);
        heartbeats++;
        expect(a === undefined, `run ${run} step ${step}`).toBe(b === undefined);
        expect(memo.written, `run ${run} step ${step}`).toEqual(every.written);
        if (a) node = { metadata: { name: "gw" }, status: memo.written.at(-1) };
      }
    }
    // Heartbeats that changed nothing built nothing: the memo was used, not just harmless.
    // (70 % of them built at this seed: a write, or a change, makes the next heartbeat build.)
    expect(builtWithMemo).toBeLessThan(heartbeats * 0.8);
  });

  it("builds again when the device's sync can turn pending with time, and not otherwise", async () => {
    // All within the 60 s after the first write, so nothing is due: every build is the memo's call.
    const clock = new FakeClock(Date.parse("2026-12-06T00:00:00Z"));
    const { kube, written } = recordingKube();
    const device = gateway("gw-3");
    const entry = newEntry({ name: "gw-3", device, problems: [], ownership: "owned" });
    const node: Node = { metadata: { name: "gw-3" }, status: {} };
    let state: DeviceSync = { desiredGeneration: 2, appliedGeneration: 2 };
    const write = () =>
      writeNodeStatus({
        kube,
        config,
        version: "test",
        transport: undefined,
        entry,
        node,
        clock,
        sync: { state, pendingGraceMs: 15_000 },
        random: () => 0, // due at the whole 60 s, not sooner
      });
    await write();
    const steady = builds();
    for (let i = 0; i < 3; i++) {
      clock.advance(10_000);
      expect(await write()).toBeUndefined();
    }
    // The first heartbeat built and found nothing new; the next two built nothing.
    expect(builds() - steady).toBe(1);
    expect(written).toHaveLength(1);
    // Behind from now: still InSync at the next heartbeat (10 s), ApplyPending at the one after.
    state = { desiredGeneration: 3, appliedGeneration: 2, behindSince: new Date(clock.now()) };
    const behind = builds();
    clock.advance(10_000);
    expect(await write()).toBeUndefined();
    clock.advance(10_000);
    await write();
    expect(builds() - behind).toBe(2);
    expect(written).toHaveLength(2);
    expect(written[1]?.conditions?.find((c) => c.type === "DeviceInSync")?.reason).toBe("ApplyPending");
  });

  it("spreads the rewrites of statuses written together, never past the maximum interval", async () => {
    const maxMs = 300_000;
    const heartbeatMs = 10_000;
    const fleet = 200;
    const random = seededRandom(20261207);
    const clock = new FakeClock(Date.parse("2026-12-07T00:00:00Z"));
    const start = clock.now();
    const { kube } = recordingKube();
    const every5m = { ...config, statusMaxIntervalSeconds: maxMs / 1000 };
    // Registered together: each node's heartbeat (its Lease renewal) ticks every 10 s at a phase of its own.
    const nodes = Array.from({ length: fleet }, (_, i) => {
      const node: Node = { metadata: { name: `gw-${i}` }, status: {} };
      return {
        entry: newEntry({ name: `gw-${i}`, device: gateway(`gw-${i}`), problems: [], ownership: "owned" }),
        node,
        phase: 100 * Math.floor((random() * heartbeatMs) / 100),
        writes: [] as number[],
      };
    });
    for (let t = 0; t < 4 * maxMs; t += 100) {
      for (const n of nodes) {
        if (t % heartbeatMs !== n.phase) continue;
        const written = await writeNodeStatus({
          kube,
          config: every5m,
          version: "test",
          transport: undefined,
          entry: n.entry,
          node: n.node,
          clock,
          random,
        });
        if (written) {
          n.node = written;
          n.writes.push(clock.now() - start);
        }
      }
      clock.advance(100);
    }
    // Nothing changed, so every write after the first was due: never sooner than three quarters of
    // the maximum, never later than the first heartbeat after it.
    for (const n of nodes) {
      expect(n.writes[0]).toBeLessThan(heartbeatMs);
      const gaps = n.writes.slice(1).map((w, i) => w - (n.writes[i] ?? 0));
      expect(gaps.length).toBeGreaterThanOrEqual(3);
      for (const gap of gaps) {
        expect(gap).toBeGreaterThanOrEqual(maxMs * 0.75);
        expect(gap).toBeLessThan(maxMs + heartbeatMs);
      }
    }
    // The rewrites do not come as one wave: written in the same 10 s, due in the same 10 s, they
    // would all fall in one window of 10 s at each interval. Spread, no window holds a quarter.
    const rewrites = nodes.flatMap((n) => n.writes.slice(1)).sort((a, b) => a - b);
    let most = 0;
    for (let i = 0, j = 0; i < rewrites.length; i++) {
      while ((rewrites[i] ?? 0) - (rewrites[j] ?? 0) >= heartbeatMs) j++;
      most = Math.max(most, i - j + 1);
    }
    expect(most).toBeLessThan(fleet / 4);
  });
});
