/**
 * The emulator's Event Hubs-compatible endpoint against the unmodified `EventHubConsumerClient`
 * of `@azure/event-hubs`: devices (`azure-iot-device` over MQTT) send, the consumer reads what the
 * endpoint delivers, with the system and application properties IoT Hub sets. The client cannot
 * be handed a CA on its default transport (AMQP over TLS), so this test process trusts the
 * emulator's CA process-wide; providers/iothub/event-feed.test.ts covers the WebSocket transport.
 */
import {
  EventHubConsumerClient,
  earliestEventPosition,
  latestEventPosition,
  type ReceivedEventData,
  type Subscription,
} from "@azure/event-hubs";
import { Client as DeviceClient, Message } from "azure-iot-device";
import { Mqtt } from "azure-iot-device-mqtt";
import { createHmac } from "node:crypto";
import rhea, { type Connection, type EventContext, type Message as AmqpMessage, type Receiver } from "rhea";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { trustCertificateAuthorityProcessWide } from "../../hack/iothub-emulator/event-hubs.ts";
import { startIotHubEmulator, type IotHubEmulator } from "../../hack/iothub-emulator/index.ts";
import { eventually } from "../support/eventually.ts";

let emulator: IotHubEmulator;
let routed: IotHubEmulator;
const cleanups: (() => Promise<unknown>)[] = [];

beforeAll(async () => {
  emulator = await startIotHubEmulator();
  routed = await startIotHubEmulator({
    name: "routed-hub",
    routes: { twinChangeEvents: true, deviceConnectionStateEvents: true },
  });
  trustCertificateAuthorityProcessWide(emulator.ca);
  trustCertificateAuthorityProcessWide(routed.ca);
});
afterAll(async () => {
  await Promise.all([emulator.close(), routed.close()]);
});
afterEach(async () => {
  await Promise.all(cleanups.splice(0).map((c) => c().catch(() => undefined)));
});

let deviceCounter = 0;
async function openDevice(on: IotHubEmulator): Promise<{ deviceId: string; client: DeviceClient }> {
  deviceCounter += 1;
  const deviceId = `eh-dev-${deviceCounter}`;
  const { connectionString } = on.addDevice(deviceId);
  const client = DeviceClient.fromConnectionString(connectionString, Mqtt);
  await client.setOptions({ ca: on.ca });
  await client.open();
  cleanups.push(() => client.close());
  return { deviceId, client };
}

function consumer(on: IotHubEmulator, connectionString = on.eventHubsConnectionString) {
  const client = new EventHubConsumerClient("$Default", connectionString, {
    customEndpointAddress: on.eventHubsEndpointAddress,
    retryOptions: { maxRetries: 0, timeoutInMs: 10_000 },
  });
  cleanups.push(() => client.close());
  return client;
}

/** Subscribes to every partition; `received` fills as events arrive. */
function collect(
  client: EventHubConsumerClient,
  startPosition = earliestEventPosition,
): { received: ReceivedEventData[]; errors: Error[]; attached: Set<string>; subscription: Subscription } {
  const received: ReceivedEventData[] = [];
  const errors: Error[] = [];
  /** Partitions whose reader returned a batch (an empty one after maxWaitTime): its link is attached. */
  const attached = new Set<string>();
  const subscription = client.subscribe(
    {
      processEvents: (events, context) => {
        attached.add(context.partitionId);
        received.push(...events);
        return Promise.resolve();
      },
      processError: (error) => {
        errors.push(error);
        return Promise.resolve();
      },
    },
    { startPosition, maxWaitTimeInSeconds: 1, skipParsingBodyAsJson: true },
  );
  cleanups.push(() => subscription.close());
  return { received, errors, attached, subscription };
}

function send(client: DeviceClient, body: string, properties: Record<string, string> = {}): Promise<unknown> {
  const message = new Message(body);
  for (const [key, value] of Object.entries(properties)) message.properties.add(key, value);
  return client.sendEvent(message);
}

const bodyOf = (e: ReceivedEventData) => Buffer.from(e.body as Uint8Array).toString();

