/**
 * What operators see of a device's stages, with the real CLI, a real Mosquitto, a simulated
 * gateway and a device that is a plain MQTT.js client:
 * - pod Events tell the story as a kubelet's do (docs/protocol.md § Pod Events): `Queued` while
 *   the device is offline, then `Delivered`, `Applied`, `Started` in that order once it is back,
 *   each once; a document the device refuses is a `Rejected` Warning with the device's reason;
 *   a delete the device confirmed is `TombstoneConfirmed`;
 * - the node's `DeviceInSync` condition and `devicelet.dev/in-sync` label follow the device:
 *   True/`true` once it applied, False `Rejected`/`false` while it refuses, True again after;
 * - every log line devicelet wrote meanwhile names its pod and device with the stable fields
 *   (docs/configuration.md § Log fields).
 * Those run with `podEvents.stages: all`. Under the default, `notable`, a pod that starts in time
 * records no stage Event at all, and a pod on a device that never applies records `Delivered` once
 * `podEvents.slowStageSeconds` (5 s) have passed since its document went out.
 */
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type {
  DesiredDocument,
  PresenceMessage,
  ReportedDocument,
  ReportedPod,
} from "../../src/protocol/types.ts";
import type { DesiredAck } from "../../providers/mqtt/observations.ts";
import { eventually } from "../support/eventually.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import { barePod, eventsOf, type EventJson } from "../support/mqtt.ts";
import { mqttScene } from "../support/scene.ts";
import { uniqueName } from "../support/testenv.ts";

const id = uniqueName("mqstg");
const gw = `${id}-gw`;
const pickyId = `${id}-picky`;
const scene = mqttScene({
  id,
  devices: [{ id: gw, kind: "gateway" }],
  provider: { podEvents: { stages: "all" } },
});

interface NodeJson {
  metadata: { labels?: Record<string, string> };
  status: { conditions: { type: string; status: string; reason: string; message: string }[] };
}

const condition = async (node: string, type: string) =>
  (await getJson<NodeJson>(["node", node])).status.conditions.find((c) => c.type === type);
const inSyncLabel = async (node: string) =>
  (await getJson<NodeJson>(["node", node])).metadata.labels?.["devicelet.dev/in-sync"];

/** Events about one pod (by name), oldest first (names end in hex nanoseconds, as client-go's). */
const podEvents = async (name: string, namespace = scene.namespace) =>
  (
    await getJson<{ items: (EventJson & { metadata: { name: string }; firstTimestamp: string })[] }>([
      "events",
      "-n",
      namespace,
      "--field-selector",
      `involvedObject.name=${name},involvedObject.kind=Pod`,
    ])
  ).items.sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));

/** Takes the simulated gateway away and waits until its node says so. */
const goOffline = async () => {
  await scene.device(gw).goOffline();
  await eventually(async () => expect((await condition(gw, "DeviceConnected"))?.status).toBe("False"), {
    timeoutMs: 30_000,
  });
};

const STAGES = new Set(["Queued", "Delivered", "Applied", "Started", "Rejected", "TombstoneConfirmed"]);
const stagesOf = async (name: string, namespace = scene.namespace) =>
  (await podEvents(name, namespace)).filter((e) => STAGES.has(e.reason));

/**
 * A device that applies every document except one carrying an image with `reject` in it, which
 * it refuses (§ 4: ack `rejected`, report the rejection); applied pods it reports running. A
 * `stuck` one acks `received` for every document and never gets further.
 */
