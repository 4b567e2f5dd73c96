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
import { WorkloadHashes } from "./workload-hashes.ts";
import { Workloads } from "./workloads.ts";

const logger = pino({ level: "silent" });

const workload = (o: { image: string; token: string; hash: string }): Workload => ({
  pod: { namespace: "ns", name: "p", uid: "u1", labels: {}, annotations: { [RESTART_ANNOTATION]: o.token } },
  nodeName: "gw-1",
  deviceId: "gw-1",
  restartPolicy: "Always",
  terminationGracePeriodSeconds: 30,
  apps: [app("a", o.image)],
  hash: o.hash,
});

/** One devicelet process over the shared store and retained documents. */
async function devicelet(store: MemoryStore, retained: Map<string, DesiredDocument>) {
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
    hashes: new WorkloadHashes({ store, logger }),
    deleted: () => undefined,
  });
  for (const doc of retained.values()) desired.adopt(doc);
  await workloads.restoreHashes();
  const apply = async (w: Workload) => {
    const applied = workloads.apply(w);
    await vi.advanceTimersByTimeAsync(10);
    await applied;
  };
  return { workloads, apply, restartCommands };
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
    const second = await devicelet(store, retained);
    expect(second.workloads.list().map((p) => p.hash)).toEqual(["W2"]);
  });

  it("takes a restart-request value changed while devicelet was down as a request, an unchanged one not", async () => {
    const store = new MemoryStore();
    const retained = new Map<string, DesiredDocument>();
    const first = await devicelet(store, retained);
    await first.apply(workload({ image: "app:1", token: "t1", hash: "W1" }));
    const unchanged = await devicelet(store, retained);
    await unchanged.apply(workload({ image: "app:1", token: "t1", hash: "W1" }));
    expect(unchanged.restartCommands).toEqual([]);
    const changed = await devicelet(store, retained);
    await changed.apply(workload({ image: "app:1", token: "t2", hash: "W1b" }));
    expect(changed.restartCommands).toEqual(["t2"]);
  });
});
