/**
 * `ttlSeconds` on commands (docs/protocol.md § 7): only devices whose birth announces
 * `capabilities.commandTtl` get it, each copy carrying the whole seconds left when it is published.
 */
import pino from "pino";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { decodeToDevice } from "../../src/protocol/codec.ts";
import type { CommandMessage } from "../../src/protocol/types.ts";
import { MemoryStore } from "../../test/support/memory-store.ts";
import { CommandQueue } from "./commands.ts";
import { MqttMetrics } from "./metrics.ts";

const logger = pino({ level: "silent" });

function queueFor(understandsTtl: boolean | undefined) {
  const sent: { topic: string; payload: Buffer }[] = [];
  let online = true;
  const store = new MemoryStore();
  const queue = new CommandQueue({
    limit: 5,
    store,
    publish: (topic, payload) => {
      sent.push({ topic, payload });
      return Promise.resolve();
    },
    isOnline: () => online,
    ...(understandsTtl === undefined ? {} : { understandsTtl: () => understandsTtl }),
    onExpired: () => undefined,
    onFailed: () => undefined,
    metrics: new MqttMetrics(),
    logger,
  });
  const messages = () => sent.map((s) => JSON.parse(s.payload.toString("utf8")) as CommandMessage);
  return { queue, sent, store, messages, setOnline: (v: boolean) => (online = v) };
}

describe("CommandQueue: ttlSeconds", () => {
  beforeEach(() => {
    vi.useFakeTimers({ now: new Date("2026-03-01T12:00:00Z") });
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it("gives a device that understands it the seconds left at each publish", async () => {
    const q = queueFor(true);
    await q.queue.restore();
    void q.queue.send("gw-1", { command: "reboot" }, { ttlSeconds: 300 });
    q.setOnline(false);
    vi.advanceTimersByTime(100_500); // away for 100.5 s, then born again
    q.setOnline(true);
    q.queue.deviceOnline("gw-1");
    expect(q.messages().map((m) => [m.commandId, m.ttlSeconds])).toEqual([
      [q.messages()[0]?.commandId, 300],
      [q.messages()[0]?.commandId, 199],
    ]);
    // Each copy is a valid command on the wire.
    for (const { topic, payload } of q.sent)
      expect(decodeToDevice(topic, payload, { deviceId: "gw-1" }).ok).toBe(true);
    // What is stored is the message without it: the time left is computed per publish.
    await vi.advanceTimersByTimeAsync(0);
    expect(q.store.values.get("mqtt.commands.gw-1")).not.toContain("ttlSeconds");
  });

  it("never sends it to a device whose birth does not say it understands it", async () => {
    for (const understands of [false, undefined]) {
      const q = queueFor(understands);
      await q.queue.restore();
      void q.queue.send("gw-1", { command: "reboot" }, { ttlSeconds: 300 });
      expect(q.messages()).toHaveLength(1);
      expect(Object.keys(q.messages()[0] ?? {})).not.toContain("ttlSeconds");
    }
  });

  it("sends at least 1 second, never 0, for a command with less than a second left", async () => {
    const q = queueFor(true);
    await q.queue.restore();
    q.setOnline(false);
    void q.queue.send("gw-1", { command: "reboot" }, { ttlSeconds: 10 });
    vi.advanceTimersByTime(9_600);
    q.setOnline(true);
    q.queue.deviceOnline("gw-1");
    expect(q.messages().map((m) => m.ttlSeconds)).toEqual([1]);
  });
});
