/**
 * HubConnection's verdict on the hub, over a fake HubService whose answers the test switches:
 * connect on the first answer, lost after calls keep failing, back on recovery (sessionPresent
 * always true: the hub keeps devicelet's state), health ready within the grace period only.
 */
import pino from "pino";
import { describe, expect, it } from "vitest";
import { eventually } from "../../test/support/eventually.ts";
import { HubConnection, selectionQuery } from "./hub-connection.ts";
import { HubServiceError, type HubService } from "./hub-service.ts";

const logger = pino({ level: "silent" });

function fakeService() {
  const state = { failing: false, queries: 0, closed: 0 };
  const service: HubService = {
    hostName: "fake.azure-devices.net",
    secure: true,
    query: () => {
      state.queries += 1;
      if (state.failing)
        return Promise.reject(
          new HubServiceError({ status: 0, code: "Network", message: "connect ECONNREFUSED" }),
        );
      return Promise.resolve({ items: [], continuation: undefined });
    },
    getTwin: () => Promise.reject(new Error("not used")),
    patchTwinDesired: () => Promise.reject(new Error("not used")),
    invokeMethod: () => Promise.reject(new Error("not used")),
    operations: () => ({ query: state.queries, twinRead: 0, twinUpdate: 0, method: 0 }),
    close: () => {
      state.closed += 1;
    },
  };
  return { service, state };
}

describe("HubConnection health", () => {
  it("connects on the first answer, is lost when calls keep failing, and comes back", async () => {
    const { service, state } = fakeService();
    let now = 1_000_000;
    const conn = new HubConnection({
      service,
      selection: {},
      sweepIntervalMs: 20,
      watchForMs: 1_000,
      methodResponseTimeoutSeconds: 5,
      presenceMarginMs: 0,
      graceMs: 30_000,
      logger,
      now: () => now,
    });
    const events: string[] = [];
    conn.onConnect(({ sessionPresent }) => events.push(`connect:${sessionPresent}`));
    conn.onDisconnect(() => events.push("disconnect"));
    expect(conn.health()).toMatchObject({
      ready: true,
      message: expect.stringMatching(/^connecting to IoT Hub/) as string,
    });
    await conn.start(new AbortController().signal);
    expect(conn.isConnected()).toBe(true);
    expect(conn.secure).toBe(true);

    state.failing = true;
    await eventually(() => expect(events).toEqual(["connect:true", "disconnect"]), {
      timeoutMs: 10_000,
      intervalMs: 10,
    });
    expect(conn.isConnected()).toBe(false);
    expect(conn.health()).toMatchObject({
      ready: true,
      message: expect.stringContaining("ECONNREFUSED") as string,
    });
    now += 30_000;
    expect(conn.health()).toMatchObject({
      ready: false,
      message: expect.stringMatching(/not answering for 30s: connect ECONNREFUSED/) as string,
    });

    state.failing = false;
    await eventually(() => expect(events).toEqual(["connect:true", "disconnect", "connect:true"]), {
      timeoutMs: 10_000,
      intervalMs: 10,
    });
    expect(conn.health().ready).toBe(true);
    await conn.stop();
    await conn.stop();
    expect(state.closed).toBe(1);
    await expect(
      conn.publish("devicelet/v1/x/desired", Buffer.from("{}"), { qos: 1, retain: true }),
    ).rejects.toThrow("not running");
  });

  it("selects devices by condition and ids, both required", () => {
    expect(selectionQuery({})).toBe("SELECT * FROM devices");
    expect(selectionQuery({ query: "tags.fleet = 'line-1'", ids: ["a", "o'b"] })).toBe(
      "SELECT * FROM devices WHERE tags.fleet = 'line-1' AND deviceId IN ['a', 'o''b']",
    );
    expect(selectionQuery({ query: "tags.a = 1 OR tags.b = 2", ids: [] })).toBe(
      "SELECT * FROM devices WHERE (tags.a = 1 OR tags.b = 2) AND deviceId IN []",
    );
  });
});
