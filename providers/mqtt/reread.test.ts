/**
 * Asking the broker again for the reports of devices left behind (reread.ts): the rule on its own,
 * and the whole path through a real (embedded) broker that drops a device's last ack and report on
 * their way to devicelet, as a broker whose queue for devicelet overflowed does.
 */
import net from "node:net";
import { Aedes } from "aedes";
import mqtt from "mqtt";
import { afterEach, describe, expect, it } from "vitest";
import { encodeMessage } from "../../src/protocol/codec.ts";
import { topics } from "../../src/protocol/topics.ts";
import type {
  AckMessage,
  DesiredDocument,
  PresenceMessage,
  ReportedDocument,
} from "../../src/protocol/types.ts";
import { emptyReport, gatewayBirth } from "../../test/support/device-messages.ts";
import { eventually } from "../../test/support/eventually.ts";
import { workload } from "../mock/testing.ts";
import { DeviceRegistry } from "./devices.ts";
import { createMqttProvider, type MqttProvider } from "./index.ts";
import { awayDevicesToReread, devicesToReread, RereadWatch, rereadTimes } from "./reread.ts";
import { quietContext } from "../../test/support/provider-context.ts";
import { TestMetrics } from "../../src/testing/context.ts";

const T0 = Date.parse("2026-03-01T12:00:00Z");

const presence = (deviceId: string, state: PresenceMessage["state"], seq: number): PresenceMessage => ({
  protocol: 1,
  kind: "presence",
  deviceId,
  state,
  bootId: "b1",
  seq,
  sentAt: new Date(T0).toISOString(),
  ...(state === "online" ? { device: gatewayBirth() } : {}),
});

describe("devicesToReread", () => {
  it("picks devices online, behind long enough and quiet long enough, once per interval", () => {
    let now = T0;
    const reg = new DeviceRegistry({ onChange: () => undefined, now: () => new Date(now) });
    for (const id of ["behind", "talking", "caught-up", "away"])
      reg.presence(presence(id, "online", 1), { retained: false });
    reg.presence(presence("away", "lost", 1), { retained: false });
    const behindSince = new Date(T0);
    const sync = (id: string) =>
      id === "caught-up"
        ? { desiredGeneration: 2, appliedGeneration: 2 }
        : { desiredGeneration: 2, appliedGeneration: 1, behindSince };
    const state = { sync, reportBehind: () => false };
    const last = new Map<string, number>();
    const times = rereadTimes(15_000); // behind 15 s, quiet 10 s, again after 60 s
    const due = () => devicesToReread(reg, state, last, { ...times, now, floor: T0 });

    now = T0 + 14_999;
    expect(due()).toEqual([]); // not behind long enough yet
    now = T0 + 15_000;
    reg.heard("talking"); // still talking: its ack may be on its way
    expect(due()).toEqual(["behind"]);
    last.set("behind", now);
    now = T0 + 15_000 + 59_999;
    expect(due()).toEqual(["talking"]); // quiet by now; "behind" was asked a minute ago
    now = T0 + 15_000 + 60_000;
    expect(due()).toEqual(["behind", "talking"]);
    // Nothing is heard before devicelet's own connection: quiet counts from it.
    expect(devicesToReread(reg, state, new Map(), { ...times, now, floor: now - 9_999 })).toEqual([]);
  });

  it("picks a quiet device whose report is behind its applied ack, and one heard from while taken for away", () => {
    let now = T0;
    const reg = new DeviceRegistry({ onChange: () => undefined, now: () => new Date(now) });
    for (const id of ["report-lost", "in-step", "birth-lost", "really-away"])
      reg.presence(presence(id, "online", 1), { retained: false });
    now = T0 + 1_000;
    reg.presence(presence("birth-lost", "lost", 1), { retained: false });
    reg.presence(presence("really-away", "lost", 1), { retained: false });
    now = T0 + 2_000;
    reg.heard("birth-lost"); // its new connection's ack came; its birth did not
    const state = {
      sync: () => ({ desiredGeneration: 3, appliedGeneration: 3 }), // in sync by the acks
      reportBehind: (id: string) => id === "report-lost",
    };
    const times = rereadTimes(15_000);
    now = T0 + 9_999;
    expect(devicesToReread(reg, state, new Map(), { ...times, now, floor: T0 })).toEqual(["birth-lost"]);
    now = T0 + 10_000; // quiet for 10 s now
    expect(devicesToReread(reg, state, new Map(), { ...times, now, floor: T0 })).toEqual([
      "report-lost",
      "birth-lost",
    ]);
    // Re-read and still away (its retained state was the will): asked again only once heard again.
    const last = new Map([["birth-lost", now]]);
    now = T0 + 100_000;
    expect(devicesToReread(reg, state, last, { ...times, now, floor: T0 })).toEqual(["report-lost"]);
    reg.heard("birth-lost");
    expect(devicesToReread(reg, state, last, { ...times, now, floor: T0 })).toEqual([
      "report-lost",
      "birth-lost",
    ]);
    // Behind because it rejected the document: not a lost message.
    const rejected = {
      sync: () => ({
        desiredGeneration: 3,
        appliedGeneration: 2,
        behindSince: new Date(T0),
        rejected: { generation: 3, reason: "TooLarge", message: "m" },
      }),
      reportBehind: () => false,
    };
    expect(devicesToReread(reg, rejected, new Map(), { ...times, now, floor: T0 })).toEqual(["birth-lost"]);
  });
});

