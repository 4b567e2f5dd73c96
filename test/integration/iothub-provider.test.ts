/**
 * `devicelet run` with `provider.type: iothub` as a user starts it (the connection string from a
 * file, the hub's CA for a private endpoint), against the local IoT Hub emulator and simulated
 * devices on `azure-iot-device`: the nodes it makes, a pod that runs only once its device says
 * so, a document the twin cannot hold refused with the limit named, a delete whose tombstone
 * stays in the twin until the device confirms it, commands by direct method (their results through
 * the emulator's Event Hubs-compatible endpoint) and their time to live, and a bad key that is
 * named, not hidden.
 */
import { createHash } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startIotHubEmulator, type IotHubEmulator } from "../../hack/iothub-emulator/index.ts";
import { decodeTwinDocument } from "../../src/protocol/iothub-twin.ts";
import { startSimulator, type Simulator } from "../../src/device/simulator.ts";
import { runDevicelet, type DeviceletProcess } from "../support/devicelet.ts";
import { eventually } from "../support/eventually.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import { uniqueName } from "../support/testenv.ts";
import { deviceConnectedOf, eventsOf } from "../support/mqtt.ts";
import { isReady, pod, type PodJson } from "../support/workloads.ts";

const id = uniqueName("hubprov");
const ns = id;
const [gw, mcu] = [`${id}-gw`, `${id}-mcu`];
let emulator: IotHubEmulator;
let sim: Simulator;
let devicelet: DeviceletProcess;
const dir = mkdtempSync(path.join(tmpdir(), `${id}-`));

/** The iothub provider config for `devicelet run`, with the service key given. */
const providerConfig = (key: string, events = false) => {
  // Named by a digest of the key: a base64 key may hold "/", which would make the name a path.
  const secret = path.join(
    dir,
    `connection-string-${createHash("sha256").update(key).digest("hex").slice(0, 12)}`,
  );
  writeFileSync(
    secret,
    emulator.serviceConnectionString.replace(/SharedAccessKey=[^;]*/, `SharedAccessKey=${key}`),
  );
  const caFile = path.join(dir, "hub-ca.pem");
  writeFileSync(caFile, emulator.ca);
  return {
    type: "iothub",
    config: {
      hub: { connectionStringFile: secret, endpoint: emulator.serviceUrl, caFile, sweepIntervalSeconds: 1 },
      devices: { ids: [gw, mcu] },
      desired: { maxDocumentBytes: 32768 },
      health: { disconnectedGraceSeconds: 1 },
      ...(events
        ? {
            events: {
              connectionString: emulator.eventHubsConnectionString,
              customEndpointAddress: emulator.eventHubsWebSocketEndpointAddress,
              caFile,
            },
          }
        : {}),
    },
  };
};

const desiredInTwin = (deviceId: string) => {
  const twin = emulator.hub.twin(deviceId) as { properties: { desired: Record<string, unknown> } };
  const text = decodeTwinDocument(twin.properties.desired["devicelet"]);
  return text === undefined
    ? undefined
    : (JSON.parse(text) as { pods: { uid: string }[]; tombstones: { uid: string }[] });
};
const getPod = (name: string) => getJson<PodJson>(["pod", name, "-n", ns]);

beforeAll(async () => {
  await kubectl(["create", "namespace", ns]);
  emulator = await startIotHubEmulator({ host: "127.0.0.1" });
  sim = await startSimulator({
    iothub: {
      connectionString: (d) => emulator.addDevice(d).connectionString,
      ca: emulator.ca,
      heartbeatSeconds: 5,
    },
    appStartMs: 200,
    devices: [
      { id: gw, kind: "gateway" },
      { id: mcu, kind: "mcu" },
    ],
  });
  devicelet = await runDevicelet({
    id,
    expectNodes: 2,
    config: () => ({ provider: providerConfig(emulator.servicePolicy.key, true) }),
  });
});

afterAll(async () => {
  await devicelet.stop();
  await sim.stop();
  await emulator.close();
  await kubectl(["delete", "namespace", ns, "--wait=false"]);
});

