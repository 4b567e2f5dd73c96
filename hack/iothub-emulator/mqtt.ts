/**
 * The device side of the emulator: MQTT 3.1.1 over TLS as IoT Hub speaks it, on aedes; and the
 * same broker behind MQTT over WebSockets (`wss://…/$iothub/websocket`, subprotocol `mqtt`) on a
 * port of its own, as the hub serves both on 8883 and 443.
 *
 * - TLS: both ports ask for a client certificate in the handshake and never fail it for lack of
 *   one (a SAS device has none); what was presented is checked at CONNECT.
 * - CONNECT: client id = device id, username `{hostName}/{deviceId}/?api-version=…`, and either a
 *   password that is a device SAS token (SAS identities) or no password and a client certificate
 *   that the identity admits (X.509: thumbprint, or issuing CA and CN, within its validity; see
 *   `Hub.authenticateCertificate`); anything else gets CONNACK 5 (not authorized). Over
 *   WebSockets, a request carrying `iothub-no-client-cert=true` declares it brings no
 *   certificate: one presented anyway is not considered. A throttled connect gets CONNACK 3
 *   (server unavailable). A second session for the same device closes the first.
 * - Subscriptions only to the IoT Hub topics (`$iothub/twin/res/#`,
 *   `$iothub/twin/PATCH/properties/desired/#`, `$iothub/methods/POST/#`,
 *   `devices/{id}/messages/devicebound/#`), granted at QoS 1 at most.
 * - Publishes only to `$iothub/twin/GET/?$rid=`, `$iothub/twin/PATCH/properties/reported/?$rid=[&$version=]`,
 *   `$iothub/methods/res/{status}/?$rid=` and `devices/{id}/messages/events/…`; QoS 2 or any
 *   other topic closes the connection, as the hub does. RETAIN is ignored: nothing is retained.
 * - What the hub sends one device (twin responses, desired patches, method requests) reaches that
 *   device only, whatever the topic filters of others.
 */
import type { X509Certificate } from "node:crypto";
import { EventEmitter } from "node:events";
import https from "node:https";
import type { AddressInfo } from "node:net";
import tls from "node:tls";
import { Aedes, type Client, type PublishPacket } from "aedes";
import { WebSocketServer, createWebSocketStream, type WebSocket } from "ws";
import { HubError, type Hub } from "./hub.ts";
import type { Json, JsonObject } from "./twin.ts";

/** A device-to-cloud message as the hub received it. */
export interface DeviceMessage {
  readonly deviceId: string;
  readonly body: Buffer;
  /** Application and system properties from the topic's property bag. */
  readonly properties: Readonly<Record<string, string>>;
}

/** A CONNECT the hub refused: CONNACK 5 (not authorized) or 3 (throttled). */
export interface RefusedConnect {
  /** The client id: the device id the connection claimed. */
  readonly deviceId: string;
  readonly returnCode: 3 | 5;
  /** Whether it presented a client certificate in the TLS handshake (one that was considered). */
  readonly certificate: boolean;
}

interface Session {
  readonly client: Client;
  methodsSubscribed: boolean;
  readonly pendingMethods: Map<string, (answer: { status: number; payload: Json }) => void>;
}

export interface DeviceEndpoint {
  /** MQTT over TLS. */
  readonly port: number;
  /** MQTT over WebSockets over TLS, path `/$iothub/websocket`. */
  readonly webSocketPort: number;
  /** `deviceMessage` (DeviceMessage), `connectRefused` (RefusedConnect). */
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
  webSocketPort: number;
  cert: string;
  key: string;
}): Promise<DeviceEndpoint> {
  const { hub } = o;
  /** The stream aedes reads a connection from → the client certificate its TLS session presented. */
  const clientCertificates = new WeakMap<object, X509Certificate>();
  const events = new EventEmitter();
  const sessions = new Map<string, Session>();
  /** Payload buffer of a packet the hub sends → the device it is for. */
  const recipients = new WeakMap<Buffer, string>();
  let methodCounter = 0;

  const aedes = await Aedes.createBroker({
    authenticate(client, username, password, done) {
      const deviceId = client.id;
      const certificate = clientCertificates.get(client.conn);
      const ok =
        typeof username === "string" &&
        username.startsWith(`${hub.hostName}/${deviceId}/`) &&
        username.includes("api-version=") &&
        (password === undefined
          ? certificate !== undefined && hub.authenticateCertificate(deviceId, certificate)
          : hub.authenticateDevice(deviceId, password.toString("utf8")));
      const refuse = (returnCode: 3 | 5) => {
        const refused: RefusedConnect = { deviceId, returnCode, certificate: certificate !== undefined };
        events.emit("connectRefused", refused);
      };
      if (!ok) {
        refuse(5);
        done(null, false);
        return;
      }
      try {
        hub.consume("deviceConnect", "device");
      } catch {
        refuse(3);
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

  // Ask for a client certificate, but let the handshake through without one or with one no CA
  // here vouches for (self-signed): the identity decides at CONNECT.
  const tlsOptions = { cert: o.cert, key: o.key, requestCert: true, rejectUnauthorized: false };
  const server = tls.createServer(tlsOptions, (socket) => {
    const certificate = socket.getPeerX509Certificate();
    if (certificate !== undefined) clientCertificates.set(socket, certificate);
    aedes.handle(socket);
  });
  const httpsServer = https.createServer(tlsOptions);
  const webSockets = new WebSocketServer({
    server: httpsServer,
    path: "/$iothub/websocket",
    handleProtocols: (protocols) => (protocols.has("mqtt") ? "mqtt" : false),
  });
  const open = new Set<WebSocket>();
  webSockets.on("connection", (ws, request) => {
    open.add(ws);
    ws.on("close", () => open.delete(ws));
    const stream = createWebSocketStream(ws);
    stream.on("error", () => undefined); // aedes sees the close; a reset is not an emulator error
    const query = new URL(request.url ?? "/", "https://hub").searchParams;
    const socket = request.socket;
    const certificate = socket instanceof tls.TLSSocket ? socket.getPeerX509Certificate() : undefined;
    if (certificate !== undefined && query.get("iothub-no-client-cert") !== "true")
      clientCertificates.set(stream, certificate);
    aedes.handle(stream);
  });
  const listen = (target: tls.Server, port: number) =>
    new Promise<number>((resolve, reject) => {
      target.once("error", reject);
      target.listen(port, o.host, () => resolve((target.address() as AddressInfo).port));
    });
  const [port, webSocketPort] = await Promise.all([
    listen(server, o.port),
    listen(httpsServer, o.webSocketPort),
  ]).catch(async (error: unknown) => {
    server.close();
    httpsServer.close();
    await new Promise<void>((resolve) => aedes.close(() => resolve()));
    throw error;
  });

  return {
    port,
    webSocketPort,
    events,
    async close() {
      const closed = Promise.all([
        new Promise<void>((resolve) => server.close(() => resolve())),
        new Promise<void>((resolve) => webSockets.close(() => resolve())),
        new Promise<void>((resolve) => httpsServer.close(() => resolve())),
      ]);
      await new Promise<void>((resolve) => aedes.close(() => resolve()));
      for (const ws of open) ws.terminate();
      httpsServer.closeAllConnections();
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
