/**
 * The outbound ceiling against a real broker limit: Mosquitto with `max_packet_size` 100 KiB, a
 * device announcing 16 MiB, devicelet with `desired.maxDocumentBytes` 64 KiB. A pod whose document
 * would be larger than the ceiling is held back (`DocumentTooLarge`) instead of published; the
 * device's other pods keep running, devicelet's connection is never dropped by the broker, and a
 * pod created afterwards runs.
 *
 * Without the ceiling devicelet would publish the 16 MiB device's document at its full size; the
 * broker refuses a packet over its limit and closes the connection, so no pod of that device would
 * reach it.
 */
import { mkdtempSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startMosquitto } from "../../hack/testenv/mosquitto.ts";
import { eventually } from "../support/eventually.ts";
import { apply, getJson } from "../support/kubectl.ts";
import { mqttScene } from "../support/scene.ts";
import { uniqueName } from "../support/testenv.ts";
import { isReady, pod, type PodJson } from "../support/workloads.ts";

const id = uniqueName("mqceil");
const ns = id;
const gw = `${id}-gw`;
const scene = mqttScene({
  id,
  devices: [{ id: gw, kind: "gateway", maxMessageBytes: 16 * 1024 * 1024 }],
  broker: (name) =>
    startMosquitto({
      dir: mkdtempSync(path.join(os.tmpdir(), `devicelet-mosquitto-${name}-`)),
      maxPacketSize: 100 * 1024,
    }),
  provider: { desired: { maxDocumentBytes: 64 * 1024 } },
  simulator: { appStartMs: 50 },
});

beforeAll(() => scene.start());
afterAll(() => scene.stop());

const podWithEnv = (name: string, bytes: number) =>
  pod({
    namespace: ns,
    name,
    testId: id,
    node: gw,
    spec: `  containers:\n    - name: app\n      image: example/app:1\n      env: [{ name: BLOB, value: "${"x".repeat(bytes)}" }]`,
  });

const podJson = (name: string) => getJson<PodJson>(["pod", name, "-n", ns]);

describe("mqtt provider: outbound size ceiling", () => {
  it("holds back a pod over the ceiling instead of publishing what the broker refuses", async () => {
    await apply(podWithEnv("small", 100));
    await eventually(async () => expect(isReady(await podJson("small"))).toBe(true));

    // 120 KiB of env: under the device's 16 MiB, over the 64 KiB ceiling and the broker's 100 KiB.
    await apply(podWithEnv("big", 120 * 1024));
    await eventually(async () =>
      expect(JSON.stringify((await podJson("big")).status)).toContain("DocumentTooLarge"),
    );

    // Still working: a pod created afterwards runs, and the small one never stopped.
    await apply(podWithEnv("after", 100));
    await eventually(async () => expect(isReady(await podJson("after"))).toBe(true));
    expect(isReady(await podJson("small"))).toBe(true);
    expect(isReady(await podJson("big"))).toBe(false);
    const uids = await Promise.all(["after", "small"].map(async (n) => (await podJson(n)).metadata.uid));
    expect(scene.device(gw).runningPods().sort()).toEqual(uids.sort());
    // The broker never had to close devicelet's connection.
    expect(
      scene.devicelet.logLines().filter((l) => String(l.msg).startsWith("disconnected from broker")),
    ).toEqual([]);
  });
});
