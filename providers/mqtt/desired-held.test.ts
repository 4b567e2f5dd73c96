/**
 * When a pod change counts as held durably (DesiredStore.held, stop's flush) and what survives a
 * restart of the workload hashes (WorkloadHashes): a real allocator over the in-memory store, a
 * publish the test can hold like a broker that is away.
 */
import pino from "pino";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { DesiredDocument, DesiredPod } from "../../src/protocol/types.ts";
import { isTransient } from "../../src/provider/errors.ts";
import { MemoryStore } from "../../test/support/memory-store.ts";
import { DesiredStore } from "./desired.ts";
import { GenerationAllocator } from "./generations.ts";
import { MqttMetrics } from "./metrics.ts";
import { deviceHash } from "./translate.ts";
import { WorkloadHashes } from "./workload-hashes.ts";

const logger = pino({ level: "silent" });

const podOf = (uid: string, image = "example/app:1"): DesiredPod => {
  const pod = {
    uid,
    namespace: "ns",
    name: `pod-${uid}`,
    restartPolicy: "Always" as const,
    terminationGracePeriodSeconds: 30,
    apps: [{ name: "app", image, command: [], args: [], env: {}, files: [] }],
  };
  return { ...pod, hash: deviceHash(pod) };
};
const refOf = (uid: string) => ({ namespace: "ns", name: `pod-${uid}`, uid });

function setup(options: { connected?: boolean; waitingForTurn?: () => boolean } = {}) {
  const store = new MemoryStore();
  const published: DesiredDocument[] = [];
  const persisted: number[] = [];
  const gate = { hold: false, release: [] as (() => void)[] };
  const desired = new DesiredStore({
    allocator: new GenerationAllocator({ store, blockSize: 1000 }),
    publish: async (_topic, payload) => {
      if (gate.hold) await new Promise<void>((resolve) => gate.release.push(resolve));
      published.push(JSON.parse(payload.toString("utf8")) as DesiredDocument);
    },
    maxBytes: () => 256 * 1024,
    debounceMs: 5,
    publishTimeoutMs: 1000,
    ...(options.waitingForTurn ? { waitingForTurn: options.waitingForTurn } : {}),
    persist: () => {
      persisted.push(published.length);
    },
    connected: () => options.connected ?? true,
    onChange: () => undefined,
    metrics: new MqttMetrics(),
    logger,
  });
  /** Settles what a promise's outcome is without running its timeout. */
  const outcome = (p: Promise<void>) => {
    const seen: { state: "pending" | "resolved" | "rejected"; err?: unknown } = { state: "pending" };
    p.then(
      () => (seen.state = "resolved"),
      (err: unknown) => Object.assign(seen, { state: "rejected", err }),
    );
    return seen;
  };
  return { store, desired, published, persisted, gate, outcome };
}

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe("DesiredStore.held", () => {
  it("resolves every change of one debounce after the one document carrying them, not before", async () => {
    const t = setup();
    t.gate.hold = true;
    const calls = ["a", "b", "c"].map((uid) => {
      t.desired.upsertPod("d", refOf(uid), podOf(uid));
      return t.outcome(t.desired.held("d", uid));
    });
    await vi.advanceTimersByTimeAsync(50);
    expect(calls.map((c) => c.state)).toEqual(["pending", "pending", "pending"]);
    expect(t.published).toHaveLength(0);
    for (const release of t.gate.release) release();
    await vi.advanceTimersByTimeAsync(0);
    expect(calls.map((c) => c.state)).toEqual(["resolved", "resolved", "resolved"]);
    expect(t.published).toHaveLength(1);
    expect(t.published[0]?.pods.map((p) => p.uid)).toEqual(["a", "b", "c"]);
    // The hashes were handed to persist after the publish and before anyone was released.
    expect(t.persisted).toEqual([1]);
  });

  it("rejects Transient after the publish timeout while the broker does not take the document", async () => {
    const t = setup();
    t.gate.hold = true;
    t.desired.upsertPod("d", refOf("a"), podOf("a"));
    const call = t.outcome(t.desired.held("d", "a"));
    await vi.advanceTimersByTimeAsync(1_001);
    expect(call.state).toBe("rejected");
    expect(isTransient(call.err)).toBe(true);
  });

  it("does not count the time a document waits for its turn in a local budget (IoT Hub)", async () => {
    let inBudgetQueue = true;
    const t = setup({ waitingForTurn: () => inBudgetQueue });
    t.gate.hold = true;
    t.desired.upsertPod("d", refOf("a"), podOf("a"));
    const created = t.outcome(t.desired.held("d", "a"));
    await vi.advanceTimersByTimeAsync(4_500);
    expect(created.state).toBe("pending");
    // Its turn came: the publish timeout counts again, at most its length from now.
    inBudgetQueue = false;
    await vi.advanceTimersByTimeAsync(1_000);
    expect(created.state).toBe("rejected");
    expect(isTransient(created.err)).toBe(true);
  });

  it("resolves without a publish when the content cannot be sent (held back with a reason)", async () => {
    const t = setup();
    // 257 pods: more than a document may carry (DocumentInvalid), so no document comes.
    for (let i = 0; i < 257; i++) t.desired.upsertPod("d", refOf(`p${i}`), podOf(`p${i}`));
    const call = t.outcome(t.desired.held("d", "p0"));
    await vi.advanceTimersByTimeAsync(50);
    expect(call.state).toBe("resolved");
    expect(t.published).toHaveLength(0);
    expect(t.desired.device("d")?.unsendable?.reason).toBe("DocumentInvalid");
  });

  it("resolves at once for a pod kept out of the document", async () => {
    const t = setup();
    t.gate.hold = true;
    const blocked = { reason: "SecretRequiresTLS", message: "no" };
    t.desired.upsertPod("d", refOf("a"), podOf("a"), blocked);
    const call = t.outcome(t.desired.held("d", "a"));
    await vi.advanceTimersByTimeAsync(0);
    expect(call.state).toBe("resolved");
  });

  it("keeps a tombstone waiting when the content cannot be sent, while pod changes are released", async () => {
    const t = setup();
    t.desired.upsertPod("d", refOf("a"), podOf("a"));
    await vi.advanceTimersByTimeAsync(50);
    for (let i = 0; i < 257; i++) t.desired.upsertPod("d", refOf(`p${i}`), podOf(`p${i}`));
    const deleted = t.outcome(t.desired.tombstone("d", refOf("a"), 0).then(() => undefined));
    const created = t.outcome(t.desired.held("d", "p0"));
    await vi.advanceTimersByTimeAsync(50);
    expect(created.state).toBe("resolved");
    expect(deleted.state).toBe("pending");
    await vi.advanceTimersByTimeAsync(1_000);
    expect(deleted.state).toBe("rejected");
    expect(isTransient(deleted.err)).toBe(true);
  });
});

