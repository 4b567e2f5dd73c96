/**
 * The IoT Hub emulator against the unmodified Azure SDKs: `azure-iot-device` over
 * `azure-iot-device-mqtt` on the device side, `azure-iothub`'s `Registry` and `Client` on the service
 * side (pointed at the emulator's port and CA by hack/iothub-emulator/service-sdk.ts), and plain
 * HTTPS where the SDK hides the status (401, 404, 429, 504). Each test asserts the hub's end state
 * as the service API reports it, not what the emulator's internals hold.
 */
import https from "node:https";
import { Client as DeviceClient, Message } from "azure-iot-device";
import { Mqtt } from "azure-iot-device-mqtt";
import mqtt from "mqtt";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { createToken, startIotHubEmulator, type IotHubEmulator } from "../../hack/iothub-emulator/index.ts";
import { emulatorRegistry, emulatorServiceClient } from "../../hack/iothub-emulator/service-sdk.ts";
import { eventually } from "../support/eventually.ts";

let emulator: IotHubEmulator;
/** Added to the real time on the emulator's clock (SAS expiry, throttling). */
let clockOffsetMs = 0;
let frozenAt: number | undefined;
const openClients: DeviceClient[] = [];

beforeAll(async () => {
  emulator = await startIotHubEmulator({ now: () => (frozenAt ?? Date.now()) + clockOffsetMs });
});
afterAll(async () => {
  await emulator.close();
});
afterEach(async () => {
  clockOffsetMs = 0;
  frozenAt = undefined;
  emulator.hub.setThrottle({});
  await Promise.all(openClients.splice(0).map((c) => c.close().catch(() => undefined)));
});

let deviceCounter = 0;
function newDevice(): { deviceId: string; connectionString: string } {
  deviceCounter += 1;
  const deviceId = `dev-${deviceCounter}`;
  return { deviceId, ...emulator.addDevice(deviceId) };
}

async function openDevice(connectionString: string): Promise<DeviceClient> {
  const client = DeviceClient.fromConnectionString(connectionString, Mqtt);
  await client.setOptions({ ca: emulator.ca });
  openClients.push(client);
  await client.open();
  return client;
}

function report(twin: Awaited<ReturnType<DeviceClient["getTwin"]>>, patch: object): Promise<void> {
  return new Promise((resolve, reject) => {
    // The SDK types the reported section as `any`; `update` is its documented patch call.
    const reported = twin.properties.reported as { update(p: object, done: (err?: Error) => void): void };
    reported.update(patch, (err) => (err ? reject(err) : resolve()));
  });
}

/** A service REST call with the emulator's CA; returns the status and parsed body. */
function rest(o: {
  method: string;
  path: string;
  token?: string;
  body?: unknown;
  headers?: Record<string, string>;
}) {
  const url = new URL(
    `${o.path}${o.path.includes("?") ? "&" : "?"}api-version=2021-04-12`,
    emulator.serviceUrl,
  );
  return new Promise<{ status: number; body: unknown; headers: Record<string, unknown> }>(
    (resolve, reject) => {
      const req = https.request(
        url,
        {
          method: o.method,
          ca: emulator.ca,
          headers: {
            authorization: o.token ?? emulator.serviceToken(),
            "content-type": "application/json",
            ...o.headers,
          },
        },
        (res) => {
          let text = "";
          res.on("data", (chunk: Buffer) => (text += chunk.toString()));
          res.on("end", () => {
            resolve({
              status: res.statusCode ?? 0,
              body: text === "" ? undefined : JSON.parse(text),
              headers: res.headers,
            });
          });
        },
      );
      req.on("error", reject);
      req.end(o.body === undefined ? undefined : JSON.stringify(o.body));
    },
  );
}

