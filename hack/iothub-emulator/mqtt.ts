/**
 * The device side of the emulator: MQTT 3.1.1 over TLS as IoT Hub speaks it, on aedes.
 *
 * - CONNECT: client id = device id, username `{hostName}/{deviceId}/?api-version=…`, password a
 *   device SAS token; anything else gets CONNACK 5 (not authorized). A throttled connect gets
 *   CONNACK 3 (server unavailable). A second session for the same device closes the first.
 * - Subscriptions only to the IoT Hub topics (`$iothub/twin/res/#`,
 *   `$iothub/twin/PATCH/properties/desired/#`, `$iothub/methods/POST/#`,
 *   `devices/{id}/messages/devicebound/#`), granted at QoS 1 at most.
 * - Publishes only to `$iothub/twin/GET/?$rid=`, `$iothub/twin/PATCH/properties/reported/?$rid=[&$version=]`,
 *   `$iothub/methods/res/{status}/?$rid=` and `devices/{id}/messages/events/…`; QoS 2 or any
 *   other topic closes the connection, as the hub does. RETAIN is ignored: nothing is retained.
 * - What the hub sends one device (twin responses, desired patches, method requests) reaches that
 *   device only, whatever the topic filters of others.
 */
import { EventEmitter } from "node:events";
import type { AddressInfo } from "node:net";
import tls from "node:tls";
import { Aedes, type Client, type PublishPacket } from "aedes";
import { HubError, type Hub } from "./hub.ts";
import type { Json, JsonObject } from "./twin.ts";

/** A device-to-cloud message as the hub received it. */
export interface DeviceMessage {
  readonly deviceId: string;
  readonly body: Buffer;
  /** Application and system properties from the topic's property bag. */
  readonly properties: Readonly<Record<string, string>>;
}

interface Session {
  readonly client: Client;
  methodsSubscribed: boolean;
  readonly pendingMethods: Map<string, (answer: { status: number; payload: Json }) => void>;
}

export interface DeviceEndpoint {
  readonly port: number;
  /** `deviceMessage` (DeviceMessage). */
  readonly events: EventEmitter;
  close(): Promise<void>;
}

const ALLOWED_SUBSCRIPTIONS = [
  "$iothub/twin/res/#",
  "$iothub/twin/PATCH/properties/desired/#",
  "$iothub/methods/POST/#",
];

