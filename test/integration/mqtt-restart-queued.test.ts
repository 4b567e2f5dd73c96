/**
 * What waits for an offline device survives a devicelet restart (real CLI, real Mosquitto, real
 * control plane, simulated devices):
 * - commands queued for it are kept in the API server: after devicelet is killed and started
 *   again, the device gets them when it comes back — except one whose time to live ended while
 *   devicelet was down (its expiry is absolute), which is reported expired and never sent;
 * - a pod force-deleted while devicelet was down is stopped on the device (the read-back adopts
 *   the device's document, the engine finds no pod object for it), and the pod that still exists
 *   keeps running untouched. (Documents arriving after the read-back timeout go the same way;
 *   with Mosquitto on loopback they never do, so readback.test.ts covers that path.)
 */
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { CommandMessage } from "../../src/protocol/types.ts";
import { eventually } from "../support/eventually.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import { barePod, deviceConnectedOf, eventsOf, expectNodeCount, stopAll } from "../support/mqtt.ts";
import { mqttScene } from "../support/scene.ts";
import { uniqueName } from "../support/testenv.ts";
import { isReady, type PodJson } from "../support/workloads.ts";

const id = uniqueName("mqrq");
const ns = id;
const gw = `${id}-gw-0`;
const scene = mqttScene({
  id,
  devices: [{ id: gw, kind: "gateway" }],
  simulator: { appStartMs: 50 },
});
let recorder: mqtt.MqttClient | undefined;

beforeAll(() => scene.start());
afterAll(() =>
  stopAll(
    () => recorder?.endAsync() ?? Promise.resolve(),
    () => scene.stop(),
  ),
);

const getPod = (name: string) => getJson<PodJson>(["pod", name, "-n", ns]);
const bare = (name: string) => barePod({ namespace: ns, testId: id, name, node: gw, graceSeconds: 2 });

interface ConfigMapJson {
  data?: { key?: string; value?: string };
}
/** The commands devicelet stored for the device, from the API server. */
const storedCommands = async () => {
  const list = await getJson<{ items: ConfigMapJson[] }>([
    "configmaps",
    "-n",
    ns,
    "-l",
    "app.kubernetes.io/managed-by=devicelet",
  ]);
  const value = list.items.find((cm) => cm.data?.key === `mqtt.commands.${gw}`)?.data?.value;
  return JSON.parse(value ?? "[]") as { message: CommandMessage; expiresAt: number }[];
};
const requestRestart = (token: string, ttlSeconds: number) =>
  kubectl([
    "annotate",
    "pod",
    "keep",
    "-n",
    ns,
    "--overwrite",
    `devicelet.dev/restart-requested=${token}`,
    `devicelet.dev/restart-ttl-seconds=${ttlSeconds}`,
  ]);

describe("mqtt provider: a devicelet restart while a device is offline", () => {
  it("keeps queued commands (and their expiry) and stops pods deleted meanwhile", async () => {
    await expectNodeCount(scene.nodeSelector, 1);
    await apply(bare("keep"));
    await apply(bare("gone"));
    await eventually(async () => {
      for (const name of ["keep", "gone"]) expect(isReady(await getPod(name))).toBe(true);
    });
    const keepUid = (await getPod("keep")).metadata.uid;
    const goneUid = (await getPod("gone")).metadata.uid;

    await scene.device(gw).goOffline();
    await eventually(async () => expect(await deviceConnectedOf(gw)).toBe("False"), { timeoutMs: 30_000 });
    // Two restart requests while the device is away: a long-lived one and a short-lived one.
    await requestRestart("long", 600);
    await eventually(async () => expect(await storedCommands()).toHaveLength(1));
    // Its time starts when devicelet receives it, and must not run out before the kill below: 15 s
    // against one or two kubectl calls.
    await requestRestart("short", 15);
    await eventually(async () => expect(await storedCommands()).toHaveLength(2));
    const stored = await storedCommands();
    const short = stored.find((c) => c.message.args?.[0] === "short");

    await scene.devicelet.kill();
    // While devicelet is down: one pod is force-deleted, and the short command's time runs out.
    await kubectl(["delete", "pod", "gone", "-n", ns, "--grace-period=0", "--force"]);
    await eventually(() => expect(Date.now()).toBeGreaterThan(short?.expiresAt ?? Infinity), {
      timeoutMs: 20_000,
    });
    await scene.devicelet.restart();

    const received: CommandMessage[] = [];
    const client = await mqtt.connectAsync(scene.broker.url, { clean: true, reconnectPeriod: 0 });
    recorder = client;
    client.on("message", (_t, payload) =>
      received.push(JSON.parse(payload.toString("utf8")) as CommandMessage),
    );
    await client.subscribeAsync(`devicelet/v1/${gw}/cmd/+`, { qos: 1 });
    await scene.device(gw).goOnline();

    await eventually(
      async () => {
        // The pod deleted while devicelet was down is stopped; the other one runs on, untouched.
        expect(scene.device(gw).runningPods()).toEqual([keepUid]);
        expect(scene.device(gw).runningPods()).not.toContain(goneUid);
        const keep = await getPod("keep");
        expect(keep.metadata.uid).toBe(keepUid);
        expect(isReady(keep)).toBe(true);
        // The long-lived command arrives after the restart; the expired one never does.
        expect(received.map((c) => c.args?.[0])).toEqual(["long"]);
        const expired = (await eventsOf(ns)).filter((e) => e.reason === "CommandExpired");
        expect(expired.map((e) => e.message).join("\n")).toContain("expired while devicelet was restarting");
      },
      { timeoutMs: 60_000 },
    );
    expect(scene.devicelet.logLines().some((l) => l.msg === "restored commands waiting for devices")).toBe(
      true,
    );
  });
});