/** A device speaking IoT Hub's MQTT by hand (plain MQTT.js), subscribed to twin responses. */
async function rawDevice(
  d: { deviceId: string; connectionString: string },
  o: { hostName?: string } = {},
): Promise<mqtt.MqttClient> {
  const key = /SharedAccessKey=([^;]+)/.exec(d.connectionString)?.[1] ?? "";
  const client = await mqtt.connectAsync(emulator.mqttUrl, {
    clientId: d.deviceId,
    username: `${o.hostName ?? emulator.hostName}/${d.deviceId}/?api-version=2021-04-12`,
    password: createToken({
      resource: `${emulator.hostName}/devices/${d.deviceId}`,
      key,
      expiry: Math.floor(Date.now() / 1000) + 600,
    }),
    ca: emulator.ca,
    protocolVersion: 4,
    reconnectPeriod: 0,
  });
  await client.subscribeAsync("$iothub/twin/res/#", { qos: 1 });
  return client;
}

function nextMessage(client: mqtt.MqttClient): Promise<[string, Buffer]> {
  return new Promise((resolve) => client.once("message", (topic, payload) => resolve([topic, payload])));
}

describe("device side (azure-iot-device over MQTT/TLS)", () => {
  it("opens, reads the twin and reports; the service sees the report and the connection state", async () => {
    const { deviceId, connectionString } = newDevice();
    const registry = emulatorRegistry(emulator);
    const client = await openDevice(connectionString);
    expect((await registry.get(deviceId)).responseBody.connectionState).toBe("Connected");

    const twin = await client.getTwin();
    expect(twin.properties.reported.$version).toBe(1);
    await report(twin, { firmware: { version: "1.2" }, gone: null });

    const seen = (await registry.getTwin(deviceId)).responseBody;
    expect(seen.properties.reported).toMatchObject({ firmware: { version: "1.2" }, $version: 2 });
    expect(seen.properties.reported).not.toHaveProperty("gone");

    await client.close();
    await eventually(async () => {
      expect((await registry.get(deviceId)).responseBody.connectionState).toBe("Disconnected");
    });
  });

  it("delivers the service's desired patches with their $version, and only those with a fresh etag", async () => {
    const { deviceId, connectionString } = newDevice();
    const registry = emulatorRegistry(emulator);
    const client = await openDevice(connectionString);
    const twin = await client.getTwin();
    const patches: Record<string, unknown>[] = [];
    twin.on("properties.desired", (patch: Record<string, unknown>) => patches.push(structuredClone(patch)));
    // The SDK subscribes when the first listener is added and then emits the desired state it holds.
    await eventually(() => expect(patches).toEqual([{ $version: 1 }]), { timeoutMs: 10_000 });

    const { etag } = (await registry.getTwin(deviceId)).responseBody;
    await registry.updateTwin(
      deviceId,
      { tags: { site: "berlin" }, properties: { desired: { workload: { generation: 1 } } } },
      etag,
    );
    // The same etag again: another writer's change in between makes it stale.
    await expect(
      registry.updateTwin(deviceId, { properties: { desired: { workload: { generation: 9 } } } }, etag),
    ).rejects.toMatchObject({ name: "InvalidEtagError" });
    await registry.updateTwin(deviceId, { properties: { desired: { workload: { generation: 2 } } } }, "*");

    await eventually(() => expect(patches.map((p) => p.$version)).toContain(3), { timeoutMs: 10_000 });
    expect(patches.slice(1)).toEqual([
      { workload: { generation: 1 }, $version: 2 },
      { workload: { generation: 2 }, $version: 3 },
    ]);
    const seen = (await registry.getTwin(deviceId)).responseBody;
    expect(seen.tags).toEqual({ site: "berlin" });
    expect(seen.properties.desired).toMatchObject({ workload: { generation: 2 }, $version: 3 });
  });

  it("does not replay a desired patch to a device that was offline; its next full read has it", async () => {
    const { deviceId, connectionString } = newDevice();
    const registry = emulatorRegistry(emulator);
    const first = await openDevice(connectionString);
    await first.close();
    await eventually(async () => {
      expect((await registry.get(deviceId)).responseBody.connectionState).toBe("Disconnected");
    });
    await registry.updateTwin(deviceId, { properties: { desired: { workload: { generation: 5 } } } }, "*");

    const again = await openDevice(connectionString);
    const twin = await again.getTwin();
    expect(twin.properties.desired).toMatchObject({ workload: { generation: 5 }, $version: 2 });
  });

  it("carries device-to-cloud messages with their properties", async () => {
    const { deviceId, connectionString } = newDevice();
    const client = await openDevice(connectionString);
    const received = new Promise<{ deviceId: string; body: string; properties: Record<string, string> }>(
      (resolve) => {
        const off = emulator.onDeviceMessage((m) => {
          off();
          resolve({ deviceId: m.deviceId, body: m.body.toString(), properties: { ...m.properties } });
        });
      },
    );
    const message = new Message(JSON.stringify({ temperature: 21 }));
    message.properties.add("kind", "telemetry");
    await client.sendEvent(message);
    const got = await received;
    expect(got).toMatchObject({ deviceId, body: '{"temperature":21}' });
    expect(got.properties.kind).toBe("telemetry");
  });

  it("refuses a token signed with the wrong key and an expired one, at CONNECT", async () => {
    const { deviceId, connectionString } = newDevice();
    const wrongKey = connectionString.replace(
      /SharedAccessKey=[^;]+/,
      `SharedAccessKey=${Buffer.alloc(32, 7).toString("base64")}`,
    );
    await expect(openDevice(wrongKey)).rejects.toMatchObject({ name: "UnauthorizedError" });

    // The SDK signs tokens valid for an hour: two hours later on the hub's clock they have expired.
    clockOffsetMs = 2 * 3600 * 1000;
    const registry = emulatorRegistry(emulator); // its own token is signed on the hub's clock
    await expect(openDevice(connectionString)).rejects.toMatchObject({ name: "UnauthorizedError" });
    expect((await registry.get(deviceId)).responseBody.connectionState).toBe("Disconnected");

    // The same key, with the clock back: the refusals above were the key and the expiry.
    clockOffsetMs = 0;
    await openDevice(connectionString);
    expect((await registry.get(deviceId)).responseBody.connectionState).toBe("Connected");
  });

  it("routes what the hub sends a device to that device only, and retains nothing", async () => {
    const a = newDevice();
    const b = newDevice();
    const clientA = await rawDevice(a);
    const clientB = await rawDevice(b);
    try {
      const heardByB: string[] = [];
      clientB.on("message", (topic) => heardByB.push(topic));
      const answer = nextMessage(clientA);
      await clientA.publishAsync("$iothub/twin/GET/?$rid=42", "", { qos: 1, retain: true });
      const [topic, payload] = await answer;
      expect(topic).toBe("$iothub/twin/res/200/?$rid=42");
      expect(JSON.parse(payload.toString())).toMatchObject({
        desired: { $version: 1 },
        reported: { $version: 1 },
      });
      // B's own request, answered after A's: if A's answer had been routed to B it would be first.
      const answerB = nextMessage(clientB);
      await clientB.publishAsync("$iothub/twin/GET/?$rid=43", "", { qos: 1 });
      await answerB;
      expect(heardByB).toEqual(["$iothub/twin/res/200/?$rid=43"]);

      // The hub's answers are not retained: subscribing again brings back none of them, only the
      // answer to B's next request.
      await clientB.unsubscribeAsync("$iothub/twin/res/#");
      const again = nextMessage(clientB);
      await clientB.subscribeAsync("$iothub/twin/res/#", { qos: 1 });
      await clientB.publishAsync("$iothub/twin/GET/?$rid=44", "", { qos: 1 });
      await again;
      expect(heardByB.at(-1)).toBe("$iothub/twin/res/200/?$rid=44");
      expect(heardByB).toHaveLength(2);

      // A topic outside IoT Hub's set closes the connection, as the hub does.
      const closed = new Promise<void>((resolve) => clientA.once("close", () => resolve()));
      clientA.publish("some/other/topic", "x", { qos: 1 });
      await closed;
    } finally {
      await Promise.all([clientA.endAsync(true), clientB.endAsync(true)]);
    }
  });
});

