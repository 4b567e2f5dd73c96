/**
 * Workloads across a restart: a second process over the same durable store, adopting the first
 * one's retained document, lists the engine's workload hash and knows which restart-request value
 * the pod had. Real DesiredStore, WorkloadHashes and RestartRequests; the command queue is a
 * recorder (no device is reached here).
 */
import pino from "pino";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { DesiredDocument } from "../../src/protocol/types.ts";
import type { Workload } from "../../src/provider/types.ts";
import { app } from "../../src/testing/workload.ts";
import { MemoryStore } from "../../test/support/memory-store.ts";
import { DesiredStore } from "./desired.ts";
import { GenerationAllocator } from "./generations.ts";
import { MqttMetrics } from "./metrics.ts";
import { RESTART_ANNOTATION, RestartRequests } from "./restart.ts";
import { connectionInsecurity, SecretGate } from "./secret-gate.ts";
import { RECORD_DELAY_MS, WorkloadHashes } from "./workload-hashes.ts";
import { Workloads } from "./workloads.ts";

const logger = pino({ level: "silent" });

const workload = (o: { image: string; token?: string; hash: string }): Workload => ({
  pod: {
    namespace: "ns",
    name: "p",
    uid: "u1",
    labels: {},
    annotations: o.token === undefined ? {} : { [RESTART_ANNOTATION]: o.token },
  },
  nodeName: "gw-1",
  deviceId: "gw-1",
  restartPolicy: "Always",
  terminationGracePeriodSeconds: 30,
  apps: [app("a", o.image)],
  hash: o.hash,
});

