/**
 * A local Azure IoT Hub emulator that the unmodified SDKs run against: device MQTT over TLS
 * (`azure-iot-device` with `azure-iot-device-mqtt`) and the service REST API over HTTPS (what
 * `azure-iothub` and devicelet's provider call), sharing one hub state. No public emulator exists;
 * docs/iothub.md ("The emulator") says what it models and what it does not.
 *
 * ```ts
 * const emulator = await startIotHubEmulator({ host: "127.0.0.1", port: 0 });
 * const { connectionString } = emulator.addDevice("dev-1");
 * const client = Client.fromConnectionString(connectionString, Mqtt);
 * await client.setOptions({ ca: emulator.ca }); // asynchronous: the SDK first tries `ca` as a file path
 * // … service side: emulator.serviceUrl, emulator.serviceToken(), emulator.serviceConnectionString
 * await emulator.close();
 * ```
 *
 * Pointing the SDKs at it: the device connection string carries
 * `GatewayHostName=127.0.0.1:{mqttPort}` — the device SDK connects to `mqtts://{GatewayHostName}`
 * while SAS resources and the MQTT username keep naming the hub's `HostName`. The serving
 * certificate is signed by a CA made at start (`ca`), which the device SDK takes through
 * `setOptions({ ca })`. The emulator owns its servers; `close()` stops them and ends every session.
 */
import { randomBytes } from "node:crypto";
import { Hub, type ThrottleRates } from "./hub.ts";
import { startDeviceEndpoint, type DeviceMessage } from "./mqtt.ts";
import { startServiceEndpoint } from "./rest.ts";
import { createToken } from "./sas.ts";
import { makePki } from "./tls.ts";

export { Hub, HubError, type OperationClass, type ThrottleRates } from "./hub.ts";
export type { DeviceMessage } from "./mqtt.ts";
export { createToken, parseToken } from "./sas.ts";
export { TWIN_LIMITS } from "./twin.ts";

export interface EmulatorOptions {
  /** The hub's name; its host name is `{name}.azure-devices.net` (never resolved). Default `devicelet-emulator`. */
  readonly name?: string;
  /** Listen address of both endpoints. Default 127.0.0.1. */
  readonly host?: string;
  /** MQTT (TLS) port; default 0 (the OS picks). */
  readonly mqttPort?: number;
  /** HTTPS port of the service API; default 0. */
  readonly port?: number;
  readonly throttle?: ThrottleRates;
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
  /** `https://{host}:{port}`: the service REST API. */
  readonly serviceUrl: string;
  /** Policy `iothubowner` and its key. */
  readonly servicePolicy: { readonly name: string; readonly key: string };
  /** `HostName=…;SharedAccessKeyName=iothubowner;SharedAccessKey=…` (the hub's name, not the URL). */
  readonly serviceConnectionString: string;
  /** A service SAS token for `Authorization`, valid `ttlSeconds` (default 3600). */
  serviceToken(ttlSeconds?: number): string;
  /** Creates a device with fresh keys; returns its primary key and its connection string. */
  addDevice(deviceId: string): { primaryKey: string; connectionString: string };
  /** The connection string of an existing device (primary key), pointing at this emulator. */
  deviceConnectionString(deviceId: string): string;
  /** Device-to-cloud messages as they arrive. */
  onDeviceMessage(listener: (message: DeviceMessage) => void): () => void;
  close(): Promise<void>;
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
  const primaryKeyOf = (deviceId: string) =>
    (hub.identity(deviceId).authentication as { symmetricKey: { primaryKey: string } }).symmetricKey
      .primaryKey;
  const deviceConnectionString = (deviceId: string) => {
    return [
      `HostName=${hostName}`,
      `DeviceId=${deviceId}`,
      `SharedAccessKey=${primaryKeyOf(deviceId)}`,
      `GatewayHostName=${host}:${device.port}`,
    ].join(";");
  };
  return {
    hub,
    name,
    hostName,
    ca: pki.ca,
    mqttPort: device.port,
    mqttUrl: `mqtts://${host}:${device.port}`,
    serviceUrl: `https://${host}:${service.port}`,
    servicePolicy,
    serviceConnectionString: `HostName=${hostName};SharedAccessKeyName=${servicePolicy.name};SharedAccessKey=${servicePolicy.key}`,
    serviceToken: (ttlSeconds = 3600) =>
      createToken({
        resource: hostName,
        key: servicePolicy.key,
        policy: servicePolicy.name,
        expiry: Math.floor(now() / 1000) + ttlSeconds,
      }),
    addDevice(deviceId) {
      hub.createDevice(deviceId);
      return { primaryKey: primaryKeyOf(deviceId), connectionString: deviceConnectionString(deviceId) };
    },
    deviceConnectionString,
    onDeviceMessage(listener) {
      device.events.on("deviceMessage", listener);
      return () => device.events.off("deviceMessage", listener);
    },
    async close() {
      await Promise.all([device.close(), service.close()]);
    },
  };
}