describe("device side (MQTT by hand)", () => {
  it("takes a reported $version as a precondition: 412 when stale, 204 with the new version", async () => {
    const d = newDevice();
    const client = await rawDevice(d);
    try {
      const stale = nextMessage(client);
      await client.publishAsync("$iothub/twin/PATCH/properties/reported/?$rid=1&$version=7", '{"a":1}', {
        qos: 1,
      });
      expect((await stale)[0]).toBe("$iothub/twin/res/412/?$rid=1");
      const fresh = nextMessage(client);
      await client.publishAsync("$iothub/twin/PATCH/properties/reported/?$rid=2&$version=1", '{"a":2}', {
        qos: 1,
      });
      expect((await fresh)[0]).toBe("$iothub/twin/res/204/?$rid=2&$version=2");
      const seen = (await emulatorRegistry(emulator).getTwin(d.deviceId)).responseBody;
      expect(seen.properties.reported).toEqual({ a: 2, $version: 2 });
    } finally {
      await client.endAsync(true);
    }
  });

  it("refuses a username naming another hub with CONNACK 5", async () => {
    const d = newDevice();
    await expect(rawDevice(d, { hostName: "another-hub.azure-devices.net" })).rejects.toMatchObject({
      code: 5,
    });
  });
});

describe("direct methods", () => {
  it("invokes a method the device answers, 404 when offline, 504 when it does not answer", async () => {
    const answering = newDevice();
    const silent = newDevice();
    const offline = newDevice();
    const client = await openDevice(answering.connectionString);
    client.onDeviceMethod("restart", (request, response) => {
      void response.send(200, { restarted: (request.payload as { app: string }).app });
    });
    // The SDK subscribes to methods in the background; a method sent before that is refused (404).
    await eventually(() => expect(emulator.hub.acceptsMethods(answering.deviceId)).toBe(true));
    const service = emulatorServiceClient(emulator);
    const result = await service.invokeDeviceMethod(answering.deviceId, {
      methodName: "restart",
      payload: { app: "web" },
      responseTimeoutInSeconds: 5,
    });
    expect(result.result).toEqual({ status: 200, payload: { restarted: "web" } });

    const offlineAnswer = await rest({
      method: "POST",
      path: `/twins/${offline.deviceId}/methods`,
      body: { methodName: "restart", payload: null, responseTimeoutInSeconds: 5 },
    });
    expect(offlineAnswer.status).toBe(404);
    expect(offlineAnswer.headers["iothub-errorcode"]).toBe("DeviceNotOnline");

    const silentClient = await openDevice(silent.connectionString);
    silentClient.onDeviceMethod("restart", () => undefined);
    await eventually(() => expect(emulator.hub.acceptsMethods(silent.deviceId)).toBe(true));
    const started = Date.now();
    const timedOut = await rest({
      method: "POST",
      path: `/twins/${silent.deviceId}/methods`,
      body: { methodName: "restart", payload: null, responseTimeoutInSeconds: 5 },
    });
    expect(timedOut.status).toBe(504);
    expect(Date.now() - started).toBeGreaterThanOrEqual(4_900);
  });
});