describe("the Event Hubs-compatible endpoint", () => {
  it("delivers a device's message with its body, properties and IoT Hub's system properties", async () => {
    const { deviceId, client } = await openDevice(emulator);
    const message = new Message(JSON.stringify({ ack: "c-1" }));
    message.properties.add("devicelet-kind", "ack");
    message.messageId = "m-1";
    message.contentType = "application/json";
    await client.sendEvent(message);

    const { received } = collect(consumer(emulator));
    const event = await eventually(
      () => {
        const found = received.find((e) => e.systemProperties?.["iothub-connection-device-id"] === deviceId);
        if (found === undefined) throw new Error("not yet received");
        return found;
      },
      { timeoutMs: 20_000 },
    );

    expect(bodyOf(event)).toBe('{"ack":"c-1"}');
    expect(event.properties).toEqual({ "devicelet-kind": "ack" });
    expect(event.messageId).toBe("m-1");
    expect(event.contentType).toBe("application/json");
    expect(event.systemProperties?.["iothub-message-source"]).toBe("Telemetry");
    expect(typeof event.systemProperties?.["iothub-enqueuedtime"]).toBe("number");
    expect(event.sequenceNumber).toBeGreaterThanOrEqual(0);
    expect(event.enqueuedTimeUtc.getTime()).toBeLessThanOrEqual(Date.now());
  });

  it("answers the management reads the client makes", async () => {
    const client = consumer(emulator);
    const hub = await client.getEventHubProperties();
    expect(hub.name).toBe(emulator.name);
    expect(hub.partitionIds).toEqual(["0", "1"]);
    const { deviceId, client: device } = await openDevice(emulator);
    await send(device, "one");
    const partitionId = emulator.eventHubs.partitionOf(deviceId);
    const partition = await client.getPartitionProperties(partitionId);
    expect(partition.isEmpty).toBe(false);
    expect(partition.lastEnqueuedSequenceNumber).toBeGreaterThanOrEqual(partition.beginningSequenceNumber);
  });

  it("gives history from the earliest position and only new events from the latest", async () => {
    const { deviceId, client: device } = await openDevice(emulator);
    await send(device, "before");
    const fromEarliest = collect(consumer(emulator), earliestEventPosition);
    const fromLatest = collect(consumer(emulator), latestEventPosition);
    const mine = (list: ReceivedEventData[]) =>
      list.filter((e) => e.systemProperties?.["iothub-connection-device-id"] === deviceId).map(bodyOf);
    await eventually(() => expect(mine(fromEarliest.received)).toEqual(["before"]), { timeoutMs: 20_000 });
    await eventually(() => expect([...fromLatest.attached].sort()).toEqual(["0", "1"]), {
      timeoutMs: 20_000,
    });
    await send(device, "after");
    await eventually(() => expect(mine(fromEarliest.received)).toEqual(["before", "after"]), {
      timeoutMs: 20_000,
    });
    await eventually(() => expect(mine(fromLatest.received)).toEqual(["after"]), { timeoutMs: 20_000 });
  });

  it("refuses a token signed with the wrong key", async () => {
    const bad = emulator.eventHubsConnectionString.replace(
      /SharedAccessKey=[^;]+/,
      `SharedAccessKey=${Buffer.alloc(32, 7).toString("base64")}`,
    );
    await expect(consumer(emulator, bad).getEventHubProperties()).rejects.toThrow(/nauthori/);
  });

  it("routes twin change events only when enabled, with the reported patch", async () => {
    const plain = await openDevice(emulator);
    const withRoutes = await openDevice(routed);
    const onPlain = collect(consumer(emulator));
    const onRouted = collect(consumer(routed));
    for (const { client } of [plain, withRoutes]) {
      const twin = await client.getTwin();
      await new Promise<void>((resolve, reject) => {
        const reported = twin.properties.reported as { update(p: object, done: (err?: Error) => void): void };
        reported.update({ firmware: "1.2" }, (err) => (err ? reject(err) : resolve()));
      });
      await send(client, "marker");
    }
    const sources = (list: ReceivedEventData[], deviceId: string) =>
      list
        .filter((e) => e.systemProperties?.["iothub-connection-device-id"] === deviceId)
        .map((e) => String(e.systemProperties?.["iothub-message-source"]));
    // Each hub's marker arrives after its twin change (same device, same partition, in order).
    await eventually(() => expect(sources(onPlain.received, plain.deviceId)).toEqual(["Telemetry"]), {
      timeoutMs: 20_000,
    });
    await eventually(
      () =>
        expect(sources(onRouted.received, withRoutes.deviceId)).toEqual([
          "deviceConnectionStateEvents",
          "twinChangeEvents",
          "Telemetry",
        ]),
      { timeoutMs: 20_000 },
    );
    const change = onRouted.received.find(
      (e) => e.systemProperties?.["iothub-message-source"] === "twinChangeEvents",
    );
    expect(change?.properties).toMatchObject({
      opType: "updateTwin",
      deviceId: withRoutes.deviceId,
      hubName: "routed-hub",
      "iothub-message-schema": "twinChangeNotification",
    });
    expect(JSON.parse(bodyOf(change as ReceivedEventData))).toEqual({
      version: 2,
      properties: { reported: { firmware: "1.2", $version: 2 } },
    });
    // A desired change (the service's twin PATCH) routes its patch the same way.
    routed.hub.patchTwin(withRoutes.deviceId, { properties: { desired: { interval: 5 } } }, "*");
    const desired = await eventually(
      () => {
        const changes = onRouted.received.filter(
          (e) =>
            e.systemProperties?.["iothub-connection-device-id"] === withRoutes.deviceId &&
            e.systemProperties["iothub-message-source"] === "twinChangeEvents",
        );
        expect(changes).toHaveLength(2);
        return changes[1] as ReceivedEventData;
      },
      { timeoutMs: 20_000 },
    );
    expect(JSON.parse(bodyOf(desired))).toEqual({
      version: 3,
      properties: { desired: { interval: 5, $version: 2 } },
    });
    const connected = onRouted.received.find(
      (e) => e.systemProperties?.["iothub-message-source"] === "deviceConnectionStateEvents",
    );
    expect(connected?.properties?.opType).toBe("deviceConnected");
  });
});

