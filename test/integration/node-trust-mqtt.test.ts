/**
 * What a device announces over MQTT is checked before it reaches the API server (docs/protocol.md
 * § 3.2.1, § 3.8), through the real CLI, a real Mosquitto and the real control plane:
 * - a reported `address` that is not an IP (the schema lets any string through) is never used as
 *   a podIP: the pod runs with an address of `pods.ipRange`, and an `InvalidAddress` Event is
 *   recorded on the node (before, every status write of its pods failed with 422);
 * - birth addresses that are not IPs, or are outside `nodes.addressRanges`, stay off the node;
 * - capacity Kubernetes would refuse (`1.5` pods, a negative or malformed quantity) is left out:
 *   the node registers with the rest, an `InvalidCapacity` Event is recorded and the device gets a
 *   notice on `{id}/notice` (before, the node was never created and the create retried forever);
 * - a device that goes to sleep makes its node say `DeviceSleeping` with the wake time.
 */
import mqtt from "mqtt";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeNotice } from "../../src/protocol/codec.ts";
import { topics } from "../../src/protocol/topics.ts";
import type { NoticeMessage } from "../../src/protocol/types.ts";
import { MqttTransport } from "../../src/device/mqtt-link.ts";
import { DeviceSession, type BirthInfo } from "../../src/device/session.ts";
import { SimRuntime } from "../../src/device/sim-runtime.ts";
import { gatewayBirth } from "../support/device-messages.ts";
import { eventually } from "../support/eventually.ts";
import { apply, getJson } from "../support/kubectl.ts";
import { eventsOf, type EventJson } from "../support/mqtt.ts";
import { mqttScene } from "../support/scene.ts";
import { uniqueName } from "../support/testenv.ts";
import { isReady, pod, type PodJson } from "../support/workloads.ts";

const id = uniqueName("trustmq");
const ns = id;
const sleeper = `${id}-sleeper`;
const liar = `${id}-liar`;
const scene = mqttScene({
  id,
  devices: [{ id: sleeper, kind: "gateway" }],
  // `nodes` replaces the harness's section, so its test label is given again.
  core: {
    nodes: { extraLabels: { "devicelet.dev/test": id }, addressRanges: ["10.0.0.0/8", "192.168.0.0/16"] },
  },
});

interface NodeJson {
  metadata: { name: string };
  status: {
    capacity?: Record<string, string>;
    addresses?: { type: string; address: string }[];
    conditions?: { type: string; status: string; reason?: string; message?: string }[];
  };
}

const birth = (capacity: Record<string, string>): BirthInfo => ({
  ...gatewayBirth(capacity),
  addresses: [
    { type: "InternalIP", address: "192.168.7.7" },
    { type: "InternalIP", address: "172.16.0.9" },
    { type: "Hostname", address: "Not_A_Host" },
  ],
});

let liarSession: DeviceSession | undefined;
let liarTransport: MqttTransport | undefined;
let spy: mqtt.MqttClient | undefined;
const notices: NoticeMessage[] = [];

beforeAll(async () => {
  await scene.start();
  // A spy on the device's notice topic, subscribed before the device is born.
  spy = await mqtt.connectAsync(scene.broker.url, { clientId: `${id}-spy` });
  spy.on("message", (topic, payload) => {
    const decoded = decodeNotice(topic, payload, { deviceId: liar });
    if (decoded.ok) notices.push(decoded.value);
  });
  await spy.subscribeAsync(topics.notice(liar), { qos: 1 });
  // A device written by someone else: its report's address is not an IP, its birth overstates.
  const logger = pino({ level: "warn" });
  liarTransport = new MqttTransport({ url: scene.broker.url, clientId: liar, logger });
  liarSession = new DeviceSession({
    deviceId: liar,
    link: liarTransport.link(liar),
    runtime: new SimRuntime({ appStartMs: 50, capacity: { cpu: "4", memory: "4Gi", pods: "10" } }),
    device: birth({
      cpu: "4",
      memory: "4Gi",
      pods: "1.5",
      "example.com/gpio": "-2",
      "example.com/adc": "1.5.5",
    }),
    address: "999.1.1.1",
    logger,
  });
  await liarSession.start();
  await liarSession.whenOnline();
});