describe("service side (REST)", () => {
  it("manages identities and refuses a bad service token with 401", async () => {
    const created = await rest({ method: "PUT", path: "/devices/rest-1", body: { deviceId: "rest-1" } });
    expect(created.status).toBe(200);
    expect(created.body).toMatchObject({
      deviceId: "rest-1",
      status: "enabled",
      connectionState: "Disconnected",
    });
    expect(
      (await rest({ method: "PUT", path: "/devices/rest-1", body: { deviceId: "rest-1" } })).status,
    ).toBe(409);

    const forged = createToken({
      resource: emulator.hostName,
      key: Buffer.alloc(32, 1).toString("base64"),
      policy: "iothubowner",
      expiry: Math.floor(Date.now() / 1000) + 600,
    });
    const refused = await rest({ method: "DELETE", path: "/devices/rest-1", token: forged });
    expect(refused.status).toBe(401);
    expect((await rest({ method: "GET", path: "/devices/rest-1" })).status).toBe(200);

    expect((await rest({ method: "DELETE", path: "/devices/rest-1" })).status).toBe(204);
    expect((await rest({ method: "GET", path: "/twins/rest-1" })).status).toBe(404);
  });

  it("pages a tag query with continuation tokens", async () => {
    const registry = emulatorRegistry(emulator);
    const ids = ["q-1", "q-2", "q-3", "q-4", "q-5"];
    for (const id of ids) {
      emulator.addDevice(id);
      await registry.updateTwin(id, { tags: { fleet: id === "q-3" ? "other" : "query" } }, "*");
    }
    const query = registry.createQuery("SELECT * FROM devices WHERE tags.fleet = 'query'", 2);
    const pages: string[][] = [];
    while (query.hasMoreResults) {
      const page = await query.nextAsTwin();
      pages.push(page.result.map((t) => t.deviceId));
    }
    expect(pages).toEqual([
      ["q-1", "q-2"],
      ["q-4", "q-5"],
    ]);
  });
});

