/**
 * The MQTT provider end to end on the happy path: a real control plane, the real `devicelet run`
 * CLI with provider mqtt, a real Mosquitto and simulated devices speaking the real protocol.
 * A pod is Pending until the device reports its app running, then Running; deleting it stops the
 * app, removes the pod object and leaves the device's retained document empty.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { eventually } from "../support/eventually.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import type { DeviceEventMessage } from "../../src/protocol/types.ts";
import { retained, retainedDesired, type EventJson } from "../support/mqtt.ts";
import { mqttScene } from "../support/scene.ts";
import { uniqueName } from "../support/testenv.ts";
import { condition, isReady, pod, type PodJson } from "../support/workloads.ts";

const id = uniqueName("mqlc");
const ns = id;
const gw = `${id}-gw`;
const tiny = `${id}-tiny`;
const scene = mqttScene({
  id,
  devices: [
    { id: gw, kind: "gateway", zone: "zone-a", labels: { site: "lab" } },
    { id: tiny, kind: "gateway", maxMessageBytes: 2048 },
  ],
  simulator: { appStartMs: 1500 },
});

interface NodeJson {
  metadata: { name: string; labels: Record<string, string> };
  status: { conditions: { type: string; status: string }[]; capacity: Record<string, string> };
}

beforeAll(() => scene.start());
afterAll(() => scene.stop());

const getPod = (name: string) => getJson<PodJson>(["pod", name, "-n", ns]);

describe("mqtt provider: pod lifecycle", () => {
  it("registers the device as a node from its birth: labels, zone, capacity, DeviceConnected", async () => {
    const node = await eventually(async () => {
      const items = (await getJson<{ items: NodeJson[] }>(["nodes", "-l", scene.nodeSelector])).items;
      expect(items).toHaveLength(2);
      return items.find((n) => n.metadata.name === gw) as NodeJson;
    });
    expect(node.metadata.labels).toMatchObject({
      "device.devicelet.dev/site": "lab",
      "topology.kubernetes.io/zone": "zone-a",
      "kubernetes.io/arch": "arm64",
    });
    expect(node.status.capacity.pods).toBe("110");
    expect(node.status.conditions.find((c) => c.type === "DeviceConnected")?.status).toBe("True");
    expect(node.status.conditions.find((c) => c.type === "Ready")?.status).toBe("True");
    // devicelet's own presence, retained for devices that connect later.
    const bridge = await retained(scene.broker.url, "devicelet/v1/_bridge/state");
    expect(JSON.parse(bridge?.toString("utf8") ?? "{}")).toMatchObject({ kind: "bridge", state: "online" });
  });

  it("keeps a pod Pending until the device reports its app running, then Running", async () => {
    await apply(
      pod({
        namespace: ns,
        name: "sensor",
        testId: id,
        node: gw,
        spec: "  containers:\n    - { name: app, image: example/sensor:1 }",
      }),
    );
    // The document reached the device and it is starting the app (1.5 s): the pod must say Pending.
    const pending = await eventually(
      async () => {
        const p = await getPod("sensor");
        expect(scene.device(gw).applies).toBeGreaterThan(0);
        expect(scene.device(gw).runningPods()).not.toContain(p.metadata.uid);
        expect(p.status.phase).toBe("Pending");
        expect(p.status.containerStatuses?.[0]?.state.waiting).toBeDefined();
        return p;
      },
      { timeoutMs: 30_000, intervalMs: 100 },
    );
    expect(condition(pending, "Ready")?.status).not.toBe("True");
    const running = await eventually(
      async () => {
        const p = await getPod("sensor");
        expect(isReady(p)).toBe(true);
        return p;
      },
      { timeoutMs: 30_000 },
    );
    expect(scene.device(gw).runningPods()).toContain(running.metadata.uid);
    expect(running.status.containerStatuses?.[0]?.state.running).toBeDefined();
    expect(condition(running, "devicelet.dev/DeviceConnected")?.status).toBe("True");
  });

  it("turns a device event about a pod into a Kubernetes Event on that pod", async () => {
    const sensor = await getPod("sensor");
    const event: DeviceEventMessage = {
      protocol: 1,
      kind: "event",
      deviceId: gw,
      bootId: scene.device(gw).bootId,
      seq: 1_000_000_000,
      type: "Warning",
      reason: "Overheating",
      message: "board at 95 °C",
      podUid: sensor.metadata.uid,
      app: "app",
      at: new Date().toISOString(),
    };
    await scene.device(gw).publishRaw("evt", JSON.stringify(event));
    await eventually(async () => {
      const events = await getJson<{ items: EventJson[] }>([
        "events",
        "-n",
        ns,
        "--field-selector",
        "involvedObject.name=sensor,reason=Overheating",
      ]);
      expect(events.items.map((e) => [e.type, e.message])).toEqual([["Warning", "app: board at 95 °C"]]);
    });
  });

  it("holds back a pod that uses a Secret when the broker connection is not TLS, and says why", async () => {
    await kubectl(["create", "secret", "generic", "token", "-n", ns, "--from-literal=value=s3cret"]);
    await apply(
      pod({
        namespace: ns,
        name: "secretive",
        testId: id,
        node: gw,
        spec: `  containers:
    - name: app
      image: example/app:1
      env: [{ name: TOKEN, valueFrom: { secretKeyRef: { name: token, key: value } } }]`,
      }),
    );
    const p = await eventually(async () => {
      const got = await getPod("secretive");
      expect(got.status.containerStatuses?.[0]?.state.waiting?.reason).toBe("SecretRequiresTLS");
      return got;
    });
    expect(p.status.phase).toBe("Pending");
    const doc = await retainedDesired(scene.broker.url, gw);
    expect(doc?.pods.map((d) => d.name)).not.toContain("secretive");
    await kubectl(["delete", "pod", "secretive", "-n", ns, "--wait=false"]);
  });

  it("does not send a document larger than the device accepts, and the pod says why", async () => {
    await apply(
      pod({
        namespace: ns,
        name: "bulky",
        testId: id,
        node: tiny,
        spec: `  containers:
    - name: app
      image: example/app:1
      env: [{ name: BLOB, value: "${"x".repeat(4096)}" }]`,
      }),
    );
    const p = await eventually(async () => {
      const got = await getPod("bulky");
      expect(got.status.containerStatuses?.[0]?.state.waiting?.reason).toBe("DocumentTooLarge");
      return got;
    });
    expect(p.status.phase).toBe("Pending");
    expect(p.status.containerStatuses?.[0]?.state.waiting?.message).toMatch(/2048 bytes/);
    expect(await retainedDesired(scene.broker.url, tiny)).toBeUndefined();
  });

  it("deletes a pod: the app stops, the pod object goes, the retained document ends up empty", async () => {
    const uid = (await getPod("sensor")).metadata.uid;
    await kubectl(["delete", "pod", "sensor", "-n", ns, "--wait=false"]);
    await eventually(async () => {
      const list = await getJson<{ items: PodJson[] }>(["pods", "-n", ns]);
      expect(list.items.map((p) => p.metadata.name)).not.toContain("sensor");
    });
    expect(scene.device(gw).runningPods()).not.toContain(uid);
    await eventually(async () => {
      const doc = await retainedDesired(scene.broker.url, gw);
      expect(doc?.pods).toEqual([]);
      expect(doc?.tombstones).toEqual([]);
    });
    const generations = scene.device(gw).appliedGenerations.map((g) => g.generation);
    expect(generations).toEqual([...generations].sort((a, b) => a - b));
    expect(new Set(generations).size).toBe(generations.length);
  });
});
