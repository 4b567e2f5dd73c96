/**
 * Decommissioning (docs/protocol.md § 5) end to end: the real CLI, a real Mosquitto, a simulated
 * gateway and the harness control plane, where `kubectl delete node` is the trigger.
 * - The Node of a device that is away, deleted: its retained `desired`, `state` and `reported` are
 *   cleared, its durable record and command queue emptied, and the Node is not registered again:
 *   not while this devicelet runs, not when Kubernetes' pod GC removes the pods bound to it, not
 *   after a devicelet restart.
 * - A live birth of the device later registers its node again, as for any new device.
 * - The Node of a device that is online, deleted: registered again, the retained state untouched.
 */
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { PresenceMessage } from "../../src/protocol/types.ts";
import { gatewayBirth } from "../support/device-messages.ts";
import { eventually } from "../support/eventually.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import { barePod, deviceConnectedOf, retained } from "../support/mqtt.ts";
import { mqttScene } from "../support/scene.ts";
import { uniqueName } from "../support/testenv.ts";
import { isReady, type PodJson } from "../support/workloads.ts";

const id = uniqueName("prdc");
const ns = id;
const gw = `${id}-gw`;
const scene = mqttScene({ id, devices: [{ id: gw, kind: "gateway" }] });

beforeAll(() => scene.start());
afterAll(() => scene.stop());

const topic = (deviceId: string, sub: string) => `devicelet/v1/${deviceId}/${sub}`;
const retainedTopics = async (deviceId: string) => ({
  desired: await retained(scene.broker.url, topic(deviceId, "desired")),
  state: await retained(scene.broker.url, topic(deviceId, "state")),
  reported: await retained(scene.broker.url, topic(deviceId, "reported")),
});
const getPod = (name: string) => getJson<PodJson>(["pod", name, "-n", ns]);
const podNames = async () =>
  (await getJson<{ items: PodJson[] }>(["pods", "-n", ns])).items.map((p) => p.metadata.name);
const nodeUid = async (name: string) =>
  (await getJson<{ metadata: { uid: string } }>(["node", name])).metadata.uid;
/** The node's uid, or undefined when the API server has no such Node. */
const nodeUidOrNone = async (name: string) => {
  const out = await kubectl(["get", "nodes", "-o", "jsonpath={.items[*].metadata.name}"]);
  return out.split(" ").includes(name) ? nodeUid(name) : undefined;
};

/** What devicelet keeps for a device in its state ConfigMaps (undefined: no such key). */
const stored = async (key: string) => {
  const list = await getJson<{ items: { data?: { key?: string; value?: string } }[] }>([
    "configmaps",
    "-n",
    ns,
    "-l",
    "app.kubernetes.io/managed-by=devicelet",
  ]);
  return list.items.find((cm) => cm.data?.key === key)?.data?.value;
};

const decommissioned = (deviceId: string) =>
  scene.devicelet
    .logLines()
    .filter(
      (l) =>
        l.device === deviceId && l.msg === "node deleted while its device was away: device decommissioned",
    );

/** A retained birth of a device that has never been seen, published while no devicelet runs. */
async function retainedBirth(deviceId: string): Promise<void> {
  const birth: PresenceMessage = {
    protocol: 1,
    kind: "presence",
    deviceId,
    state: "online",
    bootId: "b1",
    seq: 1,
    sentAt: new Date().toISOString(),
    device: gatewayBirth(),
  };
  const client = await mqtt.connectAsync(scene.broker.url, { clientId: deviceId, clean: true });
  await client.publishAsync(topic(deviceId, "state"), JSON.stringify(birth), { qos: 1, retain: true });
  await client.endAsync();
}

