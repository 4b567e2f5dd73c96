/**
 * The IoT Hub provider through the engine layer of the conformance kit: the real engine in this
 * process against the real control plane, the local IoT Hub emulator (service API over HTTPS,
 * device MQTT over TLS) and simulated devices on the unmodified `azure-iot-device` SDK. A device
 * goes away as a real one does: its client closes without a goodbye, the hub marks it
 * disconnected, and the provider reads its will from the twin. What the twins hold is what a second
 * provider instance (the kit's devicelet restart) reads back.
 */
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect } from "vitest";
import { startIotHubEmulator, type IotHubEmulator } from "../../hack/iothub-emulator/index.ts";
import { createIotHubProvider } from "../../providers/iothub/index.ts";
import type { MqttProvider } from "../../providers/mqtt/index.ts";
import { startSimulator, type Simulator } from "../../src/device/simulator.ts";
import { describeEngineConformance, type ProviderTarget } from "devicelet/provider/testing";
import { eventually } from "../support/eventually.ts";
import { emulatorHubConfig } from "../support/iothub-hub.ts";
import { stopAll } from "../support/mqtt.ts";
import { testenvDir, uniqueName } from "../support/testenv.ts";

const id = uniqueName("kithub");
const devices = [`${id}-dev-a`, `${id}-dev-b`] as const;
let emulator: IotHubEmulator | undefined;
let sim: Simulator | undefined;
let caFile = "";

const started = <T>(part: T | undefined, name: string): T => {
  if (part === undefined) throw new Error(`${name} not started`);
  return part;
};

const target: ProviderTarget<MqttProvider> = {
  name: "iothub",
  devices,
  image: "example/app:1",
  setUp: async () => {
    const hub = (emulator = await startIotHubEmulator({ host: "127.0.0.1" }));
    caFile = join(mkdtempSync(join(tmpdir(), `${id}-`)), "hub-ca.pem");
    writeFileSync(caFile, hub.ca);
    sim = await startSimulator({
      iothub: { connectionString: (d) => hub.addDevice(d).connectionString, ca: hub.ca, heartbeatSeconds: 5 },
      appStartMs: 100,
      devices: devices.map((d) => ({ id: d, kind: "gateway" as const })),
    });
  },
  tearDown: () =>
    stopAll(
      async () => sim?.stop(),
      async () => emulator?.close(),
    ),
  create: (context) => {
    const hub = started(emulator, "emulator");
    return createIotHubProvider(
      {
        hub: emulatorHubConfig(hub, caFile),
        devices: { ids: [...devices] },
      },
      context,
    );
  },
  setDeviceOnline: async (provider, deviceId, online) => {
    const device = started(sim, "simulator").device(deviceId);
    await (online ? device.goOnline() : device.goOffline());
    await eventually(async () =>
      expect((await provider.listDevices()).find((d) => d.id === deviceId)?.connected).toBe(online),
    );
  },
};

describeEngineConformance(target, { controlPlaneDir: testenvDir });
