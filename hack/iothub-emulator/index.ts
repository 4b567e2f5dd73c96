/**
 * A local Azure IoT Hub emulator that the unmodified SDKs run against: device MQTT over TLS and
 * over WebSockets (`azure-iot-device` with `azure-iot-device-mqtt`'s `Mqtt` and `MqttWs`), devices
 * authenticated by SAS or X.509, and the service REST API over HTTPS (what
 * `azure-iothub` and devicelet's provider call), sharing one hub state. No public emulator exists;
 * docs/iothub.md ("The emulator") says what it models and what it does not.
 *
 * ```ts
 * const emulator = await startIotHubEmulator({ host: "127.0.0.1", port: 0 });
 * const { connectionString } = emulator.addDevice("dev-1");
 * const client = Client.fromConnectionString(connectionString, Mqtt);
 * await client.setOptions({ ca: emulator.ca }); // asynchronous: the SDK first tries `ca` as a file path
 * // … service side: emulator.serviceUrl, emulator.serviceToken(), emulator.serviceConnectionString
 * // … events: new EventHubConsumerClient("$Default", emulator.eventHubsConnectionString,
 * //              { customEndpointAddress: emulator.eventHubsEndpointAddress }) (see event-hubs.ts)
 * await emulator.close();
 * ```
 *
 * Pointing the SDKs at it: the device connection string carries
 * `GatewayHostName=127.0.0.1:{mqttPort}` — the device SDK connects to `mqtts://{GatewayHostName}`
 * while SAS resources and the MQTT username keep naming the hub's `HostName`. `MqttWs` always
 * appends `:443/$iothub/websocket` to the gateway name, so `webSocketConnectionString` names
 * `GatewayHostName=127.0.0.1:{wsPort}/$iothub/websocket#`: the `#` turns the SDK's suffix into a
 * URL fragment, which no WebSocket request carries. The serving certificate is signed by a CA made
 * at start (`ca`), which the device SDK takes through `setOptions({ ca })`. The emulator owns its
 * servers; `close()` stops them and ends every session.
 *
 * X.509 devices: `addDevice(id, { x509: { primaryThumbprint } })` (self-signed) or
 * `addDevice(id, { x509: "certificateAuthority" })` after `addCertificateAuthority(caPem)`; tls.ts
 * makes the certificates. Their connection strings say `x509=true` and carry no key.
 */
import { randomBytes } from "node:crypto";
import {
  routeChange,
  routeDeviceMessage,
  startEventHubsEndpoint,
  type EventHubsEndpoint,
  type Routes,
} from "./event-hubs.ts";
import { Hub, type AuthenticationChange, type ThrottleRates } from "./hub.ts";
import { startDeviceEndpoint, type DeviceMessage, type RefusedConnect } from "./mqtt.ts";
import { startServiceEndpoint } from "./rest.ts";
import { createToken } from "./sas.ts";
import { makePki } from "./tls.ts";

export {
  Hub,
  HubError,
  type DeviceAuthentication,
  type HubChange,
  type OperationClass,
  type ThrottleRates,
} from "./hub.ts";
export {
  makeCertificateAuthority,
  makeDeviceCertificate,
  type CertificateAndKey,
  type DeviceCertificate,
} from "./tls.ts";
export type { EventHubsEndpoint, Routes } from "./event-hubs.ts";
export type { DeviceMessage, RefusedConnect } from "./mqtt.ts";
export { createToken, parseToken } from "./sas.ts";
export { TWIN_LIMITS } from "./twin.ts";

export interface EmulatorOptions {
  /** The hub's name; its host name is `{name}.azure-devices.net` (never resolved). Default `devicelet-emulator`. */
  readonly name?: string;
  /** Listen address of both endpoints. Default 127.0.0.1. */
  readonly host?: string;
  /** MQTT (TLS) port; default 0 (the OS picks). */
  readonly mqttPort?: number;
  /** MQTT over WebSockets (HTTPS) port, the hub's 443; default 0. */
  readonly wsPort?: number;
  /** HTTPS port of the service API; default 0. */
  readonly port?: number;
  readonly throttle?: ThrottleRates;
  /** AMQP (TLS) port of the Event Hubs-compatible endpoint; default 0. */
  readonly eventHubsPort?: number;
  /** Its AMQP over WebSockets (HTTPS) port; default 0. */
  readonly eventHubsWebSocketPort?: number;
  /** Partitions of the built-in endpoint (default 2) and events kept per partition (default 1000). */
  readonly eventHubs?: {
    readonly partitionCount?: number;
    readonly retention?: number;
    /** Consumer groups besides `$Default`. */
    readonly consumerGroups?: readonly string[];
  };
  /** Non-telemetry events routed to the built-in endpoint; none by default, as on a hub without routes. */
  readonly routes?: Routes;
  /** Milliseconds since the epoch, for SAS expiry and throttling. */
  readonly now?: () => number;
}

