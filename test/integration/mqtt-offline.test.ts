/**
 * Offline queueing through the MQTT provider (DESIGN.md decisions 2 and 3), with the real CLI, a
 * real Mosquitto and simulated devices:
 * - config changed twice while the device is away: on reconnect it applies only the latest
 *   document, exactly once;
 * - a pod deleted while its device is away: the tombstone waits in the retained document, reaches
 *   the device on reconnect, the app stops, and the tombstone is then dropped from the document.
 *
 * Changing "the pod's config" is done the way users do it: a Deployment's env (a pod's env is
 * immutable), with the Recreate strategy so each change deletes the old pod (a tombstone, since
 * the device is away) and creates a new one (queued). Two changes leave two tombstones and one
 * queued pod; the device must see none of the intermediate documents.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Broker } from "../../hack/testenv/mosquitto.ts";
import { startSimulator, type Simulator } from "../../src/device/simulator.ts";
import { eventually } from "../support/eventually.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import {
  retainedDesired,
  startBroker,
  startMqttDevicelet,
  type RunningMqttDevicelet,
  stopAll,
} from "../support/mqtt.ts";
import { uniqueName } from "../support/testenv.ts";
import { condition, isReady, pod, type PodJson } from "../support/workloads.ts";

const id = uniqueName("mqoff");
const ns = id;
const gwA = `${id}-gw-a`;
const gwB = `${id}-gw-b`;
let broker: Broker;
let devicelet: RunningMqttDevicelet;
let sim: Simulator;

interface NodeJson {
  metadata: { name: string };
  status: { conditions: { type: string; status: string }[] };
}

beforeAll(async () => {
  await kubectl(["create", "namespace", ns]);
  broker = await startBroker(id);
  devicelet = await startMqttDevicelet({ id, brokerUrl: broker.url, namespace: ns });
  sim = await startSimulator({
    brokerUrl: broker.url,
    devices: [
      { id: gwA, kind: "gateway" },
      { id: gwB, kind: "gateway" },
    ],
    appStartMs: 100,
  });
  await eventually(async () => {
    const nodes = await getJson<{ items: NodeJson[] }>(["nodes", "-l", devicelet.nodeSelector]);
    expect(nodes.items).toHaveLength(2);
  });
});

afterAll(async () => {
  await stopAll(
    () => sim.stop(),
    () => devicelet.stop(),
    () => broker.stop(),
    () => kubectl(["delete", "namespace", ns, "--wait=false"]),
  );
});

const podsOf = async (label: string) =>
  (await getJson<{ items: PodJson[] }>(["pods", "-n", ns, "-l", label])).items;

const deviceConnected = async (device: string) =>
  (await getJson<NodeJson>(["node", device])).status.conditions.find((c) => c.type === "DeviceConnected")
    ?.status;

const goOffline = async (device: string) => {
  await sim.device(device).goOffline();
  // The will (MQTT 5 will delay: 1 s) reached devicelet and the node says so.
  await eventually(async () => expect(await deviceConnected(device)).toBe("False"), { timeoutMs: 30_000 });
};

function configDeployment(value: string) {
  return `apiVersion: apps/v1
kind: Deployment
metadata: { name: cfg, namespace: ${ns} }
spec:
  replicas: 1
  strategy: { type: Recreate }
  selector: { matchLabels: { app: cfg } }
  template:
    metadata: { labels: { app: cfg } }
    spec:
      nodeSelector: { kubernetes.io/hostname: ${gwA} }
      tolerations: [{ key: virtual-kubelet.io/provider, operator: Exists, effect: NoSchedule }]
      terminationGracePeriodSeconds: 2
      containers:
        - name: app
          image: example/cfg:1
          env: [{ name: MODE, value: "${value}" }]
`;
}

/** The one live (not terminating) pod of the Deployment, once it has the given MODE. */
async function livePodWithMode(
  mode: string,
): Promise<PodJson & { spec: { containers: { env: { value: string }[] }[] } }> {
  const pods = (await podsOf("app=cfg")) as (PodJson & {
    spec: { containers: { env: { value: string }[] }[] };
  })[];
  const live = pods.filter((p) => !p.metadata.deletionTimestamp);
  expect(live).toHaveLength(1);
  const p = live[0];
  expect(p?.spec.containers[0]?.env[0]?.value).toBe(mode);
  return p as never;
}