describe("awayDevicesToReread", () => {
  it("picks devices taken for away once a wave of returns has passed, each wait double the last", () => {
    let now = T0;
    const reg = new DeviceRegistry({ onChange: () => undefined, now: () => new Date(now) });
    for (const id of ["back", "dropped", "gone"])
      reg.presence(presence(id, "online", 1), { retained: false });
    for (const id of ["back", "dropped", "gone"]) reg.presence(presence(id, "lost", 2), { retained: false });
    const times = rereadTimes(15_000); // quiet 10 s, again after 60 s
    const last = new Map<string, number>();
    const due = () => awayDevicesToReread(reg, last, { ...times, now, floor: T0, limit: 500 });

    now = T0 + 120_000;
    expect(due()).toEqual([]); // nobody came back: nothing was dropped on the way
    reg.presence(presence("back", "online", 3), { retained: false }); // the wave
    now += 9_999;
    expect(due()).toEqual([]); // the wave may not have passed
    now += 1;
    expect(due()).toEqual(["dropped", "gone"]);
    expect(awayDevicesToReread(reg, last, { ...times, now, floor: T0, limit: 1 })).toEqual(["dropped"]);
    expect(
      awayDevicesToReread(reg, last, { ...times, now, floor: T0, limit: 500 }, new Set(["gone"])),
    ).toEqual(["dropped"]);
    // Re-read at T0 + 130 s, away since T0: still away.
    for (const id of due()) last.set(id, now);
    now += 60_000;
    expect(due()).toEqual([]); // no return since the re-read
    reg.presence(presence("dropped", "online", 3), { retained: true }); // the re-read found its birth
    now += 10_000; // T0 + 200 s: 70 s after the re-read, which came 130 s after going away
    expect(due()).toEqual([]);
    now = T0 + 260_000;
    expect(due()).toEqual(["gone"]);
    last.set("gone", now);
    now = T0 + 300_000; // another wave, 40 s later
    reg.presence(presence("back", "lost", 4), { retained: false });
    reg.presence(presence("back", "online", 5), { retained: false });
    now = T0 + 519_999;
    expect(due()).toEqual([]); // not before away twice as long as at the last re-read
    now = T0 + 520_000;
    expect(due()).toEqual(["gone"]);
    // A device that went away after the latest return is not due: nothing of it was in the wave.
    reg.presence(presence("back", "lost", 6), { retained: false });
    expect(due()).toEqual(["gone"]);
  });
});

describe("RereadWatch", () => {
  it("refuses a period that is not a number of milliseconds, where a timer would fire every millisecond", () => {
    const options = {
      registry: new DeviceRegistry({ onChange: () => undefined }),
      connectedSince: () => T0,
      sync: () => undefined,
      reportBehind: () => false,
      reread: () => Promise.resolve(),
    };
    for (const afterMs of [Number.NaN, -1, Number.POSITIVE_INFINITY]) {
      expect(() => new RereadWatch({ ...options, afterMs })).toThrow(/afterMs must be 0 or more/);
    }
  });
});

