/**
 * Bad input from devices (docs/architecture.md, decision 7), through the real CLI and a real Mosquitto:
 * garbage, an oversized message, a schema-invalid report, a newer protocol version, a device
 * claiming another device's id, and a device not on the allow-list are each rejected and counted
 * by reason — visible in the counters devicelet logs (`mqtt provider metrics`) — a rejected
 * message from a known device becomes a `MessageRejected` Event on its node, and devicelet keeps
 * working: the process stays up and a pod created afterwards runs.
 */
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { PresenceMessage, ReportedDocument } from "../../src/protocol/types.ts";
import { eventually } from "../support/eventually.ts";
import { apply, getJson } from "../support/kubectl.ts";
import { type EventJson } from "../support/mqtt.ts";
import { mqttScene } from "../support/scene.ts";
import { uniqueName } from "../support/testenv.ts";
import { isReady, pod, type PodJson } from "../support/workloads.ts";

const id = uniqueName("mqbad");
const ns = id;
const gw = `${id}-gw`;
const other = `${id}-gw-other`;
const intruder = `intruder-${id}`;
const scene = mqttScene({
  id,
  devices: [
    { id: gw, kind: "gateway" },
    { id: other, kind: "gateway" },
  ],
  provider: { devices: { allow: [`${id}-*`], maxMessageBytes: 64 * 1024 } },
  simulator: { appStartMs: 50 },
});

// start() resolves once both devices are nodes.
beforeAll(() => scene.start());
afterAll(() => scene.stop());

const validReport = (deviceId: string): ReportedDocument => ({
  protocol: 1,
  kind: "reported",
  deviceId,
  bootId: "boot-x",
  seq: 1,
  observedAt: new Date().toISOString(),
  epoch: null,
  observedGeneration: 0,
  appliedGeneration: 0,
  pods: [],
});

describe("mqtt provider: bad input", () => {
  it("rejects and counts malformed, oversized, invalid and impostor messages, and keeps working", async () => {
    const device = scene.device(gw);
    await device.publishRaw("reported", "{ this is not json");
    await device.publishRaw("reported", Buffer.alloc(100 * 1024, 0x7b));
    await device.publishRaw("reported", JSON.stringify({ ...validReport(gw), pods: "none", seq: -1 }));
    await device.publishRaw("evt", JSON.stringify({ ...validReport(gw), protocol: 2 }));
    // gw claims to be another device, on its own topic.
    await device.publishRaw("reported", JSON.stringify(validReport(other)));
    // A device that is not on the allow-list, with a perfectly good birth, twice.
    const stranger = await mqtt.connectAsync(scene.broker.url, { clientId: intruder });
    const birth: PresenceMessage = {
      protocol: 1,
      kind: "presence",
      deviceId: intruder,
      state: "online",
      bootId: "b1",
      seq: 1,
      sentAt: new Date().toISOString(),
      device: {
        deviceClass: "gateway",
        os: "linux",
        arch: "amd64",
        capacity: { pods: "10" },
        capabilities: {
          maxMessageBytes: 65536,
          encodings: ["json"],
          runtime: "process",
          logs: false,
          exec: false,
        },
      },
    };
    await stranger.publishAsync(`devicelet/v1/${intruder}/state`, JSON.stringify(birth), { qos: 1 });
    await stranger.publishAsync(`devicelet/v1/${intruder}/state`, JSON.stringify({ ...birth, seq: 2 }), {
      qos: 1,
    });
    await stranger.endAsync();

    const metrics = await eventually(() => {
      const m = scene.devicelet.lastMetrics();
      expect(m?.rejected).toMatchObject({
        "not-json": 1,
        oversized: 1,
        schema: 1,
        "unsupported-protocol": 1,
        "wrong-device": 1,
      });
      expect(m?.unknownDevices).toBe(1);
      expect(m?.refusedMessages).toBe(2);
      return m;
    });
    expect(metrics?.rejected.invalid).toBe(0); // no handler error
    // Logged once per device for the stranger, and no node for it.
    expect(scene.devicelet.logLines().filter((l) => l.device === intruder && l.level === 40)).toHaveLength(1);
    const nodes = await getJson<{ items: { metadata: { name: string } }[] }>([
      "nodes",
      "-l",
      scene.nodeSelector,
    ]);
    expect(nodes.items.map((n) => n.metadata.name)).not.toContain(intruder);
    // The known device's node carries the rejections as Events.
    await eventually(async () => {
      const events = await getJson<{ items: EventJson[] }>([
        "events",
        "-A",
        "--field-selector",
        `involvedObject.name=${gw},reason=MessageRejected`,
      ]);
      expect(events.items.map((e) => e.type)).toContain("Warning");
    });

    // Still working: a new pod runs on the device that sent the garbage.
    await apply(
      pod({
        namespace: ns,
        name: "after",
        testId: id,
        node: gw,
        spec: "  containers:\n    - { name: app, image: example/app:1 }",
      }),
    );
    await eventually(async () =>
      expect(isReady(await getJson<PodJson>(["pod", "after", "-n", ns]))).toBe(true),
    );
  });
});
