/**
 * Offline queueing through the MQTT provider (design decisions 2 and 3), with the real CLI, a
 * real Mosquitto and simulated devices:
 * - two changes while the device is away: on reconnect it applies only the latest document,
 *   exactly once, and the pod between never runs;
 * - a pod deleted while its device is away stays Terminating, waiting for the device (a StatefulSet
 *   must never see it gone while its app may still run); the tombstone waits in the retained
 *   document, reaches the device on reconnect, the app stops, the pod object goes, and the
 *   tombstone is dropped from the document.
 *
 * The two changes are pods: one created while the device is away, then replaced by another before
 * the device ever saw it. (A Deployment rollout would not do: its controller retires pods that
 * turn unready when their device goes away, which is its own decision, not devicelet's.)
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { eventually } from "../support/eventually.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import { retainedDesired } from "../support/mqtt.ts";
import { mqttScene } from "../support/scene.ts";
import { uniqueName } from "../support/testenv.ts";
import { condition, isReady, pod, type PodJson } from "../support/workloads.ts";

const id = uniqueName("mqoff");
const ns = id;
const gwA = `${id}-gw-a`;
const gwB = `${id}-gw-b`;
const scene = mqttScene({
  id,
  devices: [
    { id: gwA, kind: "gateway" },
    { id: gwB, kind: "gateway" },
  ],
});

interface NodeJson {
  metadata: { name: string };
  status: { conditions: { type: string; status: string }[] };
}

// start() resolves once both devices are nodes.
beforeAll(() => scene.start());
afterAll(() => scene.stop());

const deviceConnected = async (device: string) =>
  (await getJson<NodeJson>(["node", device])).status.conditions.find((c) => c.type === "DeviceConnected")
    ?.status;

const goOffline = async (device: string) => {
  await scene.device(device).goOffline();
  // The will (MQTT 5 will delay: 1 s) reached devicelet and the node says so.
  await eventually(async () => expect(await deviceConnected(device)).toBe("False"), { timeoutMs: 30_000 });
};

const podOn = (name: string, node: string) =>
  pod({
    namespace: ns,
    name,
    testId: id,
    node,
    spec: "  containers:\n    - { name: app, image: example/app:1 }",
  });
const getPod = (name: string) => getJson<PodJson>(["pod", name, "-n", ns]);

describe("mqtt provider: offline queueing", () => {
  it("applies only the latest of two changes made while the device was offline, exactly once", async () => {
    await apply(podOn("p1", gwA));
    const p1 = await eventually(async () => {
      const p = await getPod("p1");
      expect(isReady(p)).toBe(true);
      return p;
    });
    await goOffline(gwA);
    const before = scene.device(gwA).appliedGenerations.length;

    // First change: a new pod, queued for the device.
    await apply(podOn("p2", gwA));
    const p2 = await eventually(
      async () => {
        const p = await getPod("p2");
        expect(p.status.phase).toBe("Pending");
        expect(p.status.containerStatuses?.[0]?.state.waiting?.reason).toBe("DeviceOffline");
        expect(condition(p, "devicelet.dev/DeviceConnected")?.status).toBe("False");
        return p;
      },
      { timeoutMs: 60_000 },
    );
    // Second change: that pod replaced by another before the device ever saw it.
    await kubectl(["delete", "pod", "p2", "-n", ns, "--wait=false"]);
    await apply(podOn("p3", gwA));
    const p3 = await eventually(async () => {
      const p = await getPod("p3");
      expect(p.status.phase).toBe("Pending");
      return p;
    });
    // What the broker holds for the device: the running pod and the latest one, and at most a
    // tombstone for the one between (devicelet cannot know the device never got it).
    const latest = await eventually(async () => {
      const doc = await retainedDesired(scene.broker.url, gwA);
      expect(doc?.pods.map((p) => p.uid).sort()).toEqual([p1.metadata.uid, p3.metadata.uid].sort());
      for (const t of doc?.tombstones ?? []) expect(t.uid).toBe(p2.metadata.uid);
      return doc;
    });
    expect(scene.device(gwA).appliedGenerations).toHaveLength(before);

    await scene.device(gwA).goOnline();
    await eventually(async () => expect(isReady(await getPod("p3"))).toBe(true), { timeoutMs: 30_000 });
    expect(scene.device(gwA).runningPods().sort()).toEqual([p1.metadata.uid, p3.metadata.uid].sort());
    // The first document applied after reconnecting is the latest one, applied once; anything after
    // it is newer (the tombstone dropped once the device confirmed it).
    const after = scene.device(gwA).appliedGenerations.slice(before);
    expect(after[0]).toEqual({ epoch: latest?.epoch, generation: latest?.generation });
    expect(after.filter((g) => g.generation === latest?.generation)).toHaveLength(1);
    expect(after.every((g) => g.generation >= (latest?.generation ?? 0))).toBe(true);
    await eventually(async () => {
      expect((await retainedDesired(scene.broker.url, gwA))?.tombstones).toEqual([]);
      const names = (await getJson<{ items: PodJson[] }>(["pods", "-n", ns])).items.map(
        (p) => p.metadata.name,
      );
      expect(names).not.toContain("p2");
    });
  });

  it("delivers a delete made while the device was offline once it reconnects, then drops the tombstone", async () => {
    await apply(
      pod({
        namespace: ns,
        name: "doomed",
        testId: id,
        node: gwB,
        spec: "  terminationGracePeriodSeconds: 2\n  containers:\n    - { name: app, image: example/app:1 }",
      }),
    );
    const doomed = await eventually(async () => {
      const p = await getJson<PodJson>(["pod", "doomed", "-n", ns]);
      expect(isReady(p)).toBe(true);
      return p;
    });
    const uid = doomed.metadata.uid;
    await goOffline(gwB);
    await kubectl(["delete", "pod", "doomed", "-n", ns, "--wait=false"]);
    // Past its grace period the pod object stays, Terminating, saying it waits for the device,
    // and the delete waits in the document as a tombstone.
    await eventually(
      async () => {
        const p = await getJson<PodJson>(["pod", "doomed", "-n", ns]);
        expect(p.metadata.uid).toBe(uid);
        expect(p.metadata.deletionTimestamp).toBeDefined();
        expect(condition(p, "devicelet.dev/StopConfirmed")).toMatchObject({
          status: "False",
          reason: "WaitingForDevice",
        });
      },
      { timeoutMs: 30_000 },
    );
    const doc = await retainedDesired(scene.broker.url, gwB);
    expect(doc?.tombstones.map((t) => t.uid)).toEqual([uid]);
    expect(doc?.pods).toEqual([]);
    expect(scene.device(gwB).runningPods()).toContain(uid); // the device has not heard of it yet

    await scene.device(gwB).goOnline();
    await eventually(() => expect(scene.device(gwB).runningPods()).not.toContain(uid), { timeoutMs: 30_000 });
    // Confirmed stopped: now the pod object goes.
    await eventually(async () => {
      const names = (await getJson<{ items: PodJson[] }>(["pods", "-n", ns])).items.map(
        (p) => p.metadata.name,
      );
      expect(names).not.toContain("doomed");
    });
    await eventually(async () => {
      const cleaned = await retainedDesired(scene.broker.url, gwB);
      expect(cleaned?.tombstones).toEqual([]);
      expect(cleaned?.pods).toEqual([]);
    });
  });
});
