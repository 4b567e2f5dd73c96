import pino from "pino";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { CommandMessage } from "../../src/protocol/types.ts";
import type { AppSpec, Workload } from "../../src/provider/types.ts";
import { MemoryStore } from "../../test/support/memory-store.ts";
import { CommandQueue } from "./commands.ts";
import { MqttMetrics } from "./metrics.ts";
import { RESTART_ANNOTATION, RESTART_TTL_ANNOTATION, RestartRequests } from "./restart.ts";

const logger = pino({ level: "silent" });
const T0 = new Date("2026-03-01T12:00:00Z");

const workload = (annotations: Record<string, string>): Workload => ({
  pod: { namespace: "ns", name: "p", uid: "u1", labels: {}, annotations },
  nodeName: "gw-1",
  deviceId: "gw-1",
  restartPolicy: "Always",
  terminationGracePeriodSeconds: 30,
  apps: [{ name: "a" } as AppSpec],
  hash: "h",
});

/** A restart-request watcher over a real command queue; the device is offline unless told. */
function setup(online = false) {
  const sent: CommandMessage[] = [];
  const commands = new CommandQueue({
    limit: 10,
    store: new MemoryStore(),
    publish: (_topic, payload) => {
      sent.push(JSON.parse(payload.toString("utf8")) as CommandMessage);
      return Promise.resolve();
    },
    isOnline: () => online,
    onExpired: () => undefined,
    onFailed: () => undefined,
    metrics: new MqttMetrics(),
    logger,
  });
  const restarts = new RestartRequests({
    commands,
    logger,
    recordEvent: () => undefined,
    defaultTtlSeconds: 60,
  });
  const expiries = () => commands.pending("gw-1").map((c) => [c.expiresAt, c.message.expiresAt]);
  return { commands, restarts, sent, expiries };
}

describe("RestartRequests: the TTL annotation", () => {
  beforeEach(() => {
    vi.useFakeTimers({ now: T0 });
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  const want = [[T0.getTime() + 600_000, new Date(T0.getTime() + 600_000).toISOString()]];

  it("applies when set before the request", () => {
    const { restarts, expiries } = setup();
    restarts.observe(workload({}));
    restarts.observe(workload({ [RESTART_TTL_ANNOTATION]: "600" }));
    restarts.observe(workload({ [RESTART_TTL_ANNOTATION]: "600", [RESTART_ANNOTATION]: "r1" }));
    expect(expiries()).toEqual(want);
  });

  it("applies when set after the request, as long as the device has not received the commands", () => {
    const { restarts, expiries } = setup();
    restarts.observe(workload({}));
    restarts.observe(workload({ [RESTART_ANNOTATION]: "r1" })); // default TTL: 60 s
    vi.advanceTimersByTime(5_000);
    restarts.observe(workload({ [RESTART_ANNOTATION]: "r1", [RESTART_TTL_ANNOTATION]: "600" }));
    expect(expiries()).toEqual(want); // counted from the request, not from the TTL change
    vi.advanceTimersByTime(120_000); // past the default TTL: still queued
    expect(expiries()).toEqual(want);
  });

  it("sends an online device the command again with the new expiry, under the same id", () => {
    const { restarts, sent } = setup(true);
    restarts.observe(workload({}));
    restarts.observe(workload({ [RESTART_ANNOTATION]: "r1" }));
    restarts.observe(workload({ [RESTART_ANNOTATION]: "r1", [RESTART_TTL_ANNOTATION]: "600" }));
    expect(sent).toHaveLength(2);
    expect(sent[1]?.commandId).toBe(sent[0]?.commandId);
    expect(sent.map((m) => m.expiresAt)).toEqual([
      new Date(T0.getTime() + 60_000).toISOString(),
      new Date(T0.getTime() + 600_000).toISOString(),
    ]);
  });

  it("leaves a command the device acknowledged receiving as it was", () => {
    const { commands, restarts, sent } = setup(true);
    restarts.observe(workload({}));
    restarts.observe(workload({ [RESTART_ANNOTATION]: "r1" }));
    const commandId = sent[0]?.commandId ?? "";
    commands.ack("gw-1", {
      protocol: 1,
      kind: "command-ack",
      deviceId: "gw-1",
      bootId: "b",
      seq: 1,
      commandId,
      stage: "received",
    });
    restarts.observe(workload({ [RESTART_ANNOTATION]: "r1", [RESTART_TTL_ANNOTATION]: "600" }));
    expect(sent).toHaveLength(1);
    expect(commands.pending("gw-1").map((c) => c.expiresAt)).toEqual([T0.getTime() + 60_000]);
  });
});
