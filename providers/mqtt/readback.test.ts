import pino from "pino";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { desiredContentHash, encodeMessage } from "../../src/protocol/codec.ts";
import type { DesiredDocument, DesiredPod } from "../../src/protocol/types.ts";
import type { PodRef } from "../../src/provider/types.ts";
import { MemoryStore } from "../../test/support/memory-store.ts";
import type { BrokerConnection } from "./connection.ts";
import { DesiredStore } from "./desired.ts";
import { GenerationAllocator } from "./generations.ts";
import { MqttMetrics } from "./metrics.ts";
import { Orphans } from "./orphans.ts";
import { Readback } from "./readback.ts";
import { deviceHash } from "./translate.ts";

const logger = pino({ level: "silent" });

/** A broker that delivers the retained documents only when the test says so. */
class SlowBroker implements BrokerConnection {
  readonly protocolVersion = 5;
  readonly secure = false;
  readonly subscriptions = new Set<string>();
  listener: ((topic: string, payload: Buffer, retained: boolean) => void) | undefined;
  isConnected = () => true;
  onMessage(l: (topic: string, payload: Buffer, retained: boolean) => void) {
    this.listener = l;
  }
  onConnect() {}
  onDisconnect() {}
  subscribe(filters: readonly string[]) {
    for (const f of filters) this.subscriptions.add(f);
    return Promise.resolve();
  }
  unsubscribe(filters: readonly string[]) {
    for (const f of filters) this.subscriptions.delete(f);
    return Promise.resolve();
  }
  markers: string[] = [];
  publish(topic: string) {
    if (topic.includes("/_bridge/sync/")) this.markers.push(topic);
    return Promise.resolve();
  }
  deliver(topic: string, payload: Buffer) {
    this.listener?.(topic, payload, true);
  }
}

const podOf = (uid: string): DesiredPod => {
  const pod = {
    uid,
    namespace: "ns",
    name: `pod-${uid}`,
    restartPolicy: "Always" as const,
    terminationGracePeriodSeconds: 7,
    apps: [{ name: "app", image: "example/app:1", command: [], args: [], env: {}, files: [] }],
  };
  return { ...pod, hash: deviceHash(pod) };
};

const docOf = (deviceId: string, generation: number, pods: DesiredPod[]): DesiredDocument => ({
  protocol: 1,
  kind: "desired",
  deviceId,
  epoch: "e1",
  generation,
  issuedAt: new Date().toISOString(),
  pods,
  tombstones: [],
  contentHash: desiredContentHash(pods, []),
});

function setup() {
  const broker = new SlowBroker();
  const published: DesiredDocument[] = [];
  const deleted: PodRef[] = [];
  const claimed = new Set<string>();
  const desired = new DesiredStore({
    allocator: new GenerationAllocator({ store: new MemoryStore(), blockSize: 100 }),
    publish: (_topic, payload) => {
      published.push(JSON.parse(payload.toString("utf8")) as DesiredDocument);
      return Promise.resolve();
    },
    maxBytes: () => 1 << 20,
    debounceMs: 5,
    publishTimeoutMs: 1_000,
    onChange: () => undefined,
    metrics: new MqttMetrics(),
    logger,
  });
  const orphans = new Orphans({
    graceMs: 30_000,
    desired,
    claimed: (uid) => claimed.has(uid),
    markStatus: () => undefined,
    restoreBirth: () => Promise.resolve(),
    recordEvent: () => undefined,
    deleted: (ref) => deleted.push(ref),
    logger,
  });
  const readback = new Readback({
    connection: broker,
    logger,
    timeoutMs: 100,
    onLate: (doc) => orphans.adoptLate(doc),
  });
  broker.onMessage((topic, payload) => readback.take(topic, payload));
  return { broker, published, deleted, claimed, desired, orphans, readback };
}

describe("read-back of retained desired documents", () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it("adopts documents that arrive after the timeout and tombstones pods nobody claims", async () => {
    const t = setup();
    const running = t.readback.run(["devicelet/v1/+/state"]);
    await vi.advanceTimersByTimeAsync(100);
    expect((await running).size).toBe(0); // the broker was slow: start goes on without them
    t.orphans.listed(); // the engine listed what the provider held (nothing)

    // Still subscribed: the documents come now.
    expect(t.broker.subscriptions).toContain("devicelet/v1/+/desired");
    const gone = podOf("gone");
    const kept = podOf("kept");
    t.broker.deliver("devicelet/v1/gw-1/desired", encodeMessage(docOf("gw-1", 41, [gone, kept])));
    expect([...(t.desired.device("gw-1")?.pods.keys() ?? [])]).toEqual(["gone", "kept"]);
    t.claimed.add("kept");
    t.orphans.claim("kept"); // the engine reconciled that pod: it exists

    await vi.advanceTimersByTimeAsync(30_100);
    const last = t.published.at(-1);
    expect(last?.pods.map((p) => p.uid)).toEqual(["kept"]);
    expect(last?.tombstones).toEqual([
      { uid: "gone", namespace: "ns", name: "pod-gone", deleted: true, gracePeriodSeconds: 7 },
    ]);
    expect(last?.generation).toBeGreaterThan(41);

    // The marker comes back at last: the read-back ends and drops its subscription.
    t.broker.deliver(t.broker.markers[0] ?? "", Buffer.from("sync"));
    await vi.advanceTimersByTimeAsync(0);
    expect(t.broker.subscriptions).not.toContain("devicelet/v1/+/desired");
  });

  it("lets what this process already published win over a late document", async () => {
    const t = setup();
    const running = t.readback.run([]);
    await vi.advanceTimersByTimeAsync(100);
    await running;
    t.orphans.listed();
    t.desired.upsertPod("gw-1", { namespace: "ns", name: "pod-new", uid: "new" }, podOf("new"));
    await vi.advanceTimersByTimeAsync(10);
    expect(t.published).toHaveLength(1);
    // An older document of ours arrives late; the device already has (or will get) the newer one.
    t.broker.deliver("devicelet/v1/gw-1/desired", encodeMessage(docOf("gw-1", 0 + 1, [podOf("old")])));
    expect([...(t.desired.device("gw-1")?.pods.keys() ?? [])]).toEqual(["new"]);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(t.published).toHaveLength(1);
    expect(t.deleted).toEqual([]);
  });

  it("leaves pods adopted before the engine listed them to the engine", async () => {
    const t = setup();
    const running = t.readback.run([]);
    await vi.advanceTimersByTimeAsync(100);
    await running;
    // Late, but before the engine's listPods: the engine holds this pod and decides about it.
    t.broker.deliver("devicelet/v1/gw-1/desired", encodeMessage(docOf("gw-1", 3, [podOf("held")])));
    t.orphans.listed();
    await vi.advanceTimersByTimeAsync(60_000);
    expect(t.published).toEqual([]);
    expect([...(t.desired.device("gw-1")?.pods.keys() ?? [])]).toEqual(["held"]);
  });
});