describe("devicelet run with the iothub provider", () => {
  it("makes a node of each selected device, labelled with its transport and device class", async () => {
    const nodes = await getJson<{ items: { metadata: { name: string; labels: Record<string, string> } }[] }>([
      "nodes",
      "-l",
      devicelet.nodeSelector,
    ]);
    expect(nodes.items.map((n) => n.metadata.name).sort()).toEqual([gw, mcu].sort());
    for (const n of nodes.items) expect(n.metadata.labels["devicelet.dev/transport"]).toBe("iothub");
    expect(
      nodes.items.find((n) => n.metadata.name === mcu)?.metadata.labels["devicelet.dev/device-class"],
    ).toBe("mcu");
  });

  it("runs a pod once the device reports it running, with the document in the twin", async () => {
    await apply(
      pod({
        namespace: ns,
        name: "sensor",
        testId: id,
        node: gw,
        spec: "  containers: [{ name: app, image: example/app:1 }]",
      }),
    );
    const running = await eventually(async () => {
      const p = await getPod("sensor");
      expect(p.status.phase).toBe("Running");
      return p;
    });
    expect(desiredInTwin(gw)?.pods.map((p) => p.uid)).toEqual([running.metadata.uid]);
    expect(sim.device(gw).runningPods()).toContain(running.metadata.uid);
  });

  it("refuses a pod the twin cannot hold, naming IoT Hub's limit, and writes nothing of it", async () => {
    await apply(
      pod({
        namespace: ns,
        name: "bulky",
        testId: id,
        node: mcu,
        spec: `  containers:
    - name: app
      image: example/app:1
      env: [{ name: BLOB, value: "${"x".repeat(40 * 1024)}" }]`,
      }),
    );
    const p = await eventually(async () => {
      const got = await getPod("bulky");
      expect(got.status.containerStatuses?.[0]?.state.waiting?.reason).toBe("DocumentTooLarge");
      return got;
    });
    expect(p.status.phase).toBe("Pending");
    expect(p.status.containerStatuses?.[0]?.state.waiting?.message).toMatch(/IoT Hub's 32768-byte limit/);
    expect(desiredInTwin(mcu)?.pods.map((x) => x.uid) ?? []).not.toContain(p.metadata.uid);
  });

  it("keeps a deleted pod's tombstone in the twin until the device confirms, then removes both", async () => {
    const uid = (await getPod("sensor")).metadata.uid;
    await sim.device(gw).goOffline();
    await kubectl(["delete", "pod", "sensor", "-n", ns, "--wait=false"]);
    await eventually(() => expect(desiredInTwin(gw)?.tombstones.map((t) => t.uid)).toEqual([uid]));
    // The device is away: the pod stays Terminating and the tombstone stays.
    expect((await getPod("sensor")).metadata.deletionTimestamp).toBeDefined();
    await sim.device(gw).goOnline();
    await eventually(async () => {
      const list = await getJson<{ items: PodJson[] }>(["pods", "-n", ns]);
      expect(list.items.map((p) => p.metadata.name)).not.toContain("sensor");
    });
    expect(sim.device(gw).runningPods()).not.toContain(uid);
    await eventually(() => expect(desiredInTwin(gw)).toMatchObject({ pods: [], tombstones: [] }));
  });

  it("restarts an app by direct method, and hears it done through the event stream", async () => {
    await apply(
      pod({
        namespace: ns,
        name: "restartable",
        testId: id,
        node: gw,
        spec: "  containers: [{ name: app, image: example/app:1 }]",
      }),
    );
    await eventually(async () => expect(isReady(await getPod("restartable"))).toBe(true));
    const applies = sim.device(gw).applies;
    await kubectl(["annotate", "pod", "restartable", "-n", ns, "devicelet.dev/restart-requested=one"]);
    await eventually(
      async () => {
        const p = await getPod("restartable");
        expect(p.status.containerStatuses?.[0]?.restartCount).toBe(1);
        expect(isReady(p)).toBe(true);
      },
      { timeoutMs: 30_000 },
    );
    // The final stage comes only as a device-to-cloud message (docs/iothub.md, Commands).
    await eventually(() =>
      expect(
        devicelet.logLines().some((l) => l.msg === "restart command finished" && l.stage === "done"),
      ).toBe(true),
    );
    expect(sim.device(gw).applies).toBe(applies);
  });

  it("records CommandExpired when a command's time to live ends while the device is offline", async () => {
    await sim.device(gw).goOffline();
    await eventually(async () => expect(await deviceConnectedOf(gw)).toBe("False"), { timeoutMs: 30_000 });
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
    await sim.device(gw).goOnline();
    await eventually(async () => expect(isReady(await getPod("restartable"))).toBe(true), {
      timeoutMs: 30_000,
    });
    expect((await getPod("restartable")).status.containerStatuses?.[0]?.restartCount).toBe(1);
  });

  it("names a service key the hub refuses, and keeps trying", async () => {
    const bad = await runDevicelet({
      id: `${id}-bad`,
      config: () => ({ provider: providerConfig(Buffer.from("not the key").toString("base64")) }),
    });
    try {
      await eventually(() => expect(JSON.stringify(bad.logLines())).toMatch(/401/), { timeoutMs: 30_000 });
      expect(
        await Promise.race([bad.exited(), new Promise((r) => setTimeout(() => r("running"), 1_000))]),
      ).toBe("running");
    } finally {
      expect(await bad.stop()).toBe(0);
    }
  });
});