export async function startDeviceEndpoint(o: {
  hub: Hub;
  host: string;
  port: number;
  cert: string;
  key: string;
}): Promise<DeviceEndpoint> {
  const { hub } = o;
  const events = new EventEmitter();
  const sessions = new Map<string, Session>();
  /** Payload buffer of a packet the hub sends → the device it is for. */
  const recipients = new WeakMap<Buffer, string>();
  let methodCounter = 0;

  const aedes = await Aedes.createBroker({
    authenticate(client, username, password, done) {
      const deviceId = client.id;
      const ok =
        typeof username === "string" &&
        username.startsWith(`${hub.hostName}/${deviceId}/`) &&
        username.includes("api-version=") &&
        password !== undefined &&
        hub.authenticateDevice(deviceId, password.toString("utf8"));
      if (!ok) {
        done(null, false);
        return;
      }
      try {
        hub.consume("deviceConnect", "device");
      } catch {
        const error = Object.assign(new Error("throttled"), { returnCode: 3 });
        done(error, false);
        return;
      }
      done(null, true);
    },
    authorizeSubscribe(client, subscription, done) {
      const allowed =
        ALLOWED_SUBSCRIPTIONS.includes(subscription.topic) ||
        subscription.topic === `devices/${client.id}/messages/devicebound/#`;
      if (!allowed) {
        done(new Error(`subscription to ${subscription.topic} refused`), null);
        return;
      }
      done(null, { ...subscription, qos: subscription.qos > 1 ? 1 : subscription.qos });
    },
    authorizePublish(client, packet, done) {
      if (client === null) {
        done(null);
        return;
      }
      if (packet.qos > 1) {
        done(new Error("QoS 2 is not supported"));
        return;
      }
      packet.retain = false;
      try {
        onDevicePublish(client, packet);
        done(null);
      } catch (error) {
        done(error instanceof Error ? error : new Error(String(error)));
      }
    },
    authorizeForward(client, packet) {
      const recipient = recipients.get(packet.payload as Buffer);
      return recipient === undefined || recipient === client.id ? packet : null;
    },
  });

  const sendTo = (deviceId: string, topic: string, body: Json | undefined) => {
    const payload = Buffer.from(body === undefined ? "" : JSON.stringify(body));
    recipients.set(payload, deviceId);
    aedes.publish({ cmd: "publish", topic, payload, qos: 1, retain: false, dup: false }, () => undefined);
  };

  const onDevicePublish = (client: Client, packet: PublishPacket) => {
    const deviceId = client.id;
    hub.touch(deviceId);
    const [path = "", query = ""] = packet.topic.split("?", 2);
    const params = new URLSearchParams(query);
    const rid = params.get("$rid") ?? "";
    const twinReply = (work: () => { status: number; body?: Json; version?: number }) => {
      let reply: { status: number; body?: Json; version?: number };
      try {
        reply = work();
      } catch (error) {
        if (!(error instanceof HubError)) throw error;
        reply = { status: error.status, body: { errorCode: error.code, message: error.message } };
      }
      const version = reply.version === undefined ? "" : `&$version=${reply.version}`;
      sendTo(deviceId, `$iothub/twin/res/${reply.status}/?$rid=${rid}${version}`, reply.body);
    };
    if (path === "$iothub/twin/GET/") {
      twinReply(() => {
        hub.consume("twinRead", "device");
        return { status: 200, body: hub.deviceTwin(deviceId) };
      });
    } else if (path === "$iothub/twin/PATCH/properties/reported/") {
      twinReply(() => {
        hub.consume("twinUpdate", "device");
        const patch = parseObject(packet.payload);
        const base = params.get("$version");
        const version = hub.patchReported(deviceId, patch, base === null ? undefined : Number(base));
        return { status: 204, version };
      });
    } else if (path.startsWith("$iothub/methods/res/")) {
      const status = Number(path.slice("$iothub/methods/res/".length).replace(/\/$/, ""));
      const resolve = sessions.get(deviceId)?.pendingMethods.get(rid);
      if (resolve !== undefined && Number.isInteger(status)) {
        resolve({ status, payload: parseJson(packet.payload) });
      }
    } else if (path.startsWith(`devices/${deviceId}/messages/events/`)) {
      hub.consume("deviceToCloud", "device");
      const bag = new URLSearchParams(path.slice(`devices/${deviceId}/messages/events/`.length));
      const message: DeviceMessage = {
        deviceId,
        body: Buffer.from(packet.payload),
        properties: Object.fromEntries(bag),
      };
      events.emit("deviceMessage", message);
    } else {
      throw new Error(`publishing to ${packet.topic} is not allowed`);
    }
  };

  aedes.on("clientReady", (client) => {
    const session: Session = { client, methodsSubscribed: false, pendingMethods: new Map() };
    sessions.set(client.id, session);
    hub.setLink(client.id, {
      get acceptsMethods() {
        return sessions.get(client.id) === session && session.methodsSubscribed;
      },
      sendDesiredPatch: (patch: JsonObject) => {
        const version = typeof patch.$version === "number" ? patch.$version : 0;
        sendTo(client.id, `$iothub/twin/PATCH/properties/desired/?$version=${version}`, patch);
      },
      invokeMethod: (name, payload, timeoutMs) => {
        if (sessions.get(client.id) !== session || !session.methodsSubscribed) {
          // IoT Hub answers a device that is connected but not subscribed as if it were offline.
          return Promise.reject(new HubError(404, "DeviceNotOnline", `device '${client.id}' is not online`));
        }
        methodCounter += 1;
        const rid = methodCounter.toString(16);
        return new Promise((resolve, reject) => {
          const timer = setTimeout(() => {
            session.pendingMethods.delete(rid);
            reject(
              new HubError(
                504,
                "GatewayTimeout",
                `device '${client.id}' did not answer ${name} in ${timeoutMs} ms`,
              ),
            );
          }, timeoutMs);
          session.pendingMethods.set(rid, (answer) => {
            clearTimeout(timer);
            session.pendingMethods.delete(rid);
            resolve(answer);
          });
          sendTo(client.id, `$iothub/methods/POST/${name}/?$rid=${rid}`, payload);
        });
      },
    });
  });
  aedes.on("subscribe", (subscriptions, client) => {
    const session = sessions.get(client.id);
    if (session?.client === client && subscriptions.some((s) => s.topic === "$iothub/methods/POST/#")) {
      session.methodsSubscribed = true;
    }
  });
  aedes.on("clientDisconnect", (client) => {
    const session = sessions.get(client.id);
    if (session?.client !== client) return;
    sessions.delete(client.id);
    hub.setLink(client.id, undefined);
    for (const [rid, resolve] of session.pendingMethods) {
      session.pendingMethods.delete(rid);
      resolve({ status: 404, payload: { errorCode: "DeviceNotOnline", message: "device disconnected" } });
    }
  });

  const server = tls.createServer({ cert: o.cert, key: o.key }, (socket) => aedes.handle(socket));
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(o.port, o.host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;

  return {
    port,
    events,
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      await new Promise<void>((resolve) => aedes.close(() => resolve()));
      await closed;
    },
  };
}

function parseJson(payload: Buffer | string): Json {
  const text = payload.toString();
  if (text === "") return null;
  try {
    return JSON.parse(text) as Json;
  } catch {
    return text;
  }
}

function parseObject(payload: Buffer | string): JsonObject {
  let value: unknown;
  try {
    value = JSON.parse(payload.toString());
  } catch {
    throw new HubError(400, "ArgumentInvalid", "the body is not JSON");
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new HubError(400, "ArgumentInvalid", "the body is not a JSON object");
  }
  return value as JsonObject;
}