async function pickyDevice(o: { deviceId?: string; brokerUrl?: string; stuck?: boolean } = {}) {
  const deviceId = o.deviceId ?? pickyId;
  let seq = 0;
  const topic = (sub: string) => `devicelet/v1/${deviceId}/${sub}`;
  const client = await mqtt.connectAsync(o.brokerUrl ?? scene.broker.url, {
    clientId: deviceId,
    clean: true,
  });
  const publish = (sub: string, message: object, retain: boolean) =>
    client.publishAsync(topic(sub), JSON.stringify(message), { qos: 1, retain });
  let applied = { epoch: null as string | null, generation: 0, pods: [] as ReportedPod[] };
  const report = (extra: Partial<ReportedDocument> = {}): ReportedDocument => ({
    protocol: 1,
    kind: "reported",
    deviceId,
    bootId: "k1",
    seq: ++seq,
    observedAt: new Date().toISOString(),
    epoch: applied.epoch,
    observedGeneration: applied.generation,
    appliedGeneration: applied.generation,
    pods: applied.pods,
    ...extra,
  });
  const ack = (doc: DesiredDocument, stage: DesiredAck["stage"], why?: { reason: string; message: string }) =>
    publish(
      "ack",
      {
        protocol: 1,
        kind: "ack",
        deviceId,
        bootId: "k1",
        seq: ++seq,
        epoch: doc.epoch,
        generation: doc.generation,
        stage,
        ...why,
      } satisfies DesiredAck,
      false,
    );
  client.on("message", (_topic, payload) => {
    if (payload.length === 0) return;
    const doc = JSON.parse(payload.toString("utf8")) as DesiredDocument;
    void (async () => {
      await ack(doc, "received");
      if (o.stuck) return;
      if (doc.pods.some((p) => p.apps.some((a) => a.image.includes("reject")))) {
        const why = { reason: "UnsupportedImage", message: "this firmware cannot run reject-me images" };
        await ack(doc, "rejected", why);
        await publish(
          "reported",
          report({
            epoch: doc.epoch,
            observedGeneration: doc.generation,
            rejection: { generation: doc.generation, ...why },
          }),
          true,
        );
        return;
      }
      const startedAt = new Date().toISOString();
      applied = {
        epoch: doc.epoch,
        generation: doc.generation,
        pods: doc.pods.map((p) => ({
          uid: p.uid,
          hash: p.hash,
          phase: "Running",
          apps: p.apps.map((a) => ({
            name: a.name,
            image: a.image,
            status: { state: "running", startedAt },
            ready: true,
            restartCount: 0,
          })),
        })),
      };
      await ack(doc, "applied");
      await publish("reported", report(), true);
    })();
  });
  await client.subscribeAsync(topic("desired"), { qos: 1 });
  const birth: PresenceMessage = {
    protocol: 1,
    kind: "presence",
    deviceId,
    state: "online",
    bootId: "k1",
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
  await publish("reported", report(), true);
  return client;
}

/** Fields that only make sense about one pod or one device: a line with one must say which. */
const POD_ONLY = ["uid", "container"];
const DEVICE_ONLY = ["bootId", "generation", "commandId", "epoch"];

describe("mqtt provider: stage Events, the DeviceInSync condition and log fields", () => {
  beforeAll(() => scene.start());
  afterAll(() => scene.stop());

  it("tells Queued, then Delivered, Applied and Started in order, each once", async () => {
    await goOffline();
    await apply(barePod({ namespace: scene.namespace, testId: id, name: "p1", node: gw }));
    await eventually(async () => expect((await stagesOf("p1")).map((e) => e.reason)).toEqual(["Queued"]));
    expect((await stagesOf("p1"))[0]?.message).toMatch(new RegExp(`device ${gw} is (offline|lost)`));

    await scene.device(gw).goOnline();
    await eventually(async () =>
      expect((await stagesOf("p1")).map((e) => e.reason)).toEqual([
        "Queued",
        "Delivered",
        "Applied",
        "Started",
      ]),
    );
    const started = (await stagesOf("p1")).find((e) => e.reason === "Started");
    expect(started?.message).toBe("Started container app");
    expect((await condition(gw, "DeviceInSync"))?.status).toBe("True");
    expect(await inSyncLabel(gw)).toBe("true");

    // The device goes away and comes back: its report and every status are looked at again, and
    // nothing is told again.
    await goOffline();
    await scene.device(gw).goOnline();
    await eventually(async () => expect((await condition(gw, "DeviceConnected"))?.status).toBe("True"));
    const again = await stagesOf("p1");
    expect(again.map((e) => [e.reason, e.count ?? 1])).toEqual([
      ["Queued", 1],
      ["Delivered", 1],
      ["Applied", 1],
      ["Started", 1],
    ]);
  });

  it("tells TombstoneConfirmed on the node when the pod object is already gone", async () => {
    await goOffline();
    await kubectl(["delete", "pod", "p1", "-n", scene.namespace, "--force", "--grace-period=0"]);
    await scene.device(gw).goOnline();
    await eventually(async () => {
      const events = (await eventsOf("default")).filter(
        (e) => e.involvedObject.name === gw && e.reason === "TombstoneConfirmed",
      );
      expect(events.map((e) => e.message)).toEqual([
        expect.stringMatching(new RegExp(`^pod ${scene.namespace}/p1: device ${gw} confirmed`)),
      ]);
    });
  });

  it("tells Rejected with the device's reason, shows the node out of sync, then TombstoneConfirmed", async () => {
    const device = await pickyDevice();
    try {
      await eventually(async () => expect((await getJson<NodeJson>(["node", pickyId])).status).toBeDefined());
      await apply(barePod({ namespace: scene.namespace, testId: id, name: "good", node: pickyId }));
      await eventually(async () =>
        expect((await stagesOf("good")).map((e) => e.reason)).toContain("Started"),
      );
      await eventually(async () => {
        expect((await condition(pickyId, "DeviceInSync"))?.reason).toBe("InSync");
        expect(await inSyncLabel(pickyId)).toBe("true");
      });

      const bad = barePod({ namespace: scene.namespace, testId: id, name: "bad", node: pickyId }).replace(
        "example/app:1",
        "example/reject-me:1",
      );
      await apply(bad);
      await eventually(async () => {
        const rejected = (await stagesOf("bad")).find((e) => e.reason === "Rejected");
        expect(rejected).toMatchObject({ type: "Warning" });
        expect(rejected?.message).toContain("UnsupportedImage: this firmware cannot run reject-me images");
      });
      await eventually(async () => {
        const c = await condition(pickyId, "DeviceInSync");
        expect(c).toMatchObject({ status: "False", reason: "Rejected" });
        expect(c?.message).toContain("UnsupportedImage");
        expect(await inSyncLabel(pickyId)).toBe("false");
      });
      const listed = await kubectl(["get", "nodes", "-l", "devicelet.dev/in-sync=false", "-o", "name"]);
      expect(listed.split("\n")).toContain(`node/${pickyId}`);

      // Deleting the pod the device refuses brings it back in sync: the next document carries a
      // tombstone for it, which the device applies and confirms.
      await kubectl(["delete", "pod", "bad", "-n", scene.namespace, "--wait=false"]);
      await eventually(async () =>
        expect((await stagesOf("bad")).map((e) => e.reason)).toContain("TombstoneConfirmed"),
      );
      await eventually(async () =>
        expect(
          await kubectl(["get", "pod", "bad", "-n", scene.namespace, "--ignore-not-found", "-o", "name"]),
        ).toBe(""),
      );
      await eventually(async () => {
        expect(await condition(pickyId, "DeviceInSync")).toMatchObject({ status: "True", reason: "InSync" });
        expect(await inSyncLabel(pickyId)).toBe("true");
      });
    } finally {
      await device.endAsync();
    }
  });

  it("logged every line about a pod or device with the stable fields", () => {
    const lines = scene.devicelet.logLines();
    // Not vacuous: the scenario logged lines about pods and devices, at debug level.
    expect(lines.filter((l) => "pod" in l).length).toBeGreaterThan(3);
    expect(lines.filter((l) => "device" in l).length).toBeGreaterThan(3);
    const wrong: string[] = [];
    for (const line of lines) {
      const show = () => JSON.stringify(line).slice(0, 300);
      for (const misnamed of ["deviceId", "podName", "podKey", "nodeName"]) {
        if (misnamed in line) wrong.push(`"${misnamed}" instead of the stable field: ${show()}`);
      }
      if ("pod" in line && (typeof line.pod !== "string" || !/^[^/\s]+\/[^/\s]+$/.test(line.pod)))
        wrong.push(`"pod" is not "<namespace>/<name>": ${show()}`);
      if ("device" in line && typeof line.device !== "string") wrong.push(`"device" is not an id: ${show()}`);
      if (POD_ONLY.some((f) => f in line) && !("pod" in line))
        wrong.push(`about a pod without "pod": ${show()}`);
      if (DEVICE_ONLY.some((f) => f in line) && !("device" in line))
        wrong.push(`about a device without "device": ${show()}`);
    }
    expect(wrong).toEqual([]);
  });
});

describe("mqtt provider: stage Events under podEvents.stages notable (the default)", () => {
  const quietId = uniqueName("mqstq");
  const quietGw = `${quietId}-gw`;
  const stuckId = `${quietId}-stuck`;
  const quiet = mqttScene({ id: quietId, devices: [{ id: quietGw, kind: "gateway" }] });
  beforeAll(() => quiet.start());
  afterAll(() => quiet.stop());

  it("records no stage Event for a pod that starts in time, and Delivered for one stuck after delivery", async () => {
    await apply(barePod({ namespace: quiet.namespace, testId: quietId, name: "fast", node: quietGw }));
    await eventually(async () =>
      expect(
        (await getJson<{ status: { phase?: string } }>(["pod", "fast", "-n", quiet.namespace])).status.phase,
      ).toBe("Running"),
    );

    const device = await pickyDevice({ deviceId: stuckId, brokerUrl: quiet.broker.url, stuck: true });
    try {
      await eventually(async () => expect((await getJson<NodeJson>(["node", stuckId])).status).toBeDefined());
      await apply(barePod({ namespace: quiet.namespace, testId: quietId, name: "stuck", node: stuckId }));
      await eventually(
        async () =>
          expect((await stagesOf("stuck", quiet.namespace)).map((e) => e.reason)).toEqual(["Delivered"]),
        { timeoutMs: 30_000 },
      );
      // Told once its time was up, not at the ack (timestamps are whole seconds).
      const created = Date.parse(
        (await getJson<{ metadata: { creationTimestamp: string } }>(["pod", "stuck", "-n", quiet.namespace]))
          .metadata.creationTimestamp,
      );
      const [delivered] = await stagesOf("stuck", quiet.namespace);
      const after = Date.parse(delivered?.firstTimestamp ?? "") - created;
      expect(after).toBeGreaterThanOrEqual(4_000);
      expect(delivered?.message).toMatch(new RegExp(`^device ${stuckId} received its desired document`));
      // The fast pod's time was up before the stuck one's even started: nothing came of it.
      expect(await stagesOf("fast", quiet.namespace)).toEqual([]);
    } finally {
      await device.endAsync();
    }
  });
});
