/**
 * HubConnection against the local IoT Hub emulator with real devices (the unchanged DeviceSession
 * over IotHubLink): desired writes under etags, conflicts with other writers, reported changes as
 * messages, the read-back, commands, throttling and refusals. Presence: hub-connection-presence.test.ts.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { desiredDocument, desiredPod, command } from "../../src/device/fixtures.ts";
import { encodeMessage } from "../../src/protocol/codec.ts";
import { decodeTwinDocument, encodeTwinDocument, IOTHUB_MAPPING } from "../../src/protocol/iothub-twin.ts";
import { topics } from "../../src/protocol/topics.ts";
import type { DesiredDocument } from "../../src/protocol/types.ts";
import { Readback } from "../mqtt/readback.ts";
import { eventually } from "../../test/support/eventually.ts";
import {
  GENEROUS,
  logger,
  startTestHub,
  type Recorded,
  type TestHub,
} from "../../test/support/iothub-hub.ts";
import { MAX_QUERY_PAGE, type HubService } from "./hub-service.ts";

let t: TestHub;
beforeAll(async () => {
  t = await startTestHub();
});
afterAll(async () => {
  await t.close();
});

const qos1 = { qos: 1, retain: true } as const;
const twinOf = (id: string) =>
  t.emulator.hub.twin(id) as {
    tags: Record<string, unknown>;
    properties: { desired: Record<string, unknown> };
  };
const desiredIn = (id: string) =>
  decodeTwinDocument(twinOf(id).properties.desired[IOTHUB_MAPPING.desiredKey]);
const parsed = (m: Recorded) => JSON.parse(m.text) as Record<string, unknown>;
const doc = (deviceId: string, generation: number, uid = "p1"): DesiredDocument =>
  desiredDocument({ deviceId, generation, pods: [desiredPod({ uid })] });

describe("HubConnection publishing desired documents", () => {
  it("writes the document into the twin; the device applies it and its reports arrive in order", async () => {
    const { deviceId } = await t.onlineDevice();
    const { conn, messages } = await t.connection({ ids: [deviceId] });
    await conn.subscribe(topics.fromDevices());
    const first = encodeMessage(doc(deviceId, 1));
    await conn.publish(topics.desired(deviceId), first, qos1);
    expect(desiredIn(deviceId)).toBe(first.toString());
    await eventually(
      () => {
        const reports = messages.filter((m) => m.topic === topics.reported(deviceId)).map(parsed);
        expect(reports.at(-1)).toMatchObject({ appliedGeneration: 1, pods: [{ uid: "p1" }] });
      },
      { timeoutMs: 10_000, intervalMs: 50 },
    );

    const second = encodeMessage(doc(deviceId, 2, "p2"));
    await conn.publish(topics.desired(deviceId), second, qos1);
    await eventually(
      () => {
        const acks = messages.filter((m) => m.topic === topics.ack(deviceId)).map(parsed);
        expect(acks.at(-1)).toMatchObject({ kind: "ack", generation: 2, stage: "applied" });
      },
      { timeoutMs: 10_000, intervalMs: 50 },
    );
    const applied = messages
      .filter((m) => m.topic === topics.reported(deviceId))
      .map((m) => Number(parsed(m).appliedGeneration ?? 0));
    expect(applied).toEqual([...applied].sort((a, b) => a - b));
    expect(applied.at(-1)).toBe(2);
    // A write with fewer parts than before clears the surplus (merge patch): only p0 … p{n-1} stay.
    await conn.publish(topics.desired(deviceId), Buffer.alloc(0), qos1);
    expect(desiredIn(deviceId)).toBeUndefined();
    // Not subscribed to `desired`: devicelet's own documents are not echoed.
    expect(messages.filter((m) => m.topic.endsWith("/desired"))).toEqual([]);
  });

  it("retries under the new etag when another writer changed the twin in between; both changes stay", async () => {
    const deviceId = t.newDeviceId();
    const real = t.service();
    let interpose = 2; // a tag before the first write, another desired key before the second
    const service: HubService = {
      hostName: real.hostName,
      secure: real.secure,
      getTwin: (id) => real.getTwin(id),
      query: (sql, continuation, size) => real.query(sql, continuation, size),
      invokeMethod: (id, name, payload, timeout) => real.invokeMethod(id, name, payload, timeout),
      operations: () => real.operations(),
      close: () => real.close(),
      // The other writer strikes between the etag's read and the write it is for.
      patchTwinDesired: (id, patch, etag) =>
        real.patchTwinDesired(id, patch, async () => {
          const tag = typeof etag === "string" ? etag : await etag();
          if (interpose === 2) t.emulator.hub.patchTwin(id, { tags: { site: "north" } }, "*");
          if (interpose === 1) t.emulator.hub.patchTwin(id, { properties: { desired: { other: 5 } } }, "*");
          interpose = Math.max(0, interpose - 1);
          return tag;
        }),
    };
    const { conn } = await t.connection({ ids: [deviceId] }, { service });
    const text = encodeMessage(doc(deviceId, 1));
    await conn.publish(topics.desired(deviceId), text, qos1);
    const twin = twinOf(deviceId);
    expect(twin.tags).toEqual({ site: "north" });
    expect(twin.properties.desired.other).toBe(5);
    expect(decodeTwinDocument(twin.properties.desired[IOTHUB_MAPPING.desiredKey])).toBe(text.toString());
    expect(conn.operations().twinUpdate).toBe(3);
  });

  it("reads the etag when the write goes out: a report since the last read costs no 412", async () => {
    const deviceId = t.newDeviceId();
    const { conn } = await t.connection({ ids: [deviceId] }, { sweepIntervalMs: 60_000 });
    // The device reports after devicelet's sweep read the twin: the etag devicelet holds is stale.
    t.emulator.hub.patchReported(deviceId, { other: 1 });
    const updates = conn.operations().twinUpdate;
    const text = encodeMessage(doc(deviceId, 1));
    await conn.publish(topics.desired(deviceId), text, qos1);
    expect(desiredIn(deviceId)).toBe(text.toString());
    expect(conn.operations().twinUpdate - updates).toBe(1);
  });

  it("does not overwrite a newer document of the same epoch (a stale writer)", async () => {
    const deviceId = t.newDeviceId();
    const stale = await t.connection({ ids: [deviceId] }, { sweepIntervalMs: 60_000 });
    const fresh = await t.connection({ ids: [deviceId] });
    const newer = encodeMessage(doc(deviceId, 7));
    await fresh.conn.publish(topics.desired(deviceId), newer, qos1);
    const version = () => (twinOf(deviceId).properties.desired as { $version?: number }).$version;
    const before = version();
    await stale.conn.publish(topics.desired(deviceId), encodeMessage(doc(deviceId, 6)), qos1);
    expect(desiredIn(deviceId)).toBe(newer.toString());
    // The twin read at the write's turn showed the newer document: nothing was sent.
    expect(version()).toBe(before);
  });

  it("refuses a document over the twin's 32 KB desired section, naming the limit", async () => {
    const deviceId = t.newDeviceId();
    const { conn } = await t.connection({ ids: [deviceId] });
    const big = JSON.stringify({ epoch: "e", generation: 1, blob: "x".repeat(40_000) });
    await expect(conn.publish(topics.desired(deviceId), Buffer.from(big), qos1)).rejects.toThrow(
      /refused by IoT Hub \(.*400.*\).*32768 bytes/,
    );
    expect(desiredIn(deviceId)).toBeUndefined();
  });

  it("says a desired write waits for its turn while the twin-update budget holds it, not after", async () => {
    const ids = [t.newDeviceId(), t.newDeviceId(), t.newDeviceId()];
    // Two twin updates a second: of three writes at once, the third waits about a second.
    const service = t.service({ rates: { ...GENEROUS, twinUpdatesPerSecond: 2 } });
    const { conn } = await t.connection({ ids }, { service });
    const waiting = () => ids.map((id) => conn.waitingForTurn(topics.desired(id)));
    expect(waiting()).toEqual([false, false, false]);
    const writes = ids.map((id) => conn.publish(topics.desired(id), encodeMessage(doc(id, 1)), qos1));
    expect(waiting()).toEqual([true, true, true]);
    await writes[0];
    expect(waiting()[0]).toBe(false);
    expect(waiting()[2]).toBe(true);
    await Promise.all(writes);
    expect(waiting()).toEqual([false, false, false]);
    for (const id of ids) expect(desiredIn(id)).toBeDefined();
    // Only desired documents wait so; other topics never do.
    expect(conn.waitingForTurn(topics.notice(ids[0] ?? ""))).toBe(false);
  });

  it("waits out the hub's throttling (429) and writes later, waiting for its turn meanwhile", async () => {
    const deviceId = t.newDeviceId();
    const { conn } = await t.connection({ ids: [deviceId] });
    t.emulator.hub.setThrottle({ twinUpdate: 2 });
    // Spend the hub's budget: the next writes meet 429 until it refills.
    for (let i = 0; i < 2; i++) t.emulator.hub.consume("twinUpdate", "device");
    const throttledBefore = t.emulator.hub.throttled();
    try {
      const text = encodeMessage(doc(deviceId, 1));
      const progress = { done: false };
      const write = conn.publish(topics.desired(deviceId), text, qos1).finally(() => (progress.done = true));
      // Between a 429 and the next attempt the write is back in line: its publish timeout waits.
      let waitedThrottled = false;
      while (!progress.done) {
        if (t.emulator.hub.throttled() > throttledBefore && conn.waitingForTurn(topics.desired(deviceId)))
          waitedThrottled = true;
        await new Promise((r) => setTimeout(r, 5));
      }
      await write;
      expect(waitedThrottled).toBe(true);
      expect(conn.waitingForTurn(topics.desired(deviceId))).toBe(false);
      expect(desiredIn(deviceId)).toBe(text.toString());
      expect(conn.operations().twinUpdate).toBeGreaterThanOrEqual(2);
    } finally {
      t.emulator.hub.setThrottle({});
    }
  });
});

describe("HubConnection sweeps", () => {
  it("reaches the last page under a strict query rate: a throttled page waits and is asked again", async () => {
    // A hub of its own: the other tests' connections sweep too, and the query rate is hub-wide.
    const own = await startTestHub();
    try {
      await sweepUnderStrictRate(own);
    } finally {
      await own.close();
    }
  });
});

async function sweepUnderStrictRate(t: TestHub): Promise<void> {
  // Two pages and a bit; the hub answers one query every two seconds.
  const ids = Array.from({ length: MAX_QUERY_PAGE * 2 + 1 }, () => t.newDeviceId());
  const last = ids.at(-1) ?? "";
  const { conn, messages } = await t.connection({ ids }, { sweepIntervalMs: 200 });
  await conn.subscribe(topics.fromDevices());
  t.emulator.hub.setThrottle({ query: 0.5 });
  try {
    const report = JSON.stringify({ kind: "reported", deviceId: last, seq: 1 });
    t.emulator.hub.patchReported(last, { [IOTHUB_MAPPING.reported.reported]: encodeTwinDocument(report) });
    await eventually(
      () => expect(messages.some((m) => m.topic === topics.reported(last) && m.text === report)).toBe(true),
      { timeoutMs: 20_000, intervalMs: 100 },
    );
    expect(t.emulator.hub.throttled()).toBeGreaterThan(0);
  } finally {
    t.emulator.hub.setThrottle({});
  }
}

describe("HubConnection subscriptions and the read-back", () => {
  it("delivers the desired documents as retained messages after subscribe, then the marker", async () => {
    const ids = [t.newDeviceId(), t.newDeviceId()];
    const texts = ids.map((id, i) => encodeMessage(doc(id, 3 + i)).toString());
    ids.forEach((id, i) =>
      t.emulator.hub.patchTwin(
        id,
        { properties: { desired: { devicelet: encodeTwinDocument(texts[i] ?? "") } } },
        "*",
      ),
    );
    const { conn, messages } = await t.connection({ ids });
    const late: DesiredDocument[] = [];
    const readback = new Readback({
      connection: conn,
      logger,
      timeoutMs: 5_000,
      onLate: (d) => late.push(d),
    });
    conn.onMessage((topic, payload, retained) => readback.take(topic, payload, retained));
    const documents = await readback.run(topics.fromDevices());
    expect([...documents.keys()].sort()).toEqual([...ids].sort());
    expect(documents.get(ids[1] ?? "")?.generation).toBe(4);
    expect(late).toEqual([]);
    const marker = messages.findIndex((m) => m.topic.includes("/_bridge/sync/"));
    const desired = messages.filter((m) => m.topic.endsWith("/desired"));
    expect(desired.every((m) => m.retained && messages.indexOf(m) < marker)).toBe(true);
    expect(desired.length).toBe(2);
    // The read-back unsubscribed `desired`: a later subscribe to something else brings no document.
    await conn.subscribe([topics.reported(ids[0] ?? "")]);
    await eventually(() => expect(messages.length).toBe(marker + 1), { timeoutMs: 2_000 });
  });
});

describe("HubConnection commands", () => {
  it("rejects a command to an offline device (404); to an online one resolves and emits its ack", async () => {
    const offline = t.newDeviceId();
    const { deviceId } = await t.onlineDevice();
    const { conn, messages } = await t.connection({ ids: [offline, deviceId] });
    await conn.subscribe(topics.fromDevices());
    const away = command({
      deviceId: offline,
      commandId: "c-off",
      command: "restart-app",
      podUid: "none",
      app: "main",
    });
    await expect(
      conn.publish(topics.command(offline, "c-off"), encodeMessage(away), { qos: 1, retain: false }),
    ).rejects.toMatchObject({ status: 404, code: "DeviceNotOnline" });

    const cmd = command({ deviceId, commandId: "c-on", command: "restart-app", podUid: "none", app: "main" });
    await conn.publish(topics.command(deviceId, "c-on"), encodeMessage(cmd), { qos: 1, retain: false });
    await eventually(
      () => {
        const ack = messages.find(
          (m) => m.topic === topics.ack(deviceId) && parsed(m).kind === "command-ack",
        );
        expect(ack && parsed(ack)).toMatchObject({ commandId: "c-on", deviceId });
      },
      { timeoutMs: 5_000, intervalMs: 20 },
    );
    expect(conn.operations().method).toBe(2);
    await expect(
      conn.publish(topics.ioIn(deviceId, "s1"), Buffer.from("{}"), { qos: 1, retain: false }),
    ).rejects.toThrow("logs and exec sessions are not carried over IoT Hub");
  });
});

describe("HubConnection health", () => {
  it("is not ready with a clear reason when the hub refuses the key; start waits until stopped", async () => {
    const badKey = t.emulator.serviceConnectionString.replace(
      /SharedAccessKey=[^;]+/,
      `SharedAccessKey=${Buffer.alloc(32, 9).toString("base64")}`,
    );
    const { conn } = await t.connection(
      { ids: ["nobody"] },
      { start: false, service: t.service({ connectionString: badKey }) },
    );
    const started = conn.start(new AbortController().signal);
    started.catch(() => undefined);
    await eventually(() => expect(conn.health().ready).toBe(false), { timeoutMs: 5_000, intervalMs: 20 });
    expect(conn.health().message).toMatch(/refused devicelet's credentials: .*401 IotHubUnauthorizedAccess/);
    expect(conn.isConnected()).toBe(false);
    await conn.stop();
    await expect(started).rejects.toThrow("stopped");
  });
});
