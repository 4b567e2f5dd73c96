/**
 * The emulator's X.509 device authentication and its MQTT over WebSockets endpoint, against the
 * unmodified SDKs: `azure-iot-device` with `azure-iot-device-mqtt`'s `Mqtt` and `MqttWs`, and the
 * service SDK's `Registry`. Refusals are read where the hub makes them: the CONNACK code a plain
 * MQTT.js client gets, the refused CONNECTs the emulator reports, and the connection state the
 * service API shows.
 */
import azureIotDevice from "azure-iot-device";
import { Mqtt, MqttWs } from "azure-iot-device-mqtt";
import mqtt from "mqtt";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  createToken,
  makeCertificateAuthority,
  makeDeviceCertificate,
  startIotHubEmulator,
  type CertificateAndKey,
  type IotHubEmulator,
  type RefusedConnect,
} from "../../hack/iothub-emulator/index.ts";
import { emulatorRegistry } from "../../hack/iothub-emulator/service-sdk.ts";
import { eventually } from "../support/eventually.ts";

// CommonJS: its exports come as the default import.
const { Client, X509AuthenticationProvider } = azureIotDevice;
type Client = azureIotDevice.Client;

let emulator: IotHubEmulator;
/** Added to the real time on the emulator's clock (certificate validity). */
let clockOffsetMs = 0;
const openClients: Client[] = [];
const refusals: RefusedConnect[] = [];

beforeAll(async () => {
  emulator = await startIotHubEmulator({ now: () => Date.now() + clockOffsetMs });
  emulator.onConnectRefused((refused) => refusals.push(refused));
});
afterAll(async () => {
  await emulator.close();
});
afterEach(async () => {
  clockOffsetMs = 0;
  await Promise.all(openClients.splice(0).map((c) => c.close().catch(() => undefined)));
});

let counter = 0;
const nextId = () => `x509-${++counter}`;

/**
 * The SDK's X.509 client for a device of the emulator. `Client.fromConnectionString` drops
 * `GatewayHostName` when the string says `x509=true`, so the provider is built from its fields.
 */
async function openX509(
  deviceId: string,
  credentials: CertificateAndKey,
  transport: "mqtt" | "mqttWs" = "mqtt",
): Promise<Client> {
  const gateway = /GatewayHostName=([^;]+)/.exec(emulator.deviceConnectionString(deviceId, transport))?.[1];
  const provider = new X509AuthenticationProvider({
    host: emulator.hostName,
    deviceId,
    ...(gateway === undefined ? {} : { gatewayHostName: gateway }),
    x509: { cert: credentials.cert, key: credentials.key },
  });
  const client = Client.fromAuthenticationProvider(provider, transport === "mqtt" ? Mqtt : MqttWs);
  await client.setOptions({ ca: emulator.ca });
  openClients.push(client);
  await client.open();
  return client;
}

/** A plain MQTT.js CONNECT as IoT Hub wants it, with whatever credentials the test gives. */
async function rawConnect(o: {
  deviceId: string;
  url?: string;
  certificate?: CertificateAndKey;
  password?: string;
}): Promise<void> {
  const client = await mqtt.connectAsync(o.url ?? emulator.mqttUrl, {
    clientId: o.deviceId,
    username: `${emulator.hostName}/${o.deviceId}/?api-version=2021-04-12`,
    ...(o.password === undefined ? {} : { password: o.password }),
    ...(o.certificate === undefined ? {} : { cert: o.certificate.cert, key: o.certificate.key }),
    ca: emulator.ca,
    protocolVersion: 4,
    reconnectPeriod: 0,
    connectTimeout: 10_000,
  });
  await client.endAsync(true);
}

const identity = async (deviceId: string) => (await emulatorRegistry(emulator).get(deviceId)).responseBody;