/**
 * The same endpoint below the SDK, with rhea as a client: what the SDK's behaviour cannot show
 * (it buffers whatever arrives) — deliveries bounded by the credit granted, owner levels, and
 * links refused without a claim.
 */
describe("the endpoint's AMQP rules", () => {
  const audience = () => `sb://iothub-ns-${emulator.name}.servicebus.windows.net/${emulator.name}`;
  const address = (partitionId: string) =>
    `${emulator.name}/ConsumerGroups/$Default/Partitions/${partitionId}`;

  /** A Service Bus SAS token: HMAC-SHA256 keyed with the policy key's text. */
  function sasToken(resource: string): string {
    const sr = encodeURIComponent(resource);
    const se = Math.floor(Date.now() / 1000) + 600;
    const sig = createHmac("sha256", emulator.servicePolicy.key).update(`${sr}\n${se}`).digest("base64");
    return `SharedAccessSignature sr=${sr}&sig=${encodeURIComponent(sig)}&se=${se}&skn=iothubowner`;
  }

  async function connect(): Promise<Connection> {
    const connection = rhea.create_container().connect({
      host: "127.0.0.1",
      port: emulator.eventHubsPort,
      transport: "tls",
      ca: emulator.ca,
      servername: "localhost",
      username: "iothubowner",
      reconnect: false,
    });
    cleanups.push(async () => {
      connection.close();
      await new Promise((resolve) => connection.once("connection_close", resolve));
    });
    await new Promise((resolve) => connection.once("connection_open", resolve));
    return connection;
  }

  /** One request/response round trip on `node` (`$cbs` or `$management`). */
  async function request(
    connection: Connection,
    node: string,
    message: Record<string, unknown>,
  ): Promise<AmqpMessage> {
    const replyTo = `reply-${node}-${Math.random().toString(36).slice(2)}`;
    const receiver = connection.open_receiver({ source: { address: node }, name: replyTo });
    await new Promise((resolve) => receiver.once("receiver_open", resolve));
    const sender = connection.open_sender({ target: { address: node } });
    await new Promise((resolve) => sender.once("sendable", resolve));
    const answer = new Promise<AmqpMessage>((resolve) => {
      receiver.once("message", (context: EventContext) => resolve(context.message as AmqpMessage));
    });
    sender.send({ ...message, message_id: replyTo, reply_to: replyTo } as AmqpMessage);
    return within(answer, `the ${node} answer`);
  }

  async function putToken(connection: Connection, name: string): Promise<unknown> {
    const answer = await request(connection, "$cbs", {
      body: sasToken(name),
      application_properties: { operation: "put-token", name, type: "servicebus.windows.net:sastoken" },
    });
    return (answer.application_properties as Record<string, unknown>)["status-code"];
  }

  function openReader(
    connection: Connection,
    partitionId: string,
    o: { credit?: number; ownerLevel?: number } = {},
  ): { receiver: Receiver; bodies: string[]; closed: Promise<string> } {
    const receiver = connection.open_receiver({
      source: {
        address: address(partitionId),
        filter: {
          "apache.org:selector-filter:string": rhea.types.wrap_described(
            "amqp.annotation.x-opt-sequence-number >= '0'",
            0x468c00000004,
          ),
        },
      },
      credit_window: 0,
      autoaccept: true,
      ...(o.ownerLevel === undefined
        ? {}
        : { properties: { "com.microsoft:epoch": rhea.types.wrap_long(o.ownerLevel) } }),
    });
    const bodies: string[] = [];
    receiver.on("message", (context: EventContext) => {
      const body = (context.message as AmqpMessage).body as { content: Buffer };
      bodies.push(body.content.toString());
    });
    const closed = new Promise<string>((resolve) => {
      receiver.once("receiver_close", (context: EventContext) => {
        const error = context.receiver?.error as { condition?: string } | undefined;
        resolve(error?.condition ?? "closed");
      });
    });
    if (o.credit !== undefined) receiver.add_credit(o.credit);
    return { receiver, bodies, closed };
  }

  /** A round trip on the same connection: deliveries sent before it have arrived when it answers. */
  async function roundTrip(connection: Connection): Promise<void> {
    await request(connection, "$management", {
      application_properties: {
        operation: "READ",
        name: emulator.name,
        type: "com.microsoft:eventhub",
        security_token: sasToken(audience()),
      },
    });
  }

  it("delivers no more events than the credit the reader granted", async () => {
    const { deviceId, client } = await openDevice(emulator);
    for (let i = 0; i < 5; i += 1) await send(client, `c${i}`);
    const partitionId = emulator.eventHubs.partitionOf(deviceId);
    const connection = await connect();
    expect(await putToken(connection, audience())).toBe(202);
    const reader = openReader(connection, partitionId, { credit: 2 });
    await eventually(() => expect(reader.bodies.length).toBeGreaterThanOrEqual(2), { timeoutMs: 10_000 });
    await within(
      roundTrip(connection),
      "the management answer (held back behind deliveries without credit?)",
    );
    expect(reader.bodies).toHaveLength(2);
    reader.receiver.add_credit(100);
    await eventually(() => expect(reader.bodies.filter((b) => /^c\d$/.test(b))).toHaveLength(5), {
      timeoutMs: 10_000,
    });
  });

  it("lets a higher owner level take a partition and refuses a lower one", async () => {
    const connection = await connect();
    expect(await putToken(connection, audience())).toBe(202);
    const first = openReader(connection, "0", { ownerLevel: 1 });
    await new Promise((resolve) => first.receiver.once("receiver_open", resolve));
    const second = openReader(connection, "0", { ownerLevel: 2 });
    await new Promise((resolve) => second.receiver.once("receiver_open", resolve));
    expect(await within(first.closed, "the stolen link's close")).toBe("amqp:link:stolen");
    const third = openReader(connection, "0", { ownerLevel: 1 });
    expect(await within(third.closed, "the refusal")).toBe("com.microsoft:receiver-disconnected");
    expect(second.receiver.is_open()).toBe(true);
  });

  it("refuses a reader without a claim and a claim signed with another key", async () => {
    const connection = await connect();
    const reader = openReader(connection, "1");
    expect(await within(reader.closed, "the refusal")).toBe("amqp:unauthorized-access");
    const answer = await request(connection, "$cbs", {
      body: sasToken(audience()).replace(/sig=[^&]+/, "sig=AAAA"),
      application_properties: {
        operation: "put-token",
        name: audience(),
        type: "servicebus.windows.net:sastoken",
      },
    });
    expect((answer.application_properties as Record<string, unknown>)["status-code"]).toBe(401);
  });
});

/** `promise`, or a failure naming `what` after 10 s. */
async function within<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within 10 s`)), 10_000);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