describe("limits", () => {
  it("refuses a reported section over 32 KB and nesting over 10 levels, leaving the twin as it was", async () => {
    const { deviceId, connectionString } = newDevice();
    const registry = emulatorRegistry(emulator);
    const client = await openDevice(connectionString);
    const twin = await client.getTwin();
    await report(twin, { small: 1 });

    const big = Object.fromEntries(Array.from({ length: 9 }, (_, i) => [`part${i}`, "x".repeat(4000)]));
    await expect(report(twin, big)).rejects.toThrow();
    const nested = (levels: number): Record<string, unknown> =>
      levels === 1 ? { leaf: 1 } : { n: nested(levels - 1) };
    // The section object is level 1: nine more levels fit, ten do not.
    await registry.updateTwin(deviceId, { properties: { desired: nested(9) } }, "*");
    await expect(
      registry.updateTwin(deviceId, { properties: { desired: { deep: nested(10) } } }, "*"),
    ).rejects.toMatchObject({
      name: "ArgumentError",
    });

    const seen = (await registry.getTwin(deviceId)).responseBody;
    expect(seen.properties.reported).toEqual({ small: 1, $version: 2 });
    expect(seen.properties.desired).toEqual({ ...nested(9), $version: 2 });
  });

  it("throttles each operation class at its configured rate with 429", async () => {
    const { deviceId, connectionString } = newDevice();
    const client = await openDevice(connectionString);
    const twin = await client.getTwin();
    frozenAt = Date.now();
    emulator.hub.setThrottle({ twinRead: 2 });

    expect((await rest({ method: "GET", path: `/twins/${deviceId}` })).status).toBe(200);
    expect((await rest({ method: "GET", path: `/twins/${deviceId}` })).status).toBe(200);
    const throttled = await rest({ method: "GET", path: `/twins/${deviceId}` });
    expect(throttled.status).toBe(429);
    expect(throttled.headers["iothub-errorcode"]).toBe("ThrottlingException");
    // The device's own twin read shares the budget; its twin updates do not.
    await expect(client.getTwin()).rejects.toThrow();
    await report(twin, { stillWrites: true });

    clockOffsetMs = 1_000;
    expect((await rest({ method: "GET", path: `/twins/${deviceId}` })).status).toBe(200);

    // A rate under one a second (an S1 unit's 20 queries a minute) admits one every 1/rate s.
    emulator.hub.setThrottle({ query: 20 / 60 });
    const query = () =>
      rest({ method: "POST", path: "/devices/query", body: { query: "SELECT * FROM devices" } });
    expect((await query()).status).toBe(200);
    expect((await query()).status).toBe(429);
    clockOffsetMs = 4_000;
    expect((await query()).status).toBe(200);
    emulator.hub.setThrottle({});
  });
});