describe("X.509 self-signed devices", () => {
  it("connect with a certificate whose SHA-1 or SHA-256 thumbprint the identity holds", async () => {
    const deviceId = nextId();
    const first = makeDeviceCertificate({ deviceId });
    const second = makeDeviceCertificate({ deviceId });
    const { connectionString } = emulator.addDevice(deviceId, {
      x509: { primaryThumbprint: first.thumbprint, secondaryThumbprint: second.thumbprint256.toLowerCase() },
    });
    expect(connectionString).toMatch(/;x509=true;/);
    expect(connectionString).not.toMatch(/SharedAccessKey/);

    const client = await openX509(deviceId, first);
    expect(await identity(deviceId)).toMatchObject({
      connectionState: "Connected",
      authentication: {
        type: "selfSigned",
        symmetricKey: { primaryKey: null, secondaryKey: null },
        x509Thumbprint: { primaryThumbprint: first.thumbprint },
      },
    });
    const twin = (await emulatorRegistry(emulator).getTwin(deviceId)).responseBody;
    expect(twin).toMatchObject({ authenticationType: "selfSigned" });
    await client.close();

    await openX509(deviceId, second);
    expect((await identity(deviceId)).connectionState).toBe("Connected");
  });

  it("refuse, with CONNACK 5, another certificate, none, an expired one and a SAS token", async () => {
    const deviceId = nextId();
    const good = makeDeviceCertificate({ deviceId });
    const expired = makeDeviceCertificate({ deviceId, days: -1 });
    emulator.addDevice(deviceId, {
      x509: { primaryThumbprint: good.thumbprint, secondaryThumbprint: expired.thumbprint },
    });
    const from = refusals.length;
    const token = createToken({
      resource: `${emulator.hostName}/devices/${deviceId}`,
      key: Buffer.alloc(32, 1).toString("base64"),
      expiry: Math.floor(Date.now() / 1000) + 600,
    });
    const attempts = [
      { certificate: makeDeviceCertificate({ deviceId }) },
      {},
      { certificate: expired },
      { password: token },
      { certificate: good, password: token },
    ];
    for (const attempt of attempts) {
      await expect(rawConnect({ deviceId, ...attempt })).rejects.toMatchObject({ code: 5 });
    }
    // The good certificate, three days on: past its end (it was made valid for two).
    clockOffsetMs = 3 * 24 * 3600 * 1000;
    await expect(rawConnect({ deviceId, certificate: good })).rejects.toMatchObject({ code: 5 });
    expect(refusals.slice(from)).toEqual(
      [true, false, true, false, true, true].map((certificate) => ({ deviceId, returnCode: 5, certificate })),
    );
    clockOffsetMs = 0;
    expect((await identity(deviceId)).connectionState).toBe("Disconnected");

    // The same certificate, the clock back: the refusals were the certificates and the clock.
    await rawConnect({ deviceId, certificate: good });
  });

  it("a SAS device is not admitted by a certificate: it still needs its token", async () => {
    const deviceId = nextId();
    emulator.addDevice(deviceId);
    await expect(
      rawConnect({ deviceId, certificate: makeDeviceCertificate({ deviceId }) }),
    ).rejects.toMatchObject({ code: 5 });
    expect((await identity(deviceId)).authentication).toMatchObject({ type: "sas" });
  });
});

describe("X.509 CA-signed devices", () => {
  it("connect with CN = the device id, issued by a CA the hub holds; another CN or CA is refused", async () => {
    const ca = makeCertificateAuthority("fleet CA");
    const stranger = makeCertificateAuthority("another CA");
    emulator.addCertificateAuthority(ca.cert);
    const deviceId = nextId();
    emulator.addDevice(deviceId, { x509: "certificateAuthority" });
    expect((await identity(deviceId)).authentication).toMatchObject({
      type: "certificateAuthority",
      x509Thumbprint: { primaryThumbprint: null, secondaryThumbprint: null },
    });

    const otherName = makeDeviceCertificate({ deviceId: `${deviceId}-not`, issuer: ca });
    const otherCa = makeDeviceCertificate({ deviceId, issuer: stranger });
    const selfSigned = makeDeviceCertificate({ deviceId });
    for (const certificate of [otherName, otherCa, selfSigned]) {
      await expect(rawConnect({ deviceId, certificate })).rejects.toMatchObject({ code: 5 });
    }
    expect((await identity(deviceId)).connectionState).toBe("Disconnected");

    await openX509(deviceId, makeDeviceCertificate({ deviceId, issuer: ca }));
    expect((await identity(deviceId)).connectionState).toBe("Connected");
  });
});