/** One devicelet process over the shared store and retained documents. */
async function devicelet(
  store: MemoryStore,
  retained: Map<string, DesiredDocument>,
  hashes = new WorkloadHashes({ store, logger }),
) {
  const restartCommands: string[] = [];
  const desired = new DesiredStore({
    allocator: new GenerationAllocator({ store, blockSize: 1000 }),
    publish: (_topic, payload) => {
      const doc = JSON.parse(payload.toString("utf8")) as DesiredDocument;
      retained.set(doc.deviceId, doc);
      return Promise.resolve();
    },
    maxBytes: () => 256 * 1024,
    debounceMs: 5,
    publishTimeoutMs: 1000,
    persist: (d) => workloads.persist(d),
    onChange: () => undefined,
    metrics: new MqttMetrics(),
    logger,
  });
  const workloads: Workloads = new Workloads({
    desired,
    statuses: { mark: () => undefined, forget: () => undefined },
    orphans: { claim: () => undefined, listed: () => undefined },
    restarts: new RestartRequests({
      commands: {
        send: (_deviceId, request) => {
          restartCommands.push(request.args?.[0] ?? "");
          return new Promise(() => undefined);
        },
        retime: () => 0,
      },
      logger,
      recordEvent: () => undefined,
      defaultTtlSeconds: 60,
    }),
    secrets: new SecretGate({
      insecurity: connectionInsecurity({ url: "mqtt://127.0.0.1:1883", tls: { rejectUnauthorized: true } }),
      devices: { secrets: { allow: [] } },
      allowSecretsWithoutTls: false,
    }),
    hashes,
    deleted: () => undefined,
  });
  for (const doc of retained.values()) desired.adopt(doc);
  await workloads.restoreHashes();
  const apply = async (w: Workload) => {
    const applied = workloads.apply(w);
    await vi.advanceTimersByTimeAsync(10);
    await applied;
  };
  /** As the provider's stop: what waits for its delay is written now. */
  const stop = () => workloads.flushHashes();
  return { workloads, apply, stop, restartCommands };
}

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe("Workloads across a restart", () => {
  it("lists the workload hash last given, not the device's", async () => {
    const store = new MemoryStore();
    const retained = new Map<string, DesiredDocument>();
    const first = await devicelet(store, retained);
    await first.apply(workload({ image: "app:1", token: "t1", hash: "W1" }));
    await first.apply(workload({ image: "app:2", token: "t1", hash: "W2" }));
    await first.stop();
    const second = await devicelet(store, retained);
    expect(second.workloads.list().map((p) => p.hash)).toEqual(["W2"]);
  });

  it("takes a restart-request value changed while devicelet was down as a request, an unchanged one not", async () => {
    const store = new MemoryStore();
    const retained = new Map<string, DesiredDocument>();
    const first = await devicelet(store, retained);
    await first.apply(workload({ image: "app:1", token: "t1", hash: "W1" }));
    await first.stop();
    const unchanged = await devicelet(store, retained);
    await unchanged.apply(workload({ image: "app:1", token: "t1", hash: "W1" }));
    expect(unchanged.restartCommands).toEqual([]);
    const changed = await devicelet(store, retained);
    await changed.apply(workload({ image: "app:1", token: "t2", hash: "W1b" }));
    expect(changed.restartCommands).toEqual(["t2"]);
  });

  it("resolves apply before the record is written, and writes one record for the documents of the delay", async () => {
    const store = new MemoryStore();
    const retained = new Map<string, DesiredDocument>();
    const set = vi.spyOn(store, "set");
    const records = () => set.mock.calls.filter(([key]) => key.startsWith("mqtt-workloads.")).length;
    const first = await devicelet(store, retained);
    await first.apply(workload({ image: "app:1", hash: "W1" }));
    expect(retained.get("gw-1")?.pods).toHaveLength(1);
    expect(records()).toBe(0);
    await first.apply(workload({ image: "app:2", hash: "W2" }));
    await first.apply(workload({ image: "app:3", hash: "W3" }));
    expect(records()).toBe(0);
    await vi.advanceTimersByTimeAsync(RECORD_DELAY_MS);
    expect(records()).toBe(1);
    // Written with what the device holds then: the next process lists the latest hash.
    const second = await devicelet(store, retained);
    expect(second.workloads.list().map((p) => p.hash)).toEqual(["W3"]);
  });

  it("after a process killed before its record, lists the device's hash: the engine gives the pod again, nothing is published", async () => {
    const store = new MemoryStore();
    const retained = new Map<string, DesiredDocument>();
    const first = await devicelet(store, retained);
    await first.apply(workload({ image: "app:1", hash: "W1" }));
    await first.stop();
    await first.apply(workload({ image: "app:2", hash: "W2" }));
    // Killed now: no stop, the record still names W1's content.
    const document = retained.get("gw-1");
    const second = await devicelet(store, retained);
    const [listed] = second.workloads.list();
    expect(listed?.hash).toBe(document?.pods[0]?.hash);
    await second.apply(workload({ image: "app:2", hash: "W2" }));
    expect(retained.get("gw-1")).toBe(document);
  });

  it("deletes a decommissioned device's record, and does not write the one waiting for its delay", async () => {
    const store = new MemoryStore();
    const retained = new Map<string, DesiredDocument>();
    const first = await devicelet(store, retained);
    await first.apply(workload({ image: "app:1", hash: "W1" }));
    await first.stop();
    expect(store.values.has("mqtt-workloads.gw-1")).toBe(true);
    await first.apply(workload({ image: "app:2", hash: "W2" })); // its record waits for the delay
    await first.workloads.forgetDevice("gw-1");
    await vi.advanceTimersByTimeAsync(RECORD_DELAY_MS * 2);
    expect(store.values.has("mqtt-workloads.gw-1")).toBe(false);
  });

  it("tries a failed write again after the delay", async () => {
    const store = new MemoryStore();
    const retained = new Map<string, DesiredDocument>();
    const set = vi.spyOn(store, "set").mockRejectedValueOnce(new Error("API server away"));
    const first = await devicelet(store, retained);
    await first.apply(workload({ image: "app:1", hash: "W1" }));
    await vi.advanceTimersByTimeAsync(RECORD_DELAY_MS);
    expect(set).toHaveBeenCalledTimes(1);
    await vi.advanceTimersByTimeAsync(RECORD_DELAY_MS);
    expect(set).toHaveBeenCalledTimes(2);
    const second = await devicelet(store, retained);
    expect(second.workloads.list().map((p) => p.hash)).toEqual(["W1"]);
  });

  it("writes in order: a record pending while one is written waits for it", async () => {
    const store = new MemoryStore();
    const retained = new Map<string, DesiredDocument>();
    const release: (() => void)[] = [];
    const set = store.set.bind(store);
    vi.spyOn(store, "set").mockImplementation(async (key, value) => {
      await new Promise<void>((resolve) => release.push(resolve));
      await set(key, value);
    });
    const first = await devicelet(store, retained);
    await first.apply(workload({ image: "app:1", hash: "W1" }));
    await vi.advanceTimersByTimeAsync(RECORD_DELAY_MS);
    await first.apply(workload({ image: "app:2", hash: "W2" }));
    const stopped = first.stop();
    await vi.advanceTimersByTimeAsync(0);
    expect(release).toHaveLength(1);
    release.shift()?.();
    await vi.advanceTimersByTimeAsync(0);
    expect(release).toHaveLength(1);
    release.shift()?.();
    await stopped;
    const second = await devicelet(store, retained);
    expect(second.workloads.list().map((p) => p.hash)).toEqual(["W2"]);
  });

  it("records a restart-request value before apply resolves", async () => {
    const store = new MemoryStore();
    const retained = new Map<string, DesiredDocument>();
    const first = await devicelet(store, retained);
    await first.apply(workload({ image: "app:1", hash: "W1" }));
    await first.apply(workload({ image: "app:1", token: "t1", hash: "W1b" }));
    // Killed now, with no stop: the value was recorded, so one changed while down is a request.
    const second = await devicelet(store, retained);
    await second.apply(workload({ image: "app:1", token: "t2", hash: "W1c" }));
    expect(second.restartCommands).toEqual(["t2"]);
  });
});
