/**
 * The MQTT provider through the engine layer of the conformance kit: the real engine in this
 * process against the real control plane, a real Mosquitto (persistence on) and simulated gateways
 * speaking the devicelet protocol. A device goes away as a real one does: its connection drops and
 * its will (MQTT 5 will delay, 1 s) tells the provider. What the broker retains is what a second
 * provider instance (the kit's devicelet restart) reads back.
 */
import { expect } from "vitest";
import type { Broker } from "../../hack/testenv/mosquitto.ts";
import { createMqttProvider, type MqttProvider } from "../../providers/mqtt/index.ts";
import { startSimulator, type Simulator } from "../../src/device/simulator.ts";
import { describeEngineConformance, type ProviderTarget } from "devicelet/provider/testing";
import { eventually } from "../support/eventually.ts";
import { startBroker, stopAll } from "../support/mqtt.ts";
import { testenvDir, uniqueName } from "../support/testenv.ts";

const id = uniqueName("kitmq");
const devices = [`${id}-gw-a`, `${id}-gw-b`] as const;
let broker: Broker | undefined;
let sim: Simulator | undefined;

const started = <T>(part: T | undefined, name: string): T => {
  if (part === undefined) throw new Error(`${name} not started`);
  return part;
};

const target: ProviderTarget<MqttProvider> = {
  name: "mqtt",
  devices,
  image: "example/app:1",
  setUp: async () => {
    broker = await startBroker(id);
    sim = await startSimulator({
      brokerUrl: broker.url,
      appStartMs: 100,
      devices: devices.map((d) => ({ id: d, kind: "gateway" as const })),
    });
  },
  tearDown: () =>
    stopAll(
      async () => sim?.stop(),
      async () => broker?.stop(),
    ),
  create: (context) =>
    createMqttProvider(
      {
        broker: {
          url: started(broker, "broker").url,
          clientId: `devicelet-${id}`,
          reconnect: { minDelayMs: 100, maxDelayMs: 2000 },
        },
        devices: { allow: [`${id}-*`] },
      },
      context,
    ),
  setDeviceOnline: async (provider, deviceId, online) => {
    const device = started(sim, "simulator").device(deviceId);
    await (online ? device.goOnline() : device.goOffline());
    await eventually(async () =>
      expect((await provider.listDevices()).find((d) => d.id === deviceId)?.connected).toBe(online),
    );
  },
};

describeEngineConformance(target, { controlPlaneDir: testenvDir });