describe("DesiredStore.stop", () => {
  it("publishes what waits for its debounce while connected", async () => {
    const t = setup();
    t.desired.upsertPod("d", refOf("a"), podOf("a"));
    const stopped = t.outcome(t.desired.stop());
    await vi.advanceTimersByTimeAsync(0);
    expect(stopped.state).toBe("resolved");
    expect(t.published.map((doc) => doc.pods.map((p) => p.uid))).toEqual([["a"]]);
  });

  it("drops it without waiting while disconnected", async () => {
    const t = setup({ connected: false });
    t.desired.upsertPod("d", refOf("a"), podOf("a"));
    await t.desired.stop();
    await vi.advanceTimersByTimeAsync(50);
    expect(t.published).toHaveLength(0);
  });
});

describe("WorkloadHashes", () => {
  it("gives a restarted process the workload hash stored for the device hash the document carries", async () => {
    const store = new MemoryStore();
    const before = new WorkloadHashes({ store, logger });
    await before.load();
    await before.save("gw-1", [
      ["a", "dev-a1", "work-a1"],
      ["b", "dev-b1", "work-b1", "t1"],
    ]);
    const after = new WorkloadHashes({ store, logger });
    await after.load();
    expect(after.restored("a", "dev-a1")).toEqual({ workloadHash: "work-a1", restartToken: undefined });
    // A document carrying another version of the pod than the one stored: not this hash.
    expect(after.restored("b", "dev-b1")).toEqual({ workloadHash: "work-b1", restartToken: "t1" });
    expect(after.restored("b", "dev-b2")).toBeUndefined();
    expect(after.restored("c", "dev-c1")).toBeUndefined();
  });

  it("forgets what another configuration stored: its documents may differ under the new rules", async () => {
    const store = new MemoryStore();
    const before = new WorkloadHashes({ store, logger, config: "trusting-gw-1" });
    await before.load();
    await before.save("gw-1", [["a", "dev-a1", "work-a1"]]);
    const same = new WorkloadHashes({ store, logger, config: "trusting-gw-1" });
    await same.load();
    expect(same.restored("a", "dev-a1")?.workloadHash).toBe("work-a1");
    const changed = new WorkloadHashes({ store, logger, config: "trusting-nobody" });
    await changed.load();
    expect(changed.restored("a", "dev-a1")).toBeUndefined();
  });

  it("writes only when the device's hashes changed", async () => {
    const store = new MemoryStore();
    const set = vi.spyOn(store, "set");
    const hashes = new WorkloadHashes({ store, logger });
    await hashes.load();
    await hashes.save("gw-1", [["a", "dev-a1", "work-a1"]]);
    await hashes.save("gw-1", [["a", "dev-a1", "work-a1"]]);
    await hashes.save("gw-1", [["a", "dev-a1", "work-a2"]]);
    expect(set).toHaveBeenCalledTimes(2);
  });
});
