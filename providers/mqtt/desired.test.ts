import pino from "pino";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { desiredContentHash } from "../../src/protocol/codec.ts";
import type { DesiredDocument, DesiredPod } from "../../src/protocol/types.ts";
import { MemoryStore } from "../../test/support/memory-store.ts";
import { DesiredStore } from "./desired.ts";
import { GenerationAllocator, storeKey } from "./generations.ts";
import { MqttMetrics } from "./metrics.ts";
import { deviceHash } from "./translate.ts";

const logger = pino({ level: "silent" });

const podOf = (uid: string, image = "example/app:1", blob = ""): DesiredPod => {
  const pod = {
    uid,
    namespace: "ns",
    name: `pod-${uid}`,
    restartPolicy: "Always" as const,
    terminationGracePeriodSeconds: 30,
    apps: [
      {
        name: "app",
        image,
        command: [],
        args: [],
        env: (blob ? { BLOB: blob } : {}) as Record<string, string>,
        files: [],
      },
    ],
  };
  return { ...pod, hash: deviceHash(pod) };
};
const refOf = (uid: string) => ({ namespace: "ns", name: `pod-${uid}`, uid });

function setup(options: { store?: MemoryStore; maxBytes?: number; block?: number } = {}) {
  const store = options.store ?? new MemoryStore();
  const published: DesiredDocument[] = [];
  /** Per document published: when it was issued, and the first change it carries. */
  const timings: { issuedAtMs: number; changedAtMs: number | undefined }[] = [];
  let release: (() => void) | undefined;
  let hold = false;
  const allocator = new GenerationAllocator({ store, blockSize: options.block ?? 1000 });
  const desired = new DesiredStore({
    allocator,
    publish: async (_topic, payload) => {
      if (hold) await new Promise<void>((resolve) => (release = resolve));
      published.push(JSON.parse(payload.toString("utf8")) as DesiredDocument);
    },
    maxBytes: () => options.maxBytes ?? 256 * 1024,
    debounceMs: 5,
    publishTimeoutMs: 1000,
    onChange: () => undefined,
    onPublished: (_id, _epoch, _generation, issuedAtMs, changedAtMs) =>
      timings.push({ issuedAtMs, changedAtMs }),
    metrics: new MqttMetrics(),
    logger,
  });
  // Fake timers: runs every debounce and what it starts, without waiting real time.
  const settled = () => vi.runAllTimersAsync();
  return {
    store,
    desired,
    published,
    timings,
    settled,
    hold: (on: boolean) => (hold = on),
    release: () => release?.(),
  };
}

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe("DesiredStore", () => {
  it("coalesces changes to one device into one document, latest wins", async () => {
    const t = setup();
    t.desired.upsertPod("d", refOf("a"), podOf("a"));
    t.desired.upsertPod("d", refOf("b"), podOf("b"));
    t.desired.upsertPod("d", refOf("a"), podOf("a", "example/app:2"));
    await t.settled();
    expect(t.published).toHaveLength(1);
    const doc = t.published[0];
    expect(doc?.pods.map((p) => [p.uid, p.apps[0]?.image])).toEqual([
      ["a", "example/app:2"],
      ["b", "example/app:1"],
    ]);
    expect(doc?.contentHash).toBe(desiredContentHash(doc?.pods ?? [], doc?.tombstones ?? []));
  });

  it("tells each document's first change, so the issue latency counts the debounce and in-flight waits", async () => {
    const t = setup();
    const start = Date.now();
    t.desired.upsertPod("d", refOf("a"), podOf("a"));
    await vi.advanceTimersByTimeAsync(3);
    t.desired.upsertPod("d", refOf("b"), podOf("b")); // same document: its first change stays
    await t.settled();
    expect(t.timings).toEqual([{ issuedAtMs: start + 5, changedAtMs: start }]);

    t.hold(true);
    t.desired.upsertPod("d", refOf("c"), podOf("c"));
    await vi.advanceTimersByTimeAsync(5); // issued, waiting for the broker
    const changedWhileInFlight = Date.now() + 10;
    await vi.advanceTimersByTimeAsync(10);
    t.desired.upsertPod("d", refOf("a"), podOf("a", "example/app:2"));
    await vi.advanceTimersByTimeAsync(20);
    t.hold(false);
    t.release();
    await t.settled();
    expect(t.timings).toHaveLength(3);
    expect(t.timings[2]?.changedAtMs).toBe(changedWhileInFlight);
    expect(t.timings[2]?.issuedAtMs).toBeGreaterThanOrEqual(changedWhileInFlight + 20);
  });

  it("holds further changes while a publish is in flight, then sends them as one", async () => {
    const t = setup();
    t.hold(true);
    t.desired.upsertPod("d", refOf("a"), podOf("a"));
    await t.settled();
    t.desired.upsertPod("d", refOf("b"), podOf("b"));
    t.desired.upsertPod("d", refOf("c"), podOf("c"));
    t.hold(false);
    t.release();
    await t.settled();
    expect(t.published.map((d) => d.pods.length)).toEqual([1, 3]);
    expect(t.published.map((d) => d.generation)).toEqual([1, 2]);
  });

  it("reserves generations in blocks: one store write per block, none per document", async () => {
    const t = setup({ block: 3 });
    for (const uid of ["a", "b", "c", "d", "e"]) {
      t.desired.upsertPod("dev", refOf(uid), podOf(uid));
      await t.settled();
    }
    expect(t.published.map((d) => d.generation)).toEqual([1, 2, 3, 4, 5]);
    expect(t.store.writes).toBe(2);
    expect(JSON.parse(t.store.values.get(storeKey("dev")) ?? "{}")).toMatchObject({ reservedThrough: 6 });
  });

  it("never reuses a generation after a restart and keeps the epoch", async () => {
    const first = setup();
    first.desired.upsertPod("d", refOf("a"), podOf("a"));
    await first.settled();
    const doc = first.published[0] as DesiredDocument;
    const second = setup({ store: first.store });
    second.desired.adopt(doc);
    second.desired.upsertPod("d", refOf("a"), podOf("a")); // unchanged: nothing to publish
    await second.settled();
    expect(second.published).toHaveLength(0);
    second.desired.upsertPod("d", refOf("b"), podOf("b"));
    await second.settled();
    expect(second.published[0]?.epoch).toBe(doc.epoch);
    expect(second.published[0]?.generation).toBe(1001);
  });

  it("resolves a delete once the tombstone is published; drops pods never sent", async () => {
    const t = setup();
    t.desired.upsertPod("d", refOf("a"), podOf("a"));
    await t.settled();
    const deleted = t.desired.tombstone("d", refOf("a"), 5);
    await t.settled();
    expect(await deleted).toBe("tombstoned");
    expect(t.published.at(-1)?.tombstones).toEqual([
      { uid: "a", namespace: "ns", name: "pod-a", deleted: true, gracePeriodSeconds: 5 },
    ]);
    t.desired.upsertPod("d", refOf("b"), podOf("b"));
    expect(await t.desired.tombstone("d", refOf("b"), 5)).toBe("dropped");
    t.desired.clearTombstone("d", "a");
    await t.settled();
    expect(t.published.at(-1)).toMatchObject({ pods: [], tombstones: [] });
  });

  it("leaves out a new pod that would make the document too large, and says so", async () => {
    const t = setup({ maxBytes: 1500 });
    t.desired.upsertPod("d", refOf("a"), podOf("a", "example/app:1", "x".repeat(1200)));
    await t.settled();
    expect(t.published).toHaveLength(0);
    expect(t.desired.device("d")?.pods.get("a")?.deferred?.reason).toBe("DocumentTooLarge");
  });

  it("keeps the version the device has of a pod whose update does not fit; other changes still go", async () => {
    const t = setup({ maxBytes: 1500 });
    t.desired.upsertPod("d", refOf("a"), podOf("a"));
    await t.settled();
    t.desired.upsertPod("d", refOf("a"), podOf("a", "example/app:2", "x".repeat(1200)));
    t.desired.upsertPod("d", refOf("b"), podOf("b"));
    await t.settled();
    expect(t.published).toHaveLength(2);
    expect(t.published[1]?.pods.map((p) => [p.uid, p.apps[0]?.image])).toEqual([
      ["a", "example/app:1"],
      ["b", "example/app:1"],
    ]);
    const d = t.desired.device("d");
    expect(d?.pods.get("a")?.deferred?.message).toMatch(/keeps the version it has/);
    expect(d?.pods.get("b")?.deferred).toBeUndefined();
    // A later, unrelated change does not publish the same reduced content again.
    t.desired.upsertPod("d", refOf("a"), podOf("a", "example/app:3", "y".repeat(1200)));
    await t.settled();
    expect(t.published).toHaveLength(2);
  });
});
