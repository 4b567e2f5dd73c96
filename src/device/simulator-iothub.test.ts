/**
 * The simulator over Azure IoT Hub: every simulated device a DeviceSession on an IotHubLink, against
 * the local emulator with the real `azure-iot-device` clients. The service side is played with plain
 * twin PATCHes on the emulator's hub, and every assertion reads the hub's twin (reported section,
 * connection state) or the simulated device's own counters, never the link's internals.
 */
import { spawn } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import {
  makeDeviceCertificate,
  startIotHubEmulator,
  type DeviceCertificate,
  type IotHubEmulator,
} from "../../hack/iothub-emulator/index.ts";
import { encodeMessage } from "../protocol/codec.ts";
import type { DesiredDocument, PresenceMessage, ReportedDocument } from "../protocol/types.ts";
import { desiredDocument, desiredPod } from "./fixtures.ts";
import { decodeTwinDocument, encodeTwinDocument, IOTHUB_MAPPING } from "./iothub-link.ts";
import { fleetSpec, startSimulator, type Simulator } from "./simulator.ts";

const logger = pino({ level: "silent" });
const until = <T>(probe: () => T | Promise<T>) => vi.waitFor(probe, { timeout: 15_000, interval: 50 });
/** The scale the simulator must start on 2 cores: about 2 s at the default 50 connects per second. */
const FLEET = 100;

let emulator: IotHubEmulator;
let sim: Simulator;
beforeAll(async () => {
  emulator = await startIotHubEmulator({ host: "127.0.0.1" });
  sim = await startSimulator({
    iothub: {
      connectionString: (id) => emulator.addDevice(id).connectionString,
      ca: emulator.ca,
      reconnectMs: 100,
    },
    // Standalone gateways too: over IoT Hub they announce no logs or exec.
    devices: fleetSpec({ gateways: 2, childrenPerGateway: 0, mcus: FLEET - 2, prefix: "hub" }),
    reportCoalesceMs: 5,
    logger,
  });
}, 60_000);
afterAll(async () => {
  await sim.stop();
  await emulator.close();
});

/** A reported `devicelet*` value of the twin, decoded; undefined when absent. */
function reportedKey(deviceId: string, key: string): unknown {
  const reported = emulator.hub.twin(deviceId).properties as { reported: Record<string, unknown> };
  const text = decodeTwinDocument(reported.reported[key]);
  return text === undefined ? undefined : JSON.parse(text);
}
const state = (id: string) => reportedKey(id, IOTHUB_MAPPING.reported.state) as PresenceMessage | undefined;
const report = (id: string) =>
  reportedKey(id, IOTHUB_MAPPING.reported.reported) as ReportedDocument | undefined;
const connectionState = (id: string) => emulator.hub.twin(id).connectionState;

/** What the provider does: the whole document under the desired key, as a service twin PATCH. */
function writeDesired(doc: DesiredDocument): void {
  const twin = emulator.hub.twin(doc.deviceId) as {
    etag: string;
    properties: { desired: Record<string, unknown> };
  };
  const previous = twin.properties.desired[IOTHUB_MAPPING.desiredKey] as { n?: number } | undefined;
  const value = encodeTwinDocument(encodeMessage(doc).toString(), previous?.n ?? 0);
  emulator.hub.patchTwin(
    doc.deviceId,
    { properties: { desired: { [IOTHUB_MAPPING.desiredKey]: value } } },
    twin.etag,
  );
}

/** Waits until the hub's reported document shows `generation` applied with `uid` running. */
async function appliedAndRunning(deviceId: string, generation: number, uid: string): Promise<void> {
  await until(() => {
    expect(report(deviceId)).toMatchObject({
      appliedGeneration: generation,
      pods: [{ uid, phase: "Running", apps: [{ name: "main", status: { state: "running" } }] }],
    });
  });
}

