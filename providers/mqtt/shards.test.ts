/**
 * The MQTT provider serving one shard (`ProviderContext.owns`) against Mosquitto: the broker
 * splits the traffic. Each provider talks to the broker through a relay that reads the MQTT
 * packets on the wire, so the tests see what the broker actually delivered to devicelet and which
 * filters devicelet subscribed to — not what devicelet chose to look at. Devices are MQTT clients
 * publishing hand-written protocol messages.
 */
import { mkdtempSync } from "node:fs";
import { rm } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import mqtt from "mqtt";
import mqttPacket from "mqtt-packet";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { startMosquitto, type Broker } from "../../hack/testenv/mosquitto.ts";
import { encodeMessage } from "../../src/protocol/codec.ts";
import { topics } from "../../src/protocol/topics.ts";
import type { AckMessage, DesiredDocument, PresenceMessage } from "../../src/protocol/types.ts";
import { testContext } from "../../src/testing/context.ts";
import type { MemoryStore } from "../../src/testing/memory-store.ts";
import { eventually } from "../../test/support/eventually.ts";
import { gatewayBirth, emptyReport } from "../../test/support/device-messages.ts";
import { workload } from "../mock/testing.ts";
import { createMqttProvider, type MqttProvider } from "./index.ts";
import { FILTERS_PER_DEVICE } from "./subscriptions.ts";

const WAIT = { timeoutMs: 10_000, intervalMs: 20 };

/** A TCP relay to the broker for one MQTT 5 client that parses what passes both ways. */
class WireTap {
  /** Filters of each SUBSCRIBE the client sent, in order. */
  readonly subscribes: string[][] = [];
  readonly unsubscribes: string[][] = [];
  /** UNSUBACKs the broker sent: the first this many UNSUBSCRIBEs are done. */
  unsubacks = 0;
  /** Topics of every PUBLISH the broker sent the client, in order. */
  readonly delivered: string[] = [];
  readonly #server = net.createServer();
  readonly #sockets = new Set<net.Socket>();
  readonly #brokerPort: number;

  private constructor(brokerPort: number) {
    this.#brokerPort = brokerPort;
  }