describe("devices.rereadAfterSeconds", () => {
  let server: net.Server | undefined;
  let aedes: Aedes | undefined;
  let provider: MqttProvider | undefined;
  let device: mqtt.MqttClient | undefined;
  afterEach(async () => {
    await device?.endAsync();
    await provider?.stop();
    if (aedes) await new Promise<void>((resolve) => aedes?.close(() => resolve()));
    if (server) await new Promise<void>((resolve) => server?.close(() => resolve()));
    [device, provider, aedes, server] = [undefined, undefined, undefined, undefined];
  });

  const CLIENT = "devicelet-reread-test";
  const ID = "gw-1";

  /**
   * A broker that, while `dropping`, forwards nothing of the device's acks and reports to devicelet
   * (live or retained), and a device played by an MQTT client that has answered a document with
   * an applied ack and a report of its pod Running during the drop. Resolves the pod's status.
   */
  async function droppedAnswer(rereadAfterSeconds: number, drop = /\/(ack|reported)$/) {
    let dropping = false;
    let dropped = drop;
    aedes = await Aedes.createBroker({
      authorizeForward: (client, packet) =>
        dropping && client.id === CLIENT && dropped.test(packet.topic) ? null : packet,
    });
    const broker = aedes;
    server = net.createServer((socket) => broker.handle(socket));
    await new Promise<void>((resolve) => server?.listen(0, "127.0.0.1", () => resolve()));
    const address = server.address();
    const url = `mqtt://127.0.0.1:${typeof address === "object" && address ? address.port : 0}`;

    const documents: DesiredDocument[] = [];
    device = await mqtt.connectAsync(url, { clientId: ID, clean: true, reconnectPeriod: 0 });
    device.on("message", (_topic, payload) => {
      if (payload.length > 0) documents.push(JSON.parse(payload.toString("utf8")) as DesiredDocument);
    });
    await device.subscribeAsync(topics.desired(ID), { qos: 1 });
    const send = (topic: string, message: object, retain: boolean) =>
      device?.publishAsync(topic, encodeMessage(message as PresenceMessage), { qos: 1, retain });
    await send(topics.state(ID), presence(ID, "online", 1), true);
    await send(topics.reported(ID), emptyReport({ deviceId: ID, bootId: "b1", seq: 2 }), true);

    const metrics = new TestMetrics();
    provider = createMqttProvider(
      {
        broker: { url, clientId: CLIENT, protocolVersion: 4 },
        devices: { allow: ["gw-*"], rereadAfterSeconds },
        desired: { readbackTimeoutMs: 200 },
      },
      { ...quietContext(), metrics },
    );
    await provider.start(new AbortController().signal);
    await eventually(async () => expect((await provider?.listDevices())?.length).toBe(1));

    const w = workload("app", ID);
    await provider.createPod(w);
    await eventually(() => expect(documents.at(-1)?.pods.map((p) => p.name)).toEqual(["app"]));
    const doc = documents.at(-1) as DesiredDocument;
    const pod = doc.pods[0] as DesiredDocument["pods"][number];

    // The device applies it and says so; none of it reaches devicelet.
    dropping = true;
    const ack: AckMessage = {
      protocol: 1,
      kind: "ack",
      deviceId: ID,
      bootId: "b1",
      seq: 3,
      epoch: doc.epoch,
      generation: doc.generation,
      stage: "applied",
    };
    const report: ReportedDocument = {
      ...emptyReport({ deviceId: ID, bootId: "b1", seq: 4 }),
      epoch: doc.epoch,
      observedGeneration: doc.generation,
      appliedGeneration: doc.generation,
      pods: [
        {
          uid: pod.uid,
          hash: pod.hash,
          phase: "Running",
          apps: [
            {
              name: "app",
              image: pod.apps[0]?.image ?? "",
              status: { state: "running", startedAt: new Date().toISOString() },
              ready: true,
              restartCount: 0,
            },
          ],
        },
      ],
    };
    await send(topics.ack(ID), ack, false);
    await send(topics.reported(ID), report, true);
    // Let the broker route (and drop) them before the drop ends.
    await new Promise((r) => setTimeout(r, 200));
    dropping = false;
    return {
      pod: w.pod,
      provider,
      /** What the engine's metrics were told (`devicelet_device_reports_reread_total`). */
      metrics,
      send,
      /** Drops what matches on its way to devicelet from now on; undefined: nothing. */
      drop: (what: RegExp | undefined) => {
        dropping = what !== undefined;
        dropped = what ?? dropped;
      },
    };
  }

  it("asks the broker again for the report of a device left behind and quiet, and gets the pod Running", async () => {
    const { pod, provider: p, metrics } = await droppedAnswer(0.6);
    await eventually(async () => expect((await p.getPodStatus(pod))?.phase).toBe("Running"), {
      timeoutMs: 5_000,
    });
    expect(p.metrics().rereads).toBeGreaterThanOrEqual(1);
    // Exported for the operator too: a broker dropping messages for devicelet is worth an alert.
    expect(metrics.reread).toBe(p.metrics().rereads);
  });

  it("asks again for the report of a device whose applied ack came but not the report after it", async () => {
    const { pod, provider: p } = await droppedAnswer(0.6, /\/reported$/);
    await eventually(async () => expect((await p.getPodStatus(pod))?.phase).toBe("Running"), {
      timeoutMs: 5_000,
    });
    expect(p.metrics().rereads).toBeGreaterThanOrEqual(1);
  });

  it("reads the state again of a device heard from while taken for lost: its birth was dropped", async () => {
    const { provider: p, send, drop } = await droppedAnswer(0.6, /\/reported$/);
    const connected = async () => (await p.listDevices()).find((d) => d.id === ID)?.connected;
    await eventually(async () => expect(p.metrics().rereads).toBeGreaterThanOrEqual(1), { timeoutMs: 5_000 });
    // The connection drops (its will goes out), the device comes back, its birth is lost on the way.
    await send(topics.state(ID), presence(ID, "lost", 1), true);
    await eventually(async () => expect(await connected()).toBe(false));
    const rereads = p.metrics().rereads;
    drop(/\/state$/);
    await send(topics.state(ID), presence(ID, "online", 5), true);
    await new Promise((r) => setTimeout(r, 200));
    drop(undefined);
    // The next message of the new connection is heard; the birth is read again from the broker.
    const event = {
      protocol: 1,
      kind: "event",
      deviceId: ID,
      bootId: "b1",
      seq: 6,
      type: "Normal",
      reason: "Tick",
      message: "tick",
      at: new Date().toISOString(),
    };
    await send(topics.evt(ID), event, false);
    await eventually(async () => expect(await connected()).toBe(true), { timeoutMs: 5_000 });
    expect(p.metrics().rereads).toBeGreaterThan(rereads);
  });

  it("reads the state again of a device taken for lost once other devices came back: all of it was dropped", async () => {
    const { provider: p, send, drop } = await droppedAnswer(0.6, /\/reported$/);
    const connected = async (id: string) => (await p.listDevices()).find((d) => d.id === id)?.connected;
    await eventually(async () => expect(p.metrics().rereads).toBeGreaterThanOrEqual(1), { timeoutMs: 5_000 });
    // Another device, away for now.
    const OTHER = "gw-2";
    await send(topics.state(OTHER), presence(OTHER, "online", 1), true);
    await send(topics.state(OTHER), presence(OTHER, "lost", 2), true);
    await eventually(async () => expect(await connected(OTHER)).toBe(false));
    // The first device's connection drops; it comes back, and everything it says is lost on the way.
    await send(topics.state(ID), presence(ID, "lost", 1), true);
    await eventually(async () => expect(await connected(ID)).toBe(false));
    drop(new RegExp(`/${ID}/`));
    await send(topics.state(ID), presence(ID, "online", 5), true);
    await send(topics.reported(ID), emptyReport({ deviceId: ID, bootId: "b1", seq: 6 }), true);
    await new Promise((r) => setTimeout(r, 200));
    drop(undefined);
    // Nothing heard, nobody else back: nothing to go on yet (quiet 0.4 s, again after 2.4 s).
    await new Promise((r) => setTimeout(r, 3_000));
    expect(await connected(ID)).toBe(false);
    expect(p.metrics().awayRereads).toBe(0);
    // The other device comes back: a wave, and once it has passed the first device's birth is read.
    await send(topics.state(OTHER), presence(OTHER, "online", 3), true);
    await eventually(async () => expect(await connected(ID)).toBe(true), { timeoutMs: 5_000 });
    expect(await connected(OTHER)).toBe(true);
    expect(p.metrics().awayRereads).toBeGreaterThanOrEqual(1);
  });

  it("without it (0), the pod waits for the device's next report", async () => {
    const { pod, provider: p, metrics } = await droppedAnswer(0);
    await new Promise((r) => setTimeout(r, 1_500));
    expect((await p.getPodStatus(pod))?.phase).not.toBe("Running");
    expect(p.metrics().rereads).toBe(0);
    expect(metrics.reread).toBe(0);
  });
});