describe("the simulator over IoT Hub", () => {
  it("brings every device online: connected, with an online birth in its twin that announces no logs or exec", () => {
    expect(sim.devices.size).toBe(FLEET);
    for (const d of sim.devices.values()) {
      expect(d.online).toBe(true);
      expect(connectionState(d.id)).toBe("Connected");
      const birth = state(d.id);
      expect(birth).toMatchObject({ state: "online", bootId: d.bootId });
      expect(birth?.device?.capabilities).toMatchObject({ logs: false, exec: false });
    }
    expect(state("hub-gw-0")?.device).toMatchObject({ deviceClass: "gateway" });
  });

  it("applies a desired document written by a service twin PATCH exactly once and reports it", async () => {
    const id = "hub-mcu-0";
    writeDesired(desiredDocument({ deviceId: id, generation: 1, pods: [desiredPod({ uid: "a1" })] }));
    await appliedAndRunning(id, 1, "a1");
    expect(sim.device(id).runningPods()).toEqual(["a1"]);
    expect(sim.device(id).appliedGenerations).toEqual([{ epoch: "epoch-1", generation: 1 }]);
    expect(sim.device(id).applies).toBe(1);
  });

  it("goOffline disconnects with the birth left standing; goOnline reads the twin and applies what changed meanwhile once", async () => {
    const id = "hub-mcu-1";
    const device = sim.device(id);
    writeDesired(desiredDocument({ deviceId: id, generation: 1, pods: [desiredPod({ uid: "b1" })] }));
    await appliedAndRunning(id, 1, "b1");
    const bootId = device.bootId;

    await device.goOffline();
    expect(device.online).toBe(false);
    await until(() => expect(connectionState(id)).toBe("Disconnected"));
    // Abrupt: no `offline` is written; the provider takes the will once the heartbeat is stale.
    expect(state(id)).toMatchObject({ state: "online", bootId });
    expect(reportedKey(id, IOTHUB_MAPPING.reported.will)).toMatchObject({
      state: "lost",
      bootId,
    });

    // Sent while nobody listens: the hub does not queue it, the device must read the twin.
    writeDesired(desiredDocument({ deviceId: id, generation: 2, pods: [desiredPod({ uid: "b2" })] }));
    expect(device.applies).toBe(1);

    await device.goOnline();
    expect(connectionState(id)).toBe("Connected");
    await appliedAndRunning(id, 2, "b2");
    expect(device.runningPods()).toEqual(["b2"]);
    expect(device.appliedGenerations.map((g) => g.generation)).toEqual([1, 2]);
    expect(device.applies).toBe(2);
    expect(device.bootId).toBe(bootId);
  });

  it("keeps what it applied across a reboot without applying it again", async () => {
    const id = "hub-gw-1";
    const device = sim.device(id);
    writeDesired(desiredDocument({ deviceId: id, generation: 1, pods: [desiredPod({ uid: "c1" })] }));
    await appliedAndRunning(id, 1, "c1");
    const before = device.bootId;

    await device.reboot();
    await until(() => {
      expect(device.online).toBe(true);
      expect(state(id)).toMatchObject({ state: "online", bootId: device.bootId });
    });
    expect(device.bootId).not.toBe(before);
    await until(() => expect(report(id)).toMatchObject({ bootId: device.bootId, appliedGeneration: 1 }));
    expect(device.runningPods()).toEqual(["c1"]);
    expect(device.applies).toBe(1);
  });

  it("sleeps with `sleeping` in its twin and wakes on goOnline", async () => {
    const id = "hub-mcu-2";
    const device = sim.device(id);
    await device.sleep(new Date(Date.now() + 3_600_000));
    await until(() => expect(connectionState(id)).toBe("Disconnected"));
    expect(state(id)).toMatchObject({ state: "sleeping", bootId: device.bootId });
    await device.goOnline();
    expect(state(id)).toMatchObject({ state: "online", bootId: device.bootId });
  });
});

