/**
 * devicelet SIGKILLed while its devices are offline, then started again (real CLI, real Mosquitto,
 * simulated devices). The new process must read back what the old one left in the broker and the
 * durable store, so that:
 * - the nodes of the devices that are away stay registered (births restored from the store);
 * - nothing unchanged is published again: the first document each device applies on reconnecting
 *   is the one the old process published;
 * - everything converges (the pending delete is carried out, the queued pod runs);
 * - no generation is ever reused: what each device applied is strictly increasing.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { DesiredDocument } from "../../src/protocol/types.ts";
import { eventually } from "../support/eventually.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import { barePod, retainedDesired } from "../support/mqtt.ts";
import { mqttScene } from "../support/scene.ts";
import { uniqueName } from "../support/testenv.ts";
import { isReady, type PodJson } from "../support/workloads.ts";

const id = uniqueName("mqrs");
const ns = id;
const gw0 = `${id}-gw-0`;
const gw1 = `${id}-gw-1`;
const mcu = `${id}-gw-1-mcu-0`;
const scene = mqttScene({
  id,
  devices: [
    { id: gw0, kind: "gateway" },
    { id: gw1, kind: "gateway" },
    { id: mcu, kind: "mcu", gateway: gw1 },
  ],
});

interface NodeJson {
  metadata: { name: string };
  status: { conditions: { type: string; status: string }[] };
}

beforeAll(() => scene.start());
afterAll(() => scene.stop());

const nodes = async () => (await getJson<{ items: NodeJson[] }>(["nodes", "-l", scene.nodeSelector])).items;
const connected = (n: NodeJson | undefined) =>
  n?.status.conditions.find((c) => c.type === "DeviceConnected")?.status;
const getPod = (name: string) => getJson<PodJson>(["pod", name, "-n", ns]);
const podNames = async () =>
  (await getJson<{ items: PodJson[] }>(["pods", "-n", ns])).items.map((p) => p.metadata.name);
const bare = (name: string, node: string) =>
  barePod({ namespace: ns, testId: id, name, node, graceSeconds: 2 });

const strictlyIncreasing = (gens: { epoch: string; generation: number }[]) =>
  gens.every(
    (g, i) => i === 0 || (g.epoch === gens[i - 1]?.epoch && g.generation > (gens[i - 1]?.generation ?? 0)),
  );

describe("mqtt provider: devicelet killed while devices are offline", () => {
  it("restarts, re-publishes nothing unchanged, converges, and never reuses a generation", async () => {
    await eventually(async () => expect(await nodes()).toHaveLength(3));
    await apply(bare("a", gw0));
    await apply(bare("b", gw1));
    await apply(bare("m", mcu));
    await eventually(async () => {
      for (const name of ["a", "b", "m"]) expect(isReady(await getPod(name))).toBe(true);
    });
    const uidA = (await getPod("a")).metadata.uid;

    // Both gateways go away (gw-1 takes its microcontroller with it).
    await scene.device(gw0).goOffline();
    await scene.device(gw1).goOffline();
    await eventually(
      async () => {
        const byName = new Map((await nodes()).map((n) => [n.metadata.name, n]));
        for (const d of [gw0, gw1, mcu]) expect(connected(byName.get(d))).toBe("False");
      },
      { timeoutMs: 30_000 },
    );
    // While they are away: a delete for gw-0, a new pod for gw-1.
    await kubectl(["delete", "pod", "a", "-n", ns, "--wait=false"]);
    await apply(bare("c", gw1));
    // A pod on an offline device stays Terminating until the device confirms the stop.
    await eventually(async () => expect((await getPod("a")).metadata.deletionTimestamp).toBeDefined());
    const held = new Map<string, DesiredDocument>();
    await eventually(async () => {
      const d0 = await retainedDesired(scene.broker.url, gw0);
      const d1 = await retainedDesired(scene.broker.url, gw1);
      expect(d0?.tombstones.map((t) => t.uid)).toEqual([uidA]);
      expect(d1?.pods.map((p) => p.name).sort()).toEqual(["b", "c"]);
      held.set(gw0, d0 as DesiredDocument);
      held.set(gw1, d1 as DesiredDocument);
      held.set(mcu, (await retainedDesired(scene.broker.url, mcu)) as DesiredDocument);
    });
    const appliedBefore = new Map([gw0, gw1, mcu].map((d) => [d, scene.device(d).appliedGenerations.length]));

    await scene.devicelet.kill();
    const killedAt = Date.now();
    const linesBefore = scene.devicelet.logLines().length;
    await scene.devicelet.restart();
    // The new process knows the away devices (births restored from the store) and heartbeats their
    // nodes. Nodes Ready and c Pending were true before the kill already: wait for the new
    // process's own doing, then look.
    await eventually(async () => {
      const lines = scene.devicelet.logLines().slice(linesBefore);
      expect(lines.some((l) => l.msg === "restored births of devices that are away")).toBe(true);
      expect(lines.find((l) => l.msg === "devicelet is running")?.nodes).toBe(3);
      for (const n of await nodes()) {
        const lease = await getJson<{ spec: { renewTime: string } }>([
          "lease",
          n.metadata.name,
          "-n",
          "kube-node-lease",
        ]);
        expect(Date.parse(lease.spec.renewTime)).toBeGreaterThan(killedAt);
      }
    });
    const list = await nodes();
    expect(list).toHaveLength(3);
    for (const n of list) expect(n.status.conditions.find((c) => c.type === "Ready")?.status).toBe("True");
    expect((await getPod("c")).status.phase).toBe("Pending");
    await eventually(() =>
      expect(
        scene.devicelet
          .logLines()
          .filter((l) => l.msg === "pod controller started")
          .at(-1)?.adopted,
      ).toBe(4),
    );

    for (const d of [gw0, gw1]) await scene.device(d).goOnline();
    await eventually(
      async () => {
        expect((await podNames()).sort()).toEqual(["b", "c", "m"]);
        for (const name of ["b", "c", "m"]) expect(isReady(await getPod(name))).toBe(true);
        expect(scene.device(gw0).runningPods()).toEqual([]);
        expect((await retainedDesired(scene.broker.url, gw0))?.tombstones).toEqual([]);
      },
      { timeoutMs: 60_000 },
    );
    for (const d of [gw0, gw1, mcu]) {
      const applied = scene.device(d).appliedGenerations;
      expect(strictlyIncreasing(applied), `${d}: ${JSON.stringify(applied)}`).toBe(true);
      const after = applied.slice(appliedBefore.get(d));
      const doc = held.get(d);
      // Nothing was re-published while the device was away: it finds the old process's document.
      if (d !== mcu) expect(after[0]).toEqual({ epoch: doc?.epoch, generation: doc?.generation });
      // The microcontroller's document never changed: it applies nothing at all.
      else expect(after).toEqual([]);
    }
    // The new process's first document (gw-0's tombstone clean-up) is above the old process's block.
    const last0 = scene.device(gw0).appliedGenerations.at(-1);
    expect(last0?.generation).toBeGreaterThan((held.get(gw0)?.generation ?? 0) + 1);
  });
});