describe("protocol: decommissioning a device by deleting its Node", () => {
  let uidA = "";

  it("retires a device that is away: its topics and state are cleared and its Node stays gone", async () => {
    await apply(barePod({ namespace: ns, testId: id, name: "a", node: gw, graceSeconds: 2 }));
    await eventually(async () => expect(isReady(await getPod("a"))).toBe(true));
    uidA = (await getPod("a")).metadata.uid;
    await scene.device(gw).goOffline();
    await eventually(async () => expect(await deviceConnectedOf(gw)).toBe("False"), { timeoutMs: 30_000 });
    // A restart request while it is away: a command waiting in the durable queue.
    await kubectl(["annotate", "pod", "a", "-n", ns, "devicelet.dev/restart-requested=r1"]);
    await eventually(async () => expect(await stored(`mqtt.commands.${gw}`)).toContain('"r1"'));
    const before = await retainedTopics(gw);
    expect(before.desired).toBeDefined();
    expect(before.state).toBeDefined();
    expect(before.reported).toBeDefined();
    expect(await stored(`mqtt.${gw}`)).toContain('"epoch"');

    await kubectl(["delete", "node", gw]);

    // Settle on devicelet's decision, then look at the world once.
    await eventually(() => expect(decommissioned(gw)).toHaveLength(1), { timeoutMs: 30_000 });
    expect(await retainedTopics(gw)).toEqual({ desired: undefined, state: undefined, reported: undefined });
    // Its state ConfigMaps are deleted, not emptied.
    for (const key of [`mqtt.${gw}`, `mqtt.commands.${gw}`, `mqtt-workloads.${gw}`])
      await eventually(async () => expect(await stored(key)).toBeUndefined());
    expect(await nodeUidOrNone(gw)).toBeUndefined();

    // Kubernetes' pod GC removes the pod bound to the Node that is gone; devicelet, told of the
    // deletion, publishes nothing for the retired device and registers nothing.
    await eventually(async () => expect(await podNames()).not.toContain("a"), { timeoutMs: 150_000 });
    await eventually(() =>
      expect(
        scene.devicelet
          .logLines()
          .some(
            (l) => l.msg === "removed provider work of a pod that no longer exists" && l.pod === `${ns}/a`,
          ),
      ).toBe(true),
    );
    expect(await retainedTopics(gw)).toEqual({ desired: undefined, state: undefined, reported: undefined });
    expect(await nodeUidOrNone(gw)).toBeUndefined();

    // A devicelet started afterwards finds nothing of it. The settle: a device it has never seen,
    // born (retained) while devicelet was down, is read in the same pass and gets its node.
    const late = `${id}-late`;
    expect(await scene.devicelet.stop()).toBe(0);
    await retainedBirth(late);
    await scene.devicelet.restart();
    await eventually(async () => expect(await nodeUidOrNone(late)).toBeDefined());
    expect(await nodeUidOrNone(gw)).toBeUndefined();
    expect(await stored(`mqtt.${gw}`)).toBeUndefined();
  });

  it("registers the Node again when the retired device is born again", async () => {
    expect(scene.device(gw).runningPods()).toEqual([uidA]);
    await scene.device(gw).goOnline();
    await eventually(async () => expect(await deviceConnectedOf(gw)).toBe("True"), { timeoutMs: 30_000 });
    // Back in service from scratch: a new pod runs on it.
    await apply(barePod({ namespace: ns, testId: id, name: "b", node: gw, graceSeconds: 2 }));
    await eventually(async () => expect(isReady(await getPod("b"))).toBe(true));
    expect(await stored(`mqtt.${gw}`)).toContain('"epoch"');
    // The app of the collected pod, still running on the device when it came back, is stopped.
    const uidB = (await getPod("b")).metadata.uid;
    await eventually(() => expect(scene.device(gw).runningPods()).toEqual([uidB]));
  });

  it("registers the Node of a device that is online again, its retained state untouched", async () => {
    const uid = await nodeUid(gw);
    const before = await retainedTopics(gw);
    expect(before.desired?.toString()).toContain((await getPod("b")).metadata.uid);

    await kubectl(["delete", "node", gw]);

    await eventually(async () => {
      const again = await nodeUidOrNone(gw);
      expect(again).toBeDefined();
      expect(again).not.toBe(uid);
    });
    await eventually(async () => expect(await deviceConnectedOf(gw)).toBe("True"));
    const after = await retainedTopics(gw);
    expect(after.desired?.toString()).toBe(before.desired?.toString());
    expect(after.state).toBeDefined();
    expect(after.reported).toBeDefined();
    expect(decommissioned(gw)).toHaveLength(1);
    expect(isReady(await getPod("b"))).toBe(true);
  });
});