afterAll(async () => {
  await liarSession?.stop();
  await spy?.endAsync();
  await scene.stop();
});

const nodeEvents = async (node: string, reason: string): Promise<EventJson[]> =>
  (await eventsOf("default")).filter((e) => e.involvedObject.name === node && e.reason === reason);

describe("a device's birth and reports, checked", () => {
  it("registers the node without the capacity Kubernetes refuses, and tells the device", async () => {
    const node = await eventually(() => getJson<NodeJson>(["node", liar]), { timeoutMs: 30_000 });
    expect(node.status.capacity).toMatchObject({ cpu: "4", memory: "4Gi", pods: "110" });
    expect(node.status.capacity).not.toHaveProperty("example.com/gpio");
    expect(node.status.capacity).not.toHaveProperty("example.com/adc");
    const [event] = await eventually(async () => {
      const found = await nodeEvents(liar, "InvalidCapacity");
      expect(found).toHaveLength(1);
      return found;
    });
    expect(event?.type).toBe("Warning");
    expect(event?.message).toContain('capacity pods="1.5" must be a whole number');
    expect(event?.message).toContain('capacity example.com/gpio="-2" is negative');
    await eventually(() =>
      expect(notices.map((n) => n.reason)).toEqual(
        expect.arrayContaining(["InvalidCapacity", "InvalidAddress"]),
      ),
    );
    expect(notices.find((n) => n.reason === "InvalidCapacity")?.message).toContain("1.5.5");
  });

  it("keeps birth addresses that are not IPs, or out of range, off the node", async () => {
    const node = await getJson<NodeJson>(["node", liar]);
    const addresses = (node.status.addresses ?? []).map((a) => a.address);
    expect(addresses).toContain("192.168.7.7");
    expect(addresses).not.toContain("172.16.0.9");
    expect(addresses).not.toContain("Not_A_Host");
    const [event] = await eventually(() =>
      nodeEvents(liar, "InvalidAddress").then((e) => (expect(e.length).toBeGreaterThan(0), e)),
    );
    expect(event?.message).toContain("172.16.0.9 is outside nodes.addressRanges");
  });

  it("runs a pod whose device reports an address that is not an IP, with a podIP of its own range", async () => {
    await apply(
      pod({
        namespace: ns,
        name: "p",
        testId: id,
        node: liar,
        spec: "  containers: [{ name: app, image: example/app:1 }]",
      }),
    );
    const running = await eventually(
      async () => {
        const p = await getJson<PodJson>(["pod", "p", "-n", ns]);
        expect(isReady(p)).toBe(true);
        return p;
      },
      { timeoutMs: 60_000 },
    );
    expect(running.status.podIP).toMatch(/^10\.250\./);
    await eventually(async () => {
      const events = await nodeEvents(liar, "InvalidAddress");
      expect(events.map((e) => e.message).join("\n")).toContain(
        'reported address ignored: "999.1.1.1" is not an IP address',
      );
    });
  });
});

describe("a sleeping device's node", () => {
  it("says DeviceSleeping with the wake time", async () => {
    const wakeAt = new Date(Date.now() + 15 * 60_000);
    await scene.device(sleeper).sleep(wakeAt);
    const condition = await eventually(async () => {
      const node = await getJson<NodeJson>(["node", sleeper]);
      const c = node.status.conditions?.find((x) => x.type === "DeviceConnected");
      expect(c?.reason).toBe("DeviceSleeping");
      return c;
    });
    expect(condition?.status).toBe("False");
    const woken = new Date(Math.floor(wakeAt.getTime() / 1000) * 1000).toISOString();
    expect(condition?.message).toContain(`device is sleeping until ${woken}`);
  });
});