export interface IotHubEmulator {
  readonly hub: Hub;
  readonly name: string;
  /** `{name}.azure-devices.net`: what SAS tokens and MQTT usernames name. */
  readonly hostName: string;
  /** PEM of the CA that signed both endpoints' certificates. */
  readonly ca: string;
  readonly mqttPort: number;
  /** `mqtts://{host}:{mqttPort}`. */
  readonly mqttUrl: string;
  readonly wsPort: number;
  /** `wss://{host}:{wsPort}/$iothub/websocket`: MQTT over WebSockets, subprotocol `mqtt`. */
  readonly wsUrl: string;
  /** `https://{host}:{port}`: the service REST API. */
  readonly serviceUrl: string;
  /** Policy `iothubowner` and its key. */
  readonly servicePolicy: { readonly name: string; readonly key: string };
  /** `HostName=…;SharedAccessKeyName=iothubowner;SharedAccessKey=…` (the hub's name, not the URL). */
  readonly serviceConnectionString: string;
  /** A service SAS token for `Authorization`, valid `ttlSeconds` (default 3600). */
  serviceToken(ttlSeconds?: number): string;
  /**
   * Creates a device with fresh keys; returns its primary key and its connection strings: for
   * `Mqtt`, and for `MqttWs` (see the module comment).
   */
  addDevice(deviceId: string): AddedDevice & { primaryKey: string };
  /**
   * Creates an X.509 device: `selfSigned` with the given thumbprints (SHA-1 or SHA-256 hex of the
   * DER certificate), or `certificateAuthority` (a certificate with CN = `deviceId` issued by a CA
   * given to {@link addCertificateAuthority}). Its connection strings say `x509=true`.
   */
  addDevice(deviceId: string, o: { x509: X509Identity }): AddedDevice;
  /**
   * The connection string of an existing device (SAS: its primary key; X.509: `x509=true`),
   * pointing at this emulator's MQTT port, or its WebSocket port for `mqttWs`.
   */
  deviceConnectionString(deviceId: string, transport?: "mqtt" | "mqttWs"): string;
  /** Trusts a CA (PEM) to issue the certificates of `certificateAuthority` devices. */
  addCertificateAuthority(pem: string): void;
  /** The built-in Event Hubs-compatible endpoint (device telemetry and routed events). */
  readonly eventHubs: EventHubsEndpoint;
  readonly eventHubsPort: number;
  /**
   * `Endpoint=sb://{namespace}.servicebus.windows.net/;SharedAccessKeyName=iothubowner;
   * SharedAccessKey=…;EntityPath={name}`: the built-in endpoint's connection string. The host is
   * never resolved: clients pass `customEndpointAddress: eventHubsEndpointAddress`.
   */
  readonly eventHubsConnectionString: string;
  /** `amqps://{host}:{eventHubsPort}`. */
  readonly eventHubsEndpointAddress: string;
  /**
   * `https://{host}:{port}`: the custom endpoint address for AMQP over WebSockets, the one transport
   * where the client takes a CA (`webSocketOptions.webSocketConstructorOptions.ca`).
   */
  readonly eventHubsWebSocketEndpointAddress: string;
  /** Device-to-cloud messages as they arrive. */
  onDeviceMessage(listener: (message: DeviceMessage) => void): () => void;
  /** Each CONNECT refused (CONNACK 5 or 3), on either device port; returns an unsubscribe. */
  onConnectRefused(listener: (refused: RefusedConnect) => void): () => void;
  close(): Promise<void>;
}

/** How an X.509 device authenticates: its own certificates' thumbprints, or a CA the hub trusts. */
export type X509Identity =
  { readonly primaryThumbprint: string; readonly secondaryThumbprint?: string } | "certificateAuthority";

export interface AddedDevice {
  /** For `Mqtt`: `HostName=…;DeviceId=…;{SharedAccessKey=… | x509=true};GatewayHostName={host}:{mqttPort}`. */
  readonly connectionString: string;
  /** The same for `MqttWs`, its gateway name pointing at `wsPort`. */
  readonly webSocketConnectionString: string;
}