  static async start(brokerPort: number): Promise<WireTap> {
    const tap = new WireTap(brokerPort);
    tap.#server.on("connection", (client) => tap.#relay(client));
    await new Promise<void>((resolve) => tap.#server.listen(0, "127.0.0.1", resolve));
    return tap;
  }

  get url(): string {
    return `mqtt://127.0.0.1:${(this.#server.address() as net.AddressInfo).port}`;
  }

  /** Every filter subscribed so far, in one set. */
  filters(): Set<string> {
    return new Set(this.subscribes.flat());
  }

  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise((resolve) => this.#server.close(resolve));
  }

  #relay(client: net.Socket): void {
    const broker = net.connect({ port: this.#brokerPort, host: "127.0.0.1" });
    this.#sockets.add(client).add(broker);
    const up = mqttPacket.parser({ protocolVersion: 5 });
    const down = mqttPacket.parser({ protocolVersion: 5 });
    up.on("packet", (p) => {
      if (p.cmd === "subscribe") this.subscribes.push(p.subscriptions.map((s) => s.topic));
      if (p.cmd === "unsubscribe") this.unsubscribes.push([...p.unsubscriptions]);
    });
    down.on("packet", (p) => {
      if (p.cmd === "publish") this.delivered.push(p.topic);
      if (p.cmd === "unsuback") this.unsubacks++;
    });
    client.on("data", (chunk) => {
      up.parse(chunk);
      broker.write(chunk);
    });
    broker.on("data", (chunk) => {
      down.parse(chunk);
      client.write(chunk);
    });
    const end = () => {
      client.destroy();
      broker.destroy();
    };
    for (const s of [client, broker]) s.on("close", end).on("error", end);
  }
}

let broker: Broker | undefined;
let brokerDir = "";
const cleanups: (() => Promise<unknown>)[] = [];

beforeAll(async () => {
  brokerDir = mkdtempSync(join(tmpdir(), "devicelet-mqtt-shards-"));
  broker = await startMosquitto({ dir: brokerDir });
});
afterEach(async () => {
  for (const step of cleanups.splice(0).reverse()) await step();
});
afterAll(async () => {
  await broker?.stop();
  await rm(brokerDir, { recursive: true, force: true });
});

const need = <T>(value: T | undefined): T => {
  if (value === undefined) throw new Error("the broker did not start");
  return value;
};

/** A device played by an MQTT client: births, reports and acks of one boot. */
async function device(id: string) {
  const client = await mqtt.connectAsync(need(broker).url, { clientId: id, clean: true, reconnectPeriod: 0 });
  cleanups.push(() => client.endAsync(true));
  const documents: DesiredDocument[] = [];
  client.on("message", (_topic, payload) => {
    if (payload.length > 0) documents.push(JSON.parse(payload.toString("utf8")) as DesiredDocument);
  });
  await client.subscribeAsync(topics.desired(id), { qos: 1 });
  let seq = 0;
  const bootId = "b-1";
  const publish = (topic: string, message: Parameters<typeof encodeMessage>[0], retain: boolean) =>
    client.publishAsync(topic, encodeMessage(message), { qos: 1, retain });
  return {
    id,
    documents,
    born: () => {
      const birth: PresenceMessage = {
        protocol: 1,
        kind: "presence",
        deviceId: id,
        state: "online",
        bootId,
        seq: ++seq,
        sentAt: new Date().toISOString(),
        device: gatewayBirth(),
      };
      return publish(topics.state(id), birth, true);
    },
    report: () => publish(topics.reported(id), emptyReport({ deviceId: id, bootId, seq: ++seq }), true),
    ack: () => {
      const ack: AckMessage = {
        protocol: 1,
        kind: "ack",
        deviceId: id,
        bootId,
        seq: ++seq,
        epoch: "e-1",
        generation: 1,
        stage: "received",
      };
      return publish(topics.ack(id), ack, false);
    },
  };
}

/** A started provider serving the devices `owns` says (all without it), through a wire tap. */
async function provider(o: {
  clientId: string;
  /** The devices of this test: `devices.allow`, as brokers keep retained births across tests. */
  allow: string;
  owns?: (id: string) => boolean;
  store?: MemoryStore;
}) {
  const tap = await WireTap.start(need(broker).port);
  const context = testContext(o.store ? { store: o.store } : {});
  const p: MqttProvider = createMqttProvider(
    {
      broker: {
        url: tap.url,
        clientId: o.clientId,
        protocolVersion: 5,
        reconnect: { minDelayMs: 50, maxDelayMs: 500 },
      },
      devices: { allow: [o.allow] },
      desired: { readbackTimeoutMs: 5_000 },
      metricsLogIntervalSeconds: 0,
    },
    { ...context, ...(o.owns ? { owns: o.owns } : {}) },
  );
  await p.start(new AbortController().signal);
  cleanups.push(
    () => tap.close(),
    () => p.stop(),
  );
  return { provider: p, tap, context };
}

const inShardA = (id: string) => id.endsWith("-a");
const inShardB = (id: string) => !inShardA(id);
const idsOf = async (p: MqttProvider) => (await p.listDevices()).map((d) => d.id).sort();
const ofDevice = (id: string) => (topic: string) => topic.split("/")[2] === id;

describe("a shard's provider (ProviderContext.owns) on Mosquitto", () => {
  it("serves only owned devices; the broker never sends it the others' reports and acks", async () => {
    const [owned, other, ownedLive, otherLive] = await Promise.all(
      ["s1-1-a", "s1-2-b", "s1-3-a", "s1-4-b"].map((id) => device(id)),
    );
    if (!owned || !other || !ownedLive || !otherLive) throw new Error("devices missing");
    await owned.born(); // retained, read at start
    await other.born();
    const a = await provider({ clientId: "devicelet-shards-1", allow: "s1-*", owns: inShardA });
    await ownedLive.born(); // live, after start
    await otherLive.born();
    await eventually(async () => expect(await idsOf(a.provider)).toEqual(["s1-1-a", "s1-3-a"]), WAIT);
    await eventually(() => expect(a.provider.metrics().subscriptions).toBe(1 + 2 * FILTERS_PER_DEVICE), WAIT);

    // The other shard's traffic goes first; once the broker took it (PUBACK) it has routed it.
    for (const d of [other, otherLive]) {
      await d.report();
      await d.ack();
    }
    for (const d of [owned, ownedLive]) {
      await d.report();
      await d.ack();
    }
    await eventually(() => {
      expect(a.tap.delivered).toContain(topics.ack("s1-1-a"));
      expect(a.tap.delivered).toContain(topics.ack("s1-3-a"));
    }, WAIT);

    // On the wire: of the other shard's devices only their discovery `state` reached devicelet.
    const foreign = a.tap.delivered.filter((t) => ofDevice("s1-2-b")(t) || ofDevice("s1-4-b")(t));
    expect(foreign.sort()).toEqual([topics.state("s1-2-b"), topics.state("s1-4-b")]);
    const filters = a.tap.filters();
    expect(filters).toContain(topics.state("+"));
    for (const f of [...topics.fromDevice("s1-1-a"), ...topics.fromDevice("s1-3-a")])
      expect(filters).toContain(f);
    const deviceFilters = [...filters].filter((f) => !f.includes("/_bridge/") && !f.endsWith("/+/desired"));
    expect(deviceFilters.sort()).toEqual(
      [topics.state("+"), ...topics.fromDevice("s1-1-a"), ...topics.fromDevice("s1-3-a")].sort(),
    );
    expect(await idsOf(a.provider)).toEqual(["s1-1-a", "s1-3-a"]);
    const metrics = a.provider.metrics();
    expect(metrics.notOwned).toBe(2);
    expect(Object.values(metrics.rejected).every((n) => n === 0)).toBe(true);
    expect(metrics.refusedMessages).toBe(0);
  });

  it("two providers with complementary predicates: each device in exactly one inventory, documents reach their devices", async () => {
    const ids = ["s2-10-a", "s2-11-b", "s2-12-a", "s2-13-b", "s2-14-a", "s2-15-b"];
    const devices = await Promise.all(ids.map((id) => device(id)));
    for (const d of devices.slice(0, 3)) await d.born();
    const [a, b] = await Promise.all([
      provider({ clientId: "devicelet-shards-2a", allow: "s2-*", owns: inShardA }),
      provider({ clientId: "devicelet-shards-2b", allow: "s2-*", owns: inShardB }),
    ]);
    for (const d of devices.slice(3)) await d.born();
    await eventually(async () => {
      expect(await idsOf(a.provider)).toEqual(ids.filter(inShardA));
      expect(await idsOf(b.provider)).toEqual(ids.filter(inShardB));
    }, WAIT);
    expect([...(await idsOf(a.provider)), ...(await idsOf(b.provider))].sort()).toEqual([...ids].sort());

    await a.provider.createPod(workload("pod-a", "s2-12-a"));
    await b.provider.createPod(workload("pod-b", "s2-13-b"));
    const [onA, onB] = [devices[2], devices[3]];
    await eventually(() => {
      expect(onA?.documents.at(-1)?.pods.map((p) => p.name)).toEqual(["pod-a"]);
      expect(onB?.documents.at(-1)?.pods.map((p) => p.name)).toEqual(["pod-b"]);
    }, WAIT);
    expect((await a.provider.listPods()).map((p) => p.nodeName)).toEqual(["s2-12-a"]);
    expect((await b.provider.listPods()).map((p) => p.nodeName)).toEqual(["s2-13-b"]);
  });

  it("a restarted shard reads back only its devices' documents and drops an earlier session's wildcards", async () => {
    const [da, db] = await Promise.all(["s3-20-a", "s3-21-b"].map((id) => device(id)));
    if (!da || !db) throw new Error("devices missing");
    await da.born();
    await db.born();
    // One devicelet serving every device leaves a document for each, and a persistent session
    // holding the wildcard filters.
    const whole = await provider({ clientId: "devicelet-shards-3", allow: "s3-*" });
    await eventually(async () => expect(await idsOf(whole.provider)).toEqual(["s3-20-a", "s3-21-b"]), WAIT);
    await whole.provider.createPod(workload("pod-20", "s3-20-a"));
    await whole.provider.createPod(workload("pod-21", "s3-21-b"));
    await whole.provider.stop();

    // Same client id and durable store, now serving shard A.
    const a = await provider({
      clientId: "devicelet-shards-3",
      allow: "s3-*",
      owns: inShardA,
      store: whole.context.store,
    });
    const mine = (await a.provider.listPods()).filter((p) => p.nodeName.startsWith("s3-")); // not earlier tests'
    expect(mine.map((p) => p.pod.name)).toEqual(["pod-20"]);
    // Both documents came over the wire (the read-back reads `+/desired`); the other was dropped.
    expect(a.tap.delivered).toContain(topics.desired("s3-21-b"));
    expect(a.provider.metrics().notOwned).toBeGreaterThanOrEqual(2); // its document and its state
    // Done once the broker answered the UNSUBSCRIBE that drops them.
    await eventually(() => {
      const dropped = a.tap.unsubscribes.findIndex((u) => u.includes("devicelet/v1/+/reported"));
      expect(dropped).toBeGreaterThanOrEqual(0);
      expect(a.tap.unsubacks).toBeGreaterThan(dropped);
    }, WAIT);

    // The session's old wildcard subscriptions are gone: the other device's traffic stays away.
    await db.report();
    await db.ack();
    await da.ack();
    await eventually(() => expect(a.tap.delivered).toContain(topics.ack("s3-20-a")), WAIT);
    expect(a.tap.delivered).not.toContain(topics.ack("s3-21-b"));
    expect(a.tap.delivered.filter((t) => t === topics.reported("s3-21-b"))).toEqual([]);
  });

  it("subscribes every owned device again after the broker lost devicelet's session", async () => {
    const d = await device("s4-30-a");
    await d.born();
    const a = await provider({ clientId: "devicelet-shards-4", allow: "s4-*", owns: inShardA });
    await eventually(() => expect(a.provider.metrics().subscriptions).toBe(1 + FILTERS_PER_DEVICE), WAIT);

    // A broker restarted without its persistence: sessions and retained messages are gone.
    const b = need(broker);
    await b.stop();
    await rm(join(brokerDir, "data", "mosquitto.db"), { force: true });
    const before = a.tap.subscribes.length;
    await b.start();
    await eventually(() => {
      const again = new Set(a.tap.subscribes.slice(before).flat());
      expect(again).toContain(topics.state("+"));
      for (const f of topics.fromDevice("s4-30-a")) expect(again).toContain(f);
      expect(a.provider.metrics().subscriptions).toBe(1 + FILTERS_PER_DEVICE);
    }, WAIT);

    // The device's traffic reaches devicelet again (its own connection was dropped too).
    const back = await device("s4-30-a");
    await back.ack();
    await eventually(() => expect(a.tap.delivered.slice(-20)).toContain(topics.ack("s4-30-a")), WAIT);
  });
});
