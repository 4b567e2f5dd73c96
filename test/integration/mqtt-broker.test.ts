/**
 * The broker restarting under devicelet, and one-shot commands (real CLI, real Mosquitto with
 * persistence, simulated devices):
 * - Mosquitto restarted: devicelet and the devices reconnect by themselves, pods are Running again
 *   with the right statuses, and a pod created afterwards runs (subscriptions and publishing work);
 * - a restart requested with the `devicelet.dev/restart-requested` annotation restarts the app on
 *   an online device (its restart count goes up, the pod is not re-created);
 * - a command whose time to live ends while the device is offline becomes a `CommandExpired` Event.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { eventually } from "../support/eventually.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import { eventsOf, barePod, deviceConnectedOf } from "../support/mqtt.ts";
import { mqttScene } from "../support/scene.ts";
import { uniqueName } from "../support/testenv.ts";
import { condition, isReady, type PodJson } from "../support/workloads.ts";

const id = uniqueName("mqbr");
const ns = id;
const gw = `${id}-gw`;
const gwCmd = `${id}-gw-cmd`;
// Devices on MQTT 3.1.1 (clean sessions, wills without delay); devicelet on 3.1.1 too.
const scene = mqttScene({
  id,
  devices: [
    { id: gw, kind: "gateway" },
    { id: gwCmd, kind: "gateway" },
  ],
  simulator: { protocolVersion: 4 },
});

interface NodeJson {
  metadata: { name: string };
  status: { conditions: { type: string; status: string }[] };
}

// start() resolves once both devices are nodes.
beforeAll(() => scene.start());
afterAll(() => scene.stop());

const getPod = (name: string) => getJson<PodJson>(["pod", name, "-n", ns]);
const bare = (name: string, node: string) => barePod({ namespace: ns, testId: id, name, node });
const connectedOf = deviceConnectedOf;

describe("mqtt provider: broker restart and commands", () => {
  it("converges after Mosquitto restarts: pods Running again, and new pods still run", async () => {
    await apply(bare("before", gw));
    await eventually(async () => expect(isReady(await getPod("before"))).toBe(true));
    const connectsBefore = scene.devicelet.lastMetrics()?.connects ?? 1;

    await scene.broker.restart();
    await eventually(() => expect(scene.devicelet.lastMetrics()?.connects).toBeGreaterThan(connectsBefore), {
      timeoutMs: 30_000,
    });
    await eventually(async () => expect(scene.device(gw).online).toBe(true), { timeoutMs: 30_000 });

    await apply(bare("after", gw));
    await eventually(
      async () => {
        for (const name of ["before", "after"]) {
          const p = await getPod(name);
          expect(isReady(p)).toBe(true);
          expect(condition(p, "devicelet.dev/DeviceConnected")?.status).toBe("True");
        }
        expect(await connectedOf(gw)).toBe("True");
        const node = await getJson<NodeJson>(["node", gw]);
        expect(node.status.conditions.find((c) => c.type === "Ready")?.status).toBe("True");
      },
      { timeoutMs: 60_000 },
    );
    expect(scene.device(gw).runningPods()).toHaveLength(2);
  });

  it("restarts an app when the restart annotation changes, without re-creating the pod", async () => {
    await apply(bare("restartable", gwCmd));
    await eventually(async () => expect(isReady(await getPod("restartable"))).toBe(true));
    const applies = scene.device(gwCmd).applies;
    await kubectl(["annotate", "pod", "restartable", "-n", ns, "devicelet.dev/restart-requested=one"]);
    await eventually(
      async () => {
        const p = await getPod("restartable");
        expect(p.status.containerStatuses?.[0]?.restartCount).toBe(1);
        expect(isReady(p)).toBe(true);
      },
      { timeoutMs: 30_000 },
    );
    // An annotation never reaches the device: no new document, the app was restarted in place.
    expect(scene.device(gwCmd).applies).toBe(applies);
  });

  it("records CommandExpired when a command's time to live ends while the device is offline", async () => {
    await scene.device(gwCmd).goOffline();
    await eventually(async () => expect(await connectedOf(gwCmd)).toBe("False"), { timeoutMs: 30_000 });
    await kubectl([
      "annotate",
      "pod",
      "restartable",
      "-n",
      ns,
      "--overwrite",
      "devicelet.dev/restart-requested=two",
      "devicelet.dev/restart-ttl-seconds=2",
    ]);
    const expired = await eventually(
      async () => {
        const events = (await eventsOf(ns)).filter(
          (e) => e.reason === "CommandExpired" && e.involvedObject.name === "restartable",
        );
        expect(events).toHaveLength(1);
        return events[0];
      },
      { timeoutMs: 30_000 },
    );
    expect(expired?.type).toBe("Warning");
    expect(expired?.message).toMatch(/restart-app.*offline/);
    // Coming back, the device does not run the expired command.
    await scene.device(gwCmd).goOnline();
    await eventually(async () => expect(isReady(await getPod("restartable"))).toBe(true), {
      timeoutMs: 30_000,
    });
    expect((await getPod("restartable")).status.containerStatuses?.[0]?.restartCount).toBe(1);
  });
});
