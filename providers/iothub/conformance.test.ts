/**
 * The IoT Hub provider against the contract layer of the conformance kit, with real parts and no
 * cluster: the local IoT Hub emulator (hack/iothub-emulator), its service API over HTTPS, and
 * simulated devices on the unmodified `azure-iot-device` SDK, each running the device session over
 * an IotHubLink. Taking a device away closes its client without a goodbye, as a lost network does:
 * its heartbeat stops and the hub marks it disconnected, which the provider reads as its will. The
 * kit's restarts find the pods again in the twins' desired documents and the kit's durable store.
 */
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startIotHubEmulator, type IotHubEmulator } from "../../hack/iothub-emulator/index.ts";
import { startSimulator, type Simulator } from "../../src/device/simulator.ts";
import { describeProviderContract, type ProviderTarget } from "../../src/testing/index.ts";
import { eventually } from "../../test/support/eventually.ts";
import { emulatorHubConfig } from "../../test/support/iothub-hub.ts";
import type { MqttProvider } from "../mqtt/provider.ts";
import { createIotHubProvider } from "./index.ts";

const devices = ["kit-hub-0", "kit-hub-1"] as const;

function iothubTarget(): ProviderTarget<MqttProvider> {
  let emulator: IotHubEmulator | undefined;
  let sim: Simulator | undefined;
  let caFile = "";
  const started = <T>(part: T | undefined, name: string): T => {
    if (part === undefined) throw new Error(`iothub conformance: no ${name} (setUp did not run)`);
    return part;
  };
  return {
    name: "iothub (local emulator, azure-iot-device)",
    devices,
    image: "example/app:1",
    patienceMs: 15_000,
    // Logs and exec sessions are not carried over IoT Hub (docs/iothub.md): refusals only.
    capabilities: { logs: false },
    async setUp() {
      emulator = await startIotHubEmulator({ host: "127.0.0.1" });
      caFile = join(mkdtempSync(join(tmpdir(), "devicelet-iothub-contract-")), "hub-ca.pem");
      writeFileSync(caFile, emulator.ca);
      const hub = emulator;
      sim = await startSimulator({
        iothub: {
          connectionString: (id) => hub.addDevice(id).connectionString,
          ca: hub.ca,
          heartbeatSeconds: 5,
        },
        devices: devices.map((id) => ({ id, kind: "gateway" as const })),
        appStartMs: 20,
        reportCoalesceMs: 5,
      });
    },
    async tearDown() {
      await sim?.stop();
      await emulator?.close();
    },
    create: (context) => {
      const hub = started(emulator, "emulator");
      return createIotHubProvider(
        {
          hub: emulatorHubConfig(hub, caFile),
          devices: { allow: ["kit-*"] },
          desired: { readbackTimeoutMs: 10_000 },
        },
        context,
      );
    },
    async setDeviceOnline(provider, deviceId, online) {
      const device = started(sim, "simulator").device(deviceId);
      if (device.online !== online) await (online ? device.goOnline() : device.goOffline());
      await eventually(
        async () => {
          const info = (await provider.listDevices()).find((d) => d.id === deviceId);
          if (info?.connected !== online)
            throw new Error(`${deviceId}: connected=${String(info?.connected)}`);
        },
        { timeoutMs: 20_000, intervalMs: 50 },
      );
    },
  };
}

describeProviderContract(iothubTarget());