describe("X.509 identities through the service SDK", () => {
  it("creates selfSigned and certificateAuthority devices and rotates a thumbprint", async () => {
    const registry = emulatorRegistry(emulator);
    const [selfId, caId] = [nextId(), nextId()];
    const before = makeDeviceCertificate({ deviceId: selfId });
    const after = makeDeviceCertificate({ deviceId: selfId });
    // No `type`: the SDK infers `selfSigned` from the thumbprint, as the hub does.
    await registry.create({
      deviceId: selfId,
      authentication: { x509Thumbprint: { primaryThumbprint: before.thumbprint } },
    });
    await registry.create({ deviceId: caId, authentication: { type: "certificateAuthority" } });
    expect((await identity(selfId)).authentication).toMatchObject({
      type: "selfSigned",
      x509Thumbprint: { primaryThumbprint: before.thumbprint },
    });
    expect((await identity(caId)).authentication).toMatchObject({ type: "certificateAuthority" });
    await registry.update({
      deviceId: selfId,
      authentication: { type: "selfSigned", x509Thumbprint: { primaryThumbprint: after.thumbprint } },
    });
    await expect(rawConnect({ deviceId: selfId, certificate: before })).rejects.toMatchObject({ code: 5 });
    await openX509(selfId, after);
    expect((await identity(selfId)).connectionState).toBe("Connected");
  });
});

describe("MQTT over WebSockets", () => {
  it("carries the SDK's MqttWs with SAS: twin read, reported patch, desired patches", async () => {
    const deviceId = nextId();
    const { webSocketConnectionString } = emulator.addDevice(deviceId);
    const client = Client.fromConnectionString(webSocketConnectionString, MqttWs);
    await client.setOptions({ ca: emulator.ca });
    openClients.push(client);
    await client.open();
    expect((await identity(deviceId)).connectionState).toBe("Connected");

    const twin = await client.getTwin();
    const patches: Record<string, unknown>[] = [];
    twin.on("properties.desired", (patch: Record<string, unknown>) => patches.push(structuredClone(patch)));
    await new Promise<void>((resolve, reject) => {
      const reported = twin.properties.reported as { update(p: object, done: (err?: Error) => void): void };
      reported.update({ firmware: "2.0" }, (err) => (err ? reject(err) : resolve()));
    });
    const registry = emulatorRegistry(emulator);
    await registry.updateTwin(deviceId, { properties: { desired: { mode: "eco" } } }, "*");
    await eventually(() => expect(patches).toContainEqual({ mode: "eco", $version: 2 }), {
      timeoutMs: 10_000,
    });
    expect((await registry.getTwin(deviceId)).responseBody.properties.reported).toMatchObject({
      firmware: "2.0",
    });
  });

  it("carries X.509 too, unless the request says iothub-no-client-cert=true", async () => {
    const deviceId = nextId();
    const certificate = makeDeviceCertificate({ deviceId });
    emulator.addDevice(deviceId, { x509: { primaryThumbprint: certificate.thumbprint } });
    const client = await openX509(deviceId, certificate, "mqttWs");
    expect((await identity(deviceId)).connectionState).toBe("Connected");
    await client.close();

    const from = refusals.length;
    await expect(
      rawConnect({ deviceId, certificate, url: `${emulator.wsUrl}?iothub-no-client-cert=true` }),
    ).rejects.toMatchObject({ code: 5 });
    expect(refusals.slice(from)).toEqual([{ deviceId, returnCode: 5, certificate: false }]);
    await rawConnect({ deviceId, certificate, url: emulator.wsUrl });
  });
});
