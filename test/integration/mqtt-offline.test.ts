/**
 * What the MQTT provider keeps for a device that is away, on the wire (docs/architecture.md,
 * decisions 2 and 3), with the real CLI, a real Mosquitto and simulated devices. What Kubernetes
 * sees of the same situations (pods queued and applied once, as their latest version, on reconnect;
 * a delete held Terminating until the device stopped the app) is the conformance kit's, run against
 * this provider by conformance-engine-mqtt.test.ts. This file checks the retained `desired`
 * documents and what the device applied:
 * - two changes while the device is away: the document holds the running and the latest pod (at
 *   most a tombstone for the one between), nothing reaches the device meanwhile, and the first
 *   document it applies on reconnect is the latest, exactly once; the tombstone is dropped after;
 * - a delete while it is away waits in the document as a tombstone, the device keeps running the
 *   app until it reconnects, and the document is clean once it stopped it.
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
import { isReady, pod, type PodJson } from "../support/workloads.ts";

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

const podOn = (name: string, node: string, extraSpec = "") =>
  pod({
    namespace: ns,
    name,
    testId: id,
    node,
    spec: `${extraSpec}  containers:\n    - { name: app, image: example/app:1 }`,
  });
const getPod = (name: string) => getJson<PodJson>(["pod", name, "-n", ns]);
const readyPod = (name: string) =>
  eventually(async () => {
    const p = await getPod(name);
    expect(isReady(p)).toBe(true);
    return p;
  });

describe("mqtt provider: offline queueing on the wire", () => {
  it("publishes only the latest of two changes made while the device was offline, applied once", async () => {
    await apply(podOn("p1", gwA));
    const p1 = await readyPod("p1");
    await goOffline(gwA);
    const before = scene.device(gwA).appliedGenerations.length;

    // First change: a new pod, queued for the device, which the provider reports as waiting for it.
    await apply(podOn("p2", gwA));
    const p2 = await eventually(
      async () => {
        const p = await getPod("p2");
        expect(p.status.containerStatuses?.[0]?.state.waiting?.reason).toBe("DeviceOffline");
        return p;
      },
      { timeoutMs: 60_000 },
    );
    // Second change: that pod replaced by another before the device ever saw it.
    await kubectl(["delete", "pod", "p2", "-n", ns, "--wait=false"]);
    await apply(podOn("p3", gwA));
    const p3 = await getPod("p3");
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
    await eventually(
      () => expect(scene.device(gwA).runningPods().sort()).toEqual([p1.metadata.uid, p3.metadata.uid].sort()),
      { timeoutMs: 30_000 },
    );
    // The first document applied after reconnecting is the latest one, applied once; anything after
    // it is newer (the tombstone dropped once the device confirmed it).
    const after = scene.device(gwA).appliedGenerations.slice(before);
    expect(after[0]).toEqual({ epoch: latest?.epoch, generation: latest?.generation });
    expect(after.filter((g) => g.generation === latest?.generation)).toHaveLength(1);
    expect(after.every((g) => g.generation >= (latest?.generation ?? 0))).toBe(true);
    await eventually(async () =>
      expect((await retainedDesired(scene.broker.url, gwA))?.tombstones).toEqual([]),
    );
  });

  it("keeps a delete made while the device was offline as a tombstone until it reconnects, then drops it", async () => {
    await apply(podOn("doomed", gwB, "  terminationGracePeriodSeconds: 2\n"));
    const { uid } = (await readyPod("doomed")).metadata;
    await goOffline(gwB);
    await kubectl(["delete", "pod", "doomed", "-n", ns, "--wait=false"]);
    await eventually(async () => {
      const doc = await retainedDesired(scene.broker.url, gwB);
      expect(doc?.tombstones.map((t) => t.uid)).toEqual([uid]);
      expect(doc?.pods).toEqual([]);
    });
    expect(scene.device(gwB).runningPods()).toContain(uid); // the device has not heard of it yet

    await scene.device(gwB).goOnline();
    await eventually(() => expect(scene.device(gwB).runningPods()).not.toContain(uid), { timeoutMs: 30_000 });
    await eventually(async () => {
      const cleaned = await retainedDesired(scene.broker.url, gwB);
      expect(cleaned?.tombstones).toEqual([]);
      expect(cleaned?.pods).toEqual([]);
    });
  });
});