export async function startIotHubEmulator(o: EmulatorOptions = {}): Promise<IotHubEmulator> {
  const name = o.name ?? "devicelet-emulator";
  const hostName = `${name}.azure-devices.net`;
  const host = o.host ?? "127.0.0.1";
  const now = o.now ?? Date.now;
  const servicePolicy = { name: "iothubowner", key: randomBytes(32).toString("base64") };
  const hub = new Hub({
    hostName,
    policies: new Map([[servicePolicy.name, servicePolicy.key]]),
    now,
    ...(o.throttle === undefined ? {} : { throttle: o.throttle }),
  });
  const pki = makePki(hostName);
  const device = await startDeviceEndpoint({
    hub,
    host,
    port: o.mqttPort ?? 0,
    webSocketPort: o.wsPort ?? 0,
    cert: pki.cert,
    key: pki.key,
  });
  const service = await startServiceEndpoint({
    hub,
    host,
    port: o.port ?? 0,
    cert: pki.cert,
    key: pki.key,
  }).catch(async (error: unknown) => {
    await device.close();
    throw error;
  });
  const eventHubs = await startEventHubsEndpoint({
    host,
    port: o.eventHubsPort ?? 0,
    webSocketPort: o.eventHubsWebSocketPort ?? 0,
    cert: pki.cert,
    key: pki.key,
    namespace: `iothub-ns-${name}`,
    hubName: name,
    policies: new Map([[servicePolicy.name, servicePolicy.key]]),
    now,
    ...o.eventHubs,
  }).catch(async (error: unknown) => {
    await Promise.all([device.close(), service.close()]);
    throw error;
  });
  const routes: Routes = o.routes ?? {};
  device.events.on("deviceMessage", (message: DeviceMessage) => {
    const generationId = hub.hasDevice(message.deviceId)
      ? hub.identity(message.deviceId).generationId
      : undefined;
    eventHubs.append(
      routeDeviceMessage(message, { generationId: typeof generationId === "string" ? generationId : "" }),
    );
  });
  hub.onChange((change) => {
    const event = routeChange(change, { routes, hubName: name, now: now() });
    if (event !== undefined) eventHubs.append(event);
  });
  const primaryKeyOf = (deviceId: string) =>
    (hub.identity(deviceId).authentication as { symmetricKey: { primaryKey: string | null } }).symmetricKey
      .primaryKey;
  const deviceConnectionString = (deviceId: string, transport: "mqtt" | "mqttWs" = "mqtt") => {
    const key = primaryKeyOf(deviceId);
    return [
      `HostName=${hostName}`,
      `DeviceId=${deviceId}`,
      key === null ? "x509=true" : `SharedAccessKey=${key}`,
      transport === "mqtt"
        ? `GatewayHostName=${host}:${device.port}`
        : `GatewayHostName=${host}:${device.webSocketPort}/$iothub/websocket#`,
    ].join(";");
  };
  const addDevice = (deviceId: string, x509?: X509Identity) => {
    const authentication: AuthenticationChange =
      x509 === undefined
        ? {}
        : x509 === "certificateAuthority"
          ? { type: x509 }
          : { type: "selfSigned", ...x509 };
    hub.createDevice(deviceId, authentication);
    return {
      connectionString: deviceConnectionString(deviceId),
      webSocketConnectionString: deviceConnectionString(deviceId, "mqttWs"),
    };
  };
  return {
    hub,
    name,
    hostName,
    ca: pki.ca,
    mqttPort: device.port,
    mqttUrl: `mqtts://${host}:${device.port}`,
    wsPort: device.webSocketPort,
    wsUrl: `wss://${host}:${device.webSocketPort}/$iothub/websocket`,
    serviceUrl: `https://${host}:${service.port}`,
    servicePolicy,
    eventHubs,
    eventHubsPort: eventHubs.port,
    eventHubsConnectionString: `Endpoint=${eventHubs.endpoint};SharedAccessKeyName=${servicePolicy.name};SharedAccessKey=${servicePolicy.key};EntityPath=${name}`,
    eventHubsEndpointAddress: `amqps://${host}:${eventHubs.port}`,
    eventHubsWebSocketEndpointAddress: `https://${host}:${eventHubs.webSocketPort}`,
    serviceConnectionString: `HostName=${hostName};SharedAccessKeyName=${servicePolicy.name};SharedAccessKey=${servicePolicy.key}`,
    serviceToken: (ttlSeconds = 3600) =>
      createToken({
        resource: hostName,
        key: servicePolicy.key,
        policy: servicePolicy.name,
        expiry: Math.floor(now() / 1000) + ttlSeconds,
      }),
    addDevice: ((deviceId: string, o?: { x509: X509Identity }) => {
      const added = addDevice(deviceId, o?.x509);
      const primaryKey = primaryKeyOf(deviceId);
      return primaryKey === null ? added : { ...added, primaryKey };
    }) as IotHubEmulator["addDevice"],
    deviceConnectionString,
    addCertificateAuthority: (pem) => hub.addCertificateAuthority(pem),
    onDeviceMessage(listener) {
      device.events.on("deviceMessage", listener);
      return () => device.events.off("deviceMessage", listener);
    },
    onConnectRefused(listener) {
      device.events.on("connectRefused", listener);
      return () => device.events.off("connectRefused", listener);
    },
    async close() {
      await Promise.all([device.close(), service.close(), eventHubs.close()]);
    },
  };
}
