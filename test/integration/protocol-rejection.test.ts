/**
 * Rejected documents (docs/protocol.md § 4) with the real CLI, a real Mosquitto and a device that
 * is a plain MQTT.js client: the device rejects the document that carries a pod, acks `rejected`
 * and reports the rejection in its retained `reported`. The pod shows `DeviceRejected` with the
 * device's reason — and still does after devicelet restarts, when the ack is long gone and only
 * the report tells.
 */
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type {
  AckMessage,
  DesiredDocument,
  PresenceMessage,
  ReportedDocument,
} from "../../src/protocol/types.ts";
import { eventually } from "../support/eventually.ts";
import { apply, getJson } from "../support/kubectl.ts";
import { barePod } from "../support/mqtt.ts";
import { mqttScene } from "../support/scene.ts";
import { uniqueName } from "../support/testenv.ts";
import type { PodJson } from "../support/workloads.ts";

const id = uniqueName("prrj");
const deviceId = `${id}-picky`;
const scene = mqttScene({ id, devices: [] });

beforeAll(() => scene.start());
afterAll(() => scene.stop());

const topic = (sub: string) => `devicelet/v1/${deviceId}/${sub}`;
const REASON = "InsufficientMemory";

/**
 * A device that rejects every document it is given, as § 4 says: ack, then report. `rereport`
 * publishes its retained report again with another message (same rejection, a later seq).
 */
async function pickyDevice() {
  let seq = 0;
  let note = "64Mi free, the pod needs 512Mi";
  const documents: DesiredDocument[] = [];
  const client = await mqtt.connectAsync(scene.broker.url, { clientId: deviceId, clean: true });
  const publish = (sub: string, message: object, retain: boolean) =>
    client.publishAsync(topic(sub), JSON.stringify(message), { qos: 1, retain });
  const report = (extra: Partial<ReportedDocument>): ReportedDocument => ({
    protocol: 1,
    kind: "reported",
    deviceId,
    bootId: "p1",
    seq: ++seq,
    observedAt: new Date().toISOString(),
    epoch: null,
    observedGeneration: 0,
    appliedGeneration: 0,
    pods: [],
    ...extra,
  });
  const rejectedReport = (doc: DesiredDocument) =>
    report({
      epoch: doc.epoch,
      observedGeneration: doc.generation,
      rejection: { generation: doc.generation, reason: REASON, message: note },
    });
  client.on("message", (_topic, payload) => {
    if (payload.length === 0) return;
    const doc = JSON.parse(payload.toString("utf8")) as DesiredDocument;
    documents.push(doc);
    const ack: AckMessage = {
      protocol: 1,
      kind: "ack",
      deviceId,
      bootId: "p1",
      seq: ++seq,
      epoch: doc.epoch,
      generation: doc.generation,
      stage: "rejected",
      reason: REASON,
      message: note,
    };
    void publish("ack", ack, false);
    void publish("reported", rejectedReport(doc), true);
  });
  await client.subscribeAsync(topic("desired"), { qos: 1 });
  const birth: PresenceMessage = {
    protocol: 1,
    kind: "presence",
    deviceId,
    state: "online",
    bootId: "p1",
    seq: ++seq,
    sentAt: new Date().toISOString(),
    device: {
      deviceClass: "mcu",
      os: "none",
      arch: "arm",
      capacity: { cpu: "1", memory: "64Mi", pods: "4" },
      capabilities: {
        maxMessageBytes: 65536,
        encodings: ["json"],
        runtime: "firmware",
        logs: false,
        exec: false,
      },
    },
  };
  await publish("state", birth, true);
  await publish("reported", report({}), true);
  return {
    client,
    documents,
    rereport: async (newNote: string) => {
      note = newNote;
      const last = documents.at(-1);
      if (last) await publish("reported", rejectedReport(last), true);
    },
  };
}

const reasonsOf = (p: PodJson) => [
  p.status.reason,
  ...(p.status.containerStatuses ?? []).map((c) => c.state.waiting?.reason),
];

describe("protocol: a rejected document", () => {
  it("shows DeviceRejected, from the ack and, after a devicelet restart, from the report", async () => {
    const device = await pickyDevice();
    try {
      await apply(barePod({ namespace: scene.namespace, testId: id, name: "heavy", node: deviceId }));
      const pod = () => getJson<PodJson>(["pod", "heavy", "-n", scene.namespace]);
      await eventually(async () => {
        const p = await pod();
        expect(p.status.phase).toBe("Pending");
        expect(reasonsOf(p)).toContain("DeviceRejected");
        expect(JSON.stringify(p.status)).toContain("the pod needs 512Mi");
      });
      // devicelet goes down; meanwhile the device reports the same rejection in other words. The
      // restarted devicelet gets no ack (nothing new is published to the device): only the
      // retained report can tell it.
      await scene.devicelet.kill();
      await device.rereport("still only 64Mi free");
      await scene.devicelet.restart();
      await eventually(async () => {
        const p = await pod();
        expect(reasonsOf(p)).toContain("DeviceRejected");
        expect(JSON.stringify(p.status)).toContain("still only 64Mi free");
      });
      expect(device.documents).toHaveLength(1);
    } finally {
      await device.client.endAsync();
    }
  });
});
