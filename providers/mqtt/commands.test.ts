import pino from "pino";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { CommandMessage } from "../../src/protocol/types.ts";
import { MemoryStore } from "../../test/support/memory-store.ts";
import { CommandQueue, type PendingCommand } from "./commands.ts";
import { MqttMetrics } from "./metrics.ts";

const logger = pino({ level: "silent" });
const KEY = "mqtt.commands.gw-1";

/** One devicelet process: a queue over the shared store, a device online or not. */
function process_(
  store: MemoryStore,
  options: { limit?: number; online?: boolean; owns?: (deviceId: string) => boolean } = {},
) {
  const sent: CommandMessage[] = [];
  const expired: [PendingCommand, string][] = [];
  let online = options.online ?? false;
  const queue = new CommandQueue({
    limit: options.limit ?? 3,
    store,
    publish: (_topic, payload) => {
      sent.push(JSON.parse(payload.toString("utf8")) as CommandMessage);
      return Promise.resolve();
    },
    isOnline: () => online,
    onExpired: (command, why) => expired.push([command, why]),
    onFailed: () => undefined,
    metrics: new MqttMetrics(),
    logger,
    ...(options.owns ? { owns: options.owns } : {}),
  });
  return {
    queue,
    sent,
    expired,
    setOnline: (value: boolean) => (online = value),
  };
}

const stored = (store: MemoryStore) =>
  JSON.parse(store.values.get(KEY) ?? "[]") as { message: CommandMessage; expiresAt: number }[];

describe("CommandQueue across a devicelet restart", () => {
  beforeEach(() => {
    vi.useFakeTimers({ now: new Date("2026-03-01T12:00:00Z") });
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it("a shard takes back only its own devices' commands; the others' stay stored for their owner", async () => {
    const store = new MemoryStore();
    const first = process_(store);
    await first.queue.restore();
    void first.queue.send("gw-1", { command: "reboot" }, { ttlSeconds: 600 });
    void first.queue.send("gw-2", { command: "reboot" }, { ttlSeconds: 5 });
    await vi.advanceTimersByTimeAsync(0);
    first.queue.stop();
    const before = store.values.get("mqtt.commands.gw-2");

    const shard = process_(store, { owns: (id) => id === "gw-1" });
    await shard.queue.restore();
    await vi.advanceTimersByTimeAsync(10_000); // past gw-2's command's expiry
    expect(shard.queue.pending("gw-1").length).toBe(1);
    expect(shard.queue.pending("gw-2")).toEqual([]);
    expect(shard.expired).toEqual([]);
    expect(store.values.get("mqtt.commands.gw-2")).toBe(before);
    shard.queue.stop();
  });

  it("stores commands for an offline device; a new process sends them when it comes back", async () => {
    const store = new MemoryStore();
    const first = process_(store);
    await first.queue.restore();
    void first.queue.send("gw-1", { command: "restart-app", podUid: "u1", app: "a" }, { ttlSeconds: 600 });
    void first.queue.send("gw-1", { command: "reboot" }, { ttlSeconds: 600 });
    await vi.advanceTimersByTimeAsync(0);
    expect(stored(store).map((c) => c.message.command)).toEqual(["restart-app", "reboot"]);
    first.queue.stop(); // the process dies

    const second = process_(store);
    await second.queue.restore();
    expect(second.sent).toEqual([]);
    second.setOnline(true);
    second.queue.deviceOnline("gw-1");
    expect(second.sent.map((m) => m.command)).toEqual(["restart-app", "reboot"]);
    expect(second.sent.map((m) => m.commandId)).toEqual(stored(store).map((c) => c.message.commandId));

    // Done: it leaves the store too.
    for (const m of second.sent)
      second.queue.ack("gw-1", {
        protocol: 1,
        kind: "command-ack",
        deviceId: "gw-1",
        bootId: "b",
        seq: 1,
        commandId: m.commandId,
        stage: "done",
      });
    await vi.advanceTimersByTimeAsync(0);
    expect(stored(store)).toEqual([]);
    expect(second.queue.pending("gw-1")).toEqual([]);
    // Deleted, not stored empty: a device's key exists only while commands wait for it.
    expect(store.values.has(KEY)).toBe(false);
  });

  it("keeps the absolute expiry: a command that expired during the restart is never sent", async () => {
    const store = new MemoryStore();
    const first = process_(store);
    await first.queue.restore();
    void first.queue.send("gw-1", { command: "reboot" }, { ttlSeconds: 60 });
    void first.queue.send("gw-1", { command: "restart-app", podUid: "u1", app: "a" }, { ttlSeconds: 600 });
    await vi.advanceTimersByTimeAsync(0);
    first.queue.stop();

    vi.setSystemTime(Date.now() + 120_000); // devicelet was down for two minutes
    const second = process_(store, { online: true });
    await second.queue.restore();
    expect(second.sent.map((m) => m.command)).toEqual(["restart-app"]);
    expect(second.expired.map(([c]) => c.message.command)).toEqual(["reboot"]);
    await vi.advanceTimersByTimeAsync(0);
    expect(stored(store).map((c) => c.message.command)).toEqual(["restart-app"]);

    // The rest of its time to live, not a fresh one: 600 s from the first send.
    await vi.advanceTimersByTimeAsync(600_000 - 120_000 - 1_000);
    expect(second.expired).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(2_000);
    expect(second.expired.map(([c]) => c.message.command)).toEqual(["reboot", "restart-app"]);
    expect(stored(store)).toEqual([]);
  });

  it("stays bounded by the queue limit after a restart, and never lets a new queue hide a stored one", async () => {
    const store = new MemoryStore();
    const first = process_(store, { limit: 2 });
    await first.queue.restore();
    void first.queue.send("gw-1", { command: "reboot" }, { ttlSeconds: 600 });
    void first.queue.send("gw-1", { command: "restart-app", podUid: "u1", app: "a" }, { ttlSeconds: 600 });
    await expect(first.queue.send("gw-1", { command: "reboot" }, { ttlSeconds: 600 })).rejects.toThrow(
      "full",
    );
    await vi.advanceTimersByTimeAsync(0);
    first.queue.stop();

    const second = process_(store, { limit: 2 });
    // A command sent before the stored ones are read is kept with them, within the limit.
    void second.queue.send("gw-1", { command: "restart-app", podUid: "u1", app: "b" }, { ttlSeconds: 600 });
    await vi.advanceTimersByTimeAsync(0);
    expect(stored(store)).toHaveLength(2); // not yet overwritten
    await second.queue.restore();
    await vi.advanceTimersByTimeAsync(0);
    expect(second.queue.pending("gw-1")).toHaveLength(2);
    expect(stored(store)).toHaveLength(2);
  });
});