describe("mqtt provider: offline queueing", () => {
  it("applies only the latest of two changes made while the device was offline, exactly once", async () => {
    await apply(configDeployment("v1"));
    const first = await eventually(async () => {
      const p = await livePodWithMode("v1");
      expect(isReady(p)).toBe(true);
      return p;
    });
    await goOffline(gwA);
    const before = sim.device(gwA).appliedGenerations.length;

    await apply(configDeployment("v2"));
    const second = await eventually(
      async () => {
        const p = await livePodWithMode("v2");
        expect(p.spec.nodeName).toBe(gwA);
        expect(p.status.phase).toBe("Pending");
        expect(p.status.containerStatuses?.[0]?.state.waiting?.reason).toBe("DeviceOffline");
        expect(condition(p, "devicelet.dev/DeviceConnected")?.status).toBe("False");
        return p;
      },
      { timeoutMs: 60_000 },
    );
    await apply(configDeployment("v3"));
    const third = await eventually(
      async () => {
        const p = await livePodWithMode("v3");
        expect(p.spec.nodeName).toBe(gwA);
        expect(p.status.phase).toBe("Pending");
        return p;
      },
      { timeoutMs: 60_000 },
    );
    // What the broker holds for the device: the latest pod, and tombstones for the two before.
    const latest = await eventually(async () => {
      const doc = await retainedDesired(broker.url, gwA);
      expect(doc?.pods.map((p) => p.uid)).toEqual([third.metadata.uid]);
      expect(doc?.tombstones.map((t) => t.uid).sort()).toEqual(
        [first.metadata.uid, second.metadata.uid].sort(),
      );
      return doc;
    });
    expect(sim.device(gwA).appliedGenerations).toHaveLength(before);

    await sim.device(gwA).goOnline();
    await eventually(async () => expect(isReady(await livePodWithMode("v3"))).toBe(true), {
      timeoutMs: 30_000,
    });
    expect(sim.device(gwA).runningPods()).toEqual([third.metadata.uid]);
    // The first document applied after reconnecting is the latest one, applied once; anything after
    // it is newer (the tombstones dropped once the device confirmed them).
    const after = sim.device(gwA).appliedGenerations.slice(before);
    expect(after[0]).toEqual({ epoch: latest?.epoch, generation: latest?.generation });
    expect(after.filter((g) => g.generation === latest?.generation)).toHaveLength(1);
    expect(after.every((g) => g.generation >= (latest?.generation ?? 0))).toBe(true);
    await eventually(async () => expect((await retainedDesired(broker.url, gwA))?.tombstones).toEqual([]));
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
    // The engine removes the pod object once the grace period is over; the delete waits as a tombstone.
    await eventually(async () => {
      const names = (await getJson<{ items: PodJson[] }>(["pods", "-n", ns])).items.map(
        (p) => p.metadata.name,
      );
      expect(names).not.toContain("doomed");
    });
    const doc = await retainedDesired(broker.url, gwB);
    expect(doc?.tombstones.map((t) => t.uid)).toEqual([uid]);
    expect(doc?.pods).toEqual([]);
    expect(sim.device(gwB).runningPods()).toContain(uid); // the device has not heard of it yet

    await sim.device(gwB).goOnline();
    await eventually(() => expect(sim.device(gwB).runningPods()).not.toContain(uid), { timeoutMs: 30_000 });
    await eventually(async () => {
      const cleaned = await retainedDesired(broker.url, gwB);
      expect(cleaned?.tombstones).toEqual([]);
      expect(cleaned?.pods).toEqual([]);
    });
  });
});