describe("startSimulator with an IoT Hub target", () => {
  it("refuses a fleet with children behind gateways, and a target that is not exactly one of broker and hub", async () => {
    // Registers each device it is asked for: nothing may be registered when the spec is refused.
    const connectionString = (id: string) => emulator.addDevice(id).connectionString;
    await expect(
      startSimulator({
        iothub: { connectionString },
        devices: fleetSpec({ gateways: 1, childrenPerGateway: 2, mcus: 0, prefix: "kids" }),
        logger,
      }),
    ).rejects.toThrow(
      /IoT Hub carries no bridged children .* but 2 devices sit behind gateways \(kids-gw-0-mcu-0, kids-gw-0-mcu-1…\)/,
    );
    await expect(startSimulator({ devices: [{ id: "x", kind: "mcu" }], logger })).rejects.toThrow(
      "give exactly one of brokerUrl (MQTT) and iothub (Azure IoT Hub)",
    );
    await expect(
      startSimulator({ brokerUrl: "mqtt://127.0.0.1:1", iothub: { connectionString }, devices: [], logger }),
    ).rejects.toThrow("give exactly one of brokerUrl");
    // Nothing was registered or connected on the way.
    expect(emulator.hub.deviceIds().filter((id) => id.startsWith("kids"))).toEqual([]);
  });

  it("runs some devices over MQTT over WebSockets and some with X.509 certificates", async () => {
    const certificates = new Map<string, DeviceCertificate>();
    const mixed = await startSimulator({
      iothub: {
        // mix-0: SAS over MQTT; mix-1: SAS over WebSockets; mix-2: X.509 over WebSockets.
        connectionString: (id) => {
          if (id === "mix-0") return emulator.addDevice(id).connectionString;
          if (id === "mix-1") return emulator.addDevice(id).webSocketConnectionString;
          const certificate = makeDeviceCertificate({ deviceId: id });
          certificates.set(id, certificate);
          return emulator.addDevice(id, { x509: { primaryThumbprint: certificate.thumbprint } })
            .webSocketConnectionString;
        },
        transport: (id) => (id === "mix-0" ? "mqtt" : "mqttWs"),
        x509: (id) => certificates.get(id),
        ca: emulator.ca,
      },
      devices: [
        { id: "mix-0", kind: "mcu" },
        { id: "mix-1", kind: "mcu" },
        { id: "mix-2", kind: "mcu" },
      ],
      logger,
    });
    try {
      // A WebSocket connection string names the WebSocket port: MQTT/TLS could not connect there.
      await until(() => {
        for (const id of ["mix-0", "mix-1", "mix-2"]) expect(state(id)).toMatchObject({ state: "online" });
      });
      expect(emulator.hub.identity("mix-2").authentication).toMatchObject({ type: "selfSigned" });
    } finally {
      await mixed.stop();
    }
  });

  it("ends with a clean `offline` in every twin when stopped", async () => {
    const small = await startSimulator({
      iothub: { connectionString: (id) => emulator.addDevice(id).connectionString, ca: emulator.ca },
      devices: fleetSpec({ gateways: 0, childrenPerGateway: 0, mcus: 3, prefix: "stop" }),
      logger,
    });
    const boots = [...small.devices.values()].map((d) => [d.id, d.bootId] as const);
    await small.stop();
    for (const [id, bootId] of boots) {
      expect(connectionState(id)).toBe("Disconnected");
      expect(state(id)).toMatchObject({ state: "offline", bootId });
    }
  });
});

describe("devicelet simulate --iothub-devices", () => {
  it("runs one device per connection string until SIGTERM, then leaves `offline` in every twin", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "sim-iothub-"));
    const ids = ["cli-0", "cli-1", "cli-2"];
    const lines = [
      "# two microcontrollers and a gateway",
      ...ids.map((id) => emulator.addDevice(id).connectionString),
    ];
    await writeFile(path.join(dir, "devices.txt"), `${lines.join("\n")}\n\n`);
    await writeFile(path.join(dir, "ca.pem"), emulator.ca);
    const bin = fileURLToPath(new URL("../../bin/devicelet.js", import.meta.url));
    const child = spawn(
      process.execPath,
      [bin, "simulate", "--iothub-devices", "devices.txt", "--iothub-ca", "ca.pem", "--gateways", "1"],
      { cwd: dir, stdio: ["ignore", "pipe", "inherit"] },
    );
    const exited = new Promise<number | null>((resolve) => child.once("exit", resolve));
    try {
      let out = "";
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`not online in 20 s:\n${out}`)), 20_000);
        child.stdout.on("data", (chunk: Buffer) => {
          out += chunk.toString();
          if (out.includes("all simulated devices are online")) {
            clearTimeout(timer);
            resolve();
          }
        });
        void exited.then((code) => reject(new Error(`exited with ${code}:\n${out}`)));
      });
      for (const id of ids) expect(connectionState(id)).toBe("Connected");
      expect(state("cli-0")?.device).toMatchObject({ deviceClass: "gateway" });
      expect(state("cli-2")?.device).toMatchObject({ deviceClass: "mcu" });
      child.kill("SIGTERM");
      expect(await exited).toBe(0);
      for (const id of ids) {
        expect(connectionState(id)).toBe("Disconnected");
        expect(state(id)).toMatchObject({ state: "offline" });
      }
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      await rm(dir, { recursive: true, force: true });
    }
  });
});
