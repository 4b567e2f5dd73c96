/**
 * The unchanged DeviceSession over {@link IotHubLink}, against the local IoT Hub emulator with the
 * real `azure-iot-device` client, driven from the service side as the provider will: twin PATCH of
 * the desired key with If-Match, direct-method invokes, reads of the twin's reported section.
 */
import pino from "pino";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import {
  makeDeviceCertificate,
  startIotHubEmulator,
  type DeviceCertificate,
  type IotHubEmulator,
} from "../../hack/iothub-emulator/index.ts";
import {
  emulatorRegistry,
  writeDesiredText,
  emulatorServiceClient,
} from "../../hack/iothub-emulator/service-sdk.ts";
import type { Hub } from "../../hack/iothub-emulator/hub.ts";
import type { Clock } from "../base/clock.ts";
import { FakeClock } from "../base/fake-clock.ts";
import { encodeMessage } from "../protocol/codec.ts";
import type { AckMessage, DesiredDocument, PresenceMessage, ReportedDocument } from "../protocol/types.ts";
import { command, desiredDocument, desiredPod } from "./fixtures.ts";
import {
  decodeTwinDocument,
  encodeTwinDocument,
  IOTHUB_MAPPING,
  IotHubLink,
  TWIN_SECTION_LIMIT_BYTES,
  type IotHubLinkOptions,
} from "./iothub-link.ts";
import { DeviceSession, type BirthInfo } from "./session.ts";
import { SimRuntime } from "./sim-runtime.ts";

const logger = pino({ level: "silent" });
const birth: BirthInfo = {
  deviceClass: "gateway",
  os: "linux",
  arch: "arm64",
  capacity: { cpu: "2", memory: "1Gi", pods: "10" },
  // A label key with `.` and `/`: not a valid twin key, fine inside the encoded document.
  labels: { "example.com/line": "a" },
  capabilities: { maxMessageBytes: 65536, encodings: ["json"], runtime: "process", logs: false, exec: false },
};
const until = <T>(probe: () => Promise<T> | T) => vi.waitFor(probe, { timeout: 10_000, interval: 50 });

let emulator: IotHubEmulator;
const sessions: DeviceSession[] = [];
beforeAll(async () => {
  emulator = await startIotHubEmulator();
});
afterAll(async () => {
  await emulator.close();
});
afterEach(async () => {
  await Promise.all(sessions.splice(0).map((s) => s.stop()));
});

let counter = 0;
/** `identity` adds the device to the hub and says how it connects; by default a SAS device over MQTT. */
async function onlineDevice(
  o: {
    methodAnswerMs?: number;
    clock?: Clock;
    heartbeatSeconds?: number;
    random?: () => number;
    identity?: (deviceId: string) => Pick<IotHubLinkOptions, "connectionString" | "x509" | "transport">;
  } = {},
) {
  counter += 1;
  const deviceId = `iot-${counter}`;
  const {
    identity = (id: string) => ({ connectionString: emulator.addDevice(id).connectionString }),
    ...rest
  } = o;
  const runtime = new SimRuntime();
  const link = new IotHubLink({
    deviceId,
    ca: emulator.ca,
    logger,
    reconnectMs: 100,
    ...identity(deviceId),
    ...rest,
  });
  const session = new DeviceSession({ deviceId, link, runtime, device: birth, logger, reportCoalesceMs: 1 });
  sessions.push(session);
  await session.start();
  await session.whenOnline();
  return { deviceId, session, runtime, link };
}

const registry = () => emulatorRegistry(emulator);

async function reportedSection(deviceId: string): Promise<Record<string, unknown>> {
  return (await registry().getTwin(deviceId)).responseBody.properties.reported;
}
async function reportedDoc<T>(deviceId: string, key: string): Promise<T | undefined> {
  const text = decodeTwinDocument((await reportedSection(deviceId))[key]);
  return text === undefined ? undefined : (JSON.parse(text) as T);
}
const report = (id: string) => reportedDoc<ReportedDocument>(id, IOTHUB_MAPPING.reported.reported);

/** The provider's half: the document under the desired key, conditional on the twin's etag. */
const writeDesired = (deviceId: string, doc: DesiredDocument) =>
  writeDesiredText(registry(), deviceId, encodeMessage(doc).toString());

describe("DeviceSession over IotHubLink", () => {
  it("receives a desired document from the twin, applies it and reports state, acks and birth", async () => {
    const { deviceId, session } = await onlineDevice();
    const state = await reportedDoc<PresenceMessage>(deviceId, IOTHUB_MAPPING.reported.state);
    expect(state).toMatchObject({ state: "online", bootId: session.bootId, device: birth });
    expect((await reportedSection(deviceId))[IOTHUB_MAPPING.reported.presence]).toMatchObject({ seq: 1 });
    const will = await reportedDoc<PresenceMessage>(deviceId, IOTHUB_MAPPING.reported.will);
    expect(will).toMatchObject({ state: "lost", bootId: session.bootId });
    // The will repeats the seq of its connection's birth (docs/protocol.md § 5), as over MQTT.
    expect(will?.seq).toBe(state?.seq);

    const pod = desiredPod({ uid: "p1" });
    await writeDesired(deviceId, desiredDocument({ deviceId, generation: 1, pods: [pod] }));
    await until(async () => {
      expect(await report(deviceId)).toMatchObject({
        epoch: "epoch-1",
        appliedGeneration: 1,
        pods: [{ uid: "p1", hash: pod.hash }],
      });
    });
    const ack = await reportedDoc<AckMessage>(deviceId, IOTHUB_MAPPING.reported.ack);
    expect(ack).toMatchObject({ kind: "ack", generation: 1, stage: "applied" });
    expect(session.applies).toBe(1);
  });

  it("heartbeats between 0.8 and 1 interval apart, so devices that connected together drift apart", async () => {
    const clock = new FakeClock(Date.now());
    const { deviceId } = await onlineDevice({ clock, heartbeatSeconds: 10, random: () => 0.5 });
    const seq = async () =>
      ((await reportedSection(deviceId))[IOTHUB_MAPPING.reported.presence] as { seq?: number } | undefined)
        ?.seq;
    expect(await seq()).toBe(1);
    await clock.advanceAsync(8_900); // 10 s × (1 − 0.2 × 0.5) = 9 s
    expect(await seq()).toBe(1);
    await clock.advanceAsync(200);
    await until(async () => expect(await seq()).toBe(2));
  });

  it("announces itself again after its heartbeat could not be written for two intervals", async () => {
    const clock = new FakeClock(Date.now());
    const { deviceId } = await onlineDevice({ clock, heartbeatSeconds: 10, random: () => 0.5 });
    const state = () => reportedDoc<PresenceMessage>(deviceId, IOTHUB_MAPPING.reported.state);
    const before = await state();
    // No twin update for now: every heartbeat and its retries are refused (429).
    emulator.hub.setThrottle({ twinUpdate: 0.001 });
    emulator.hub.consume("twinUpdate", "service");
    try {
      const throttledBefore = emulator.hub.throttled();
      for (let waited = 0; waited < 24_000; waited += 2_000) {
        await clock.advanceAsync(2_000);
        await new Promise((r) => setTimeout(r, 30));
      }
      expect(emulator.hub.throttled()).toBeGreaterThan(throttledBefore);
      // One interval late is not two: nothing announced yet.
      expect((await state())?.seq).toBe(before?.seq);
    } finally {
      emulator.hub.setThrottle({});
    }
    // The next heartbeat goes through, more than two intervals after the last one: a new birth.
    await until(async () => {
      await clock.advanceAsync(1_000);
      const now = await state();
      expect(now).toMatchObject({ state: "online", bootId: before?.bootId, device: birth });
      expect(now?.seq).toBeGreaterThan(before?.seq ?? Number.POSITIVE_INFINITY);
    });
  });

  it("writes a report again when the hub refused it (429), so no status is lost", async () => {
    const { deviceId, session } = await onlineDevice();
    // No twin update for five seconds: the device's acks and report are refused. (The provider's
    // write goes to the hub directly, outside the quota.)
    emulator.hub.setThrottle({ twinUpdate: 0.2 });
    emulator.hub.consume("twinUpdate", "service");
    try {
      const doc = desiredDocument({ deviceId, generation: 1, pods: [desiredPod({ uid: "p1" })] });
      const value = encodeTwinDocument(encodeMessage(doc).toString());
      emulator.hub.patchTwin(
        deviceId,
        { properties: { desired: { [IOTHUB_MAPPING.desiredKey]: value } } },
        "*",
      );
      await until(() => expect(session.applies).toBe(1));
      expect(emulator.hub.throttled()).toBeGreaterThan(0);
    } finally {
      emulator.hub.setThrottle({});
    }
    await until(async () => expect(await report(deviceId)).toMatchObject({ appliedGeneration: 1 }));
  });

  it("catches a desired patch missed while offline by reading the full twin on reconnect", async () => {
    const { deviceId, session } = await onlineDevice();
    await writeDesired(
      deviceId,
      desiredDocument({ deviceId, generation: 1, pods: [desiredPod({ uid: "a" })] }),
    );
    await until(async () => expect((await report(deviceId))?.appliedGeneration).toBe(1));

    await session.goOffline();
    await until(async () =>
      expect((await registry().get(deviceId)).responseBody.connectionState).toBe("Disconnected"),
    );
    const pods = [desiredPod({ uid: "b" })];
    await writeDesired(deviceId, desiredDocument({ deviceId, generation: 2, pods }));
    await session.goOnline();
    await until(async () =>
      expect(await report(deviceId)).toMatchObject({ appliedGeneration: 2, pods: [{ uid: "b" }] }),
    );
    expect(session.appliedGenerations.map((g) => g.generation)).toEqual([1, 2]);
  });

  it("ignores a desired patch whose $version is not newer than the last seen", async () => {
    // The hub's own channel to the device, to replay an old patch over the real MQTT connection.
    const links: Parameters<Hub["setLink"]>[1][] = [];
    const setLink = emulator.hub.setLink.bind(emulator.hub);
    const spy = vi.spyOn(emulator.hub, "setLink").mockImplementation((id, link) => {
      links.push(link);
      setLink(id, link);
    });
    const { deviceId, session } = await onlineDevice();
    spy.mockRestore();
    const channel = links.at(-1);
    if (!channel) throw new Error("no device channel captured");

    await writeDesired(
      deviceId,
      desiredDocument({ deviceId, generation: 1, pods: [desiredPod({ uid: "a" })] }),
    );
    await until(async () => expect((await report(deviceId))?.appliedGeneration).toBe(1));
    const version = (await registry().getTwin(deviceId)).responseBody.properties.desired.$version as number;

    // Generation 5 under the current $version: a replay, not a change; it must not be applied.
    const stale = encodeTwinDocument(
      encodeMessage(
        desiredDocument({ deviceId, generation: 5, pods: [desiredPod({ uid: "z" })] }),
      ).toString(),
    );
    channel.sendDesiredPatch({ [IOTHUB_MAPPING.desiredKey]: stale, $version: version });
    // The next real change is applied, so the stale one had its chance to arrive first.
    await writeDesired(
      deviceId,
      desiredDocument({ deviceId, generation: 2, pods: [desiredPod({ uid: "b" })] }),
    );
    await until(async () => expect((await report(deviceId))?.appliedGeneration).toBe(2));
    expect(session.appliedGenerations.map((g) => g.generation)).toEqual([1, 2]);
  });

  it("reads the full twin when a patch's $version shows that one was missed", async () => {
    const links: Parameters<Hub["setLink"]>[1][] = [];
    const setLink = emulator.hub.setLink.bind(emulator.hub);
    const spy = vi.spyOn(emulator.hub, "setLink").mockImplementation((id, link) => {
      // The hub's channel to the device, losing the first patch it is given.
      let lose = 1;
      const lossy = link && {
        get acceptsMethods() {
          return link.acceptsMethods;
        },
        invokeMethod: link.invokeMethod.bind(link),
        sendDesiredPatch: (patch: Parameters<typeof link.sendDesiredPatch>[0]) => {
          if (lose-- > 0) return;
          link.sendDesiredPatch(patch);
        },
      };
      if (lossy) links.push(lossy);
      setLink(id, lossy);
    });
    const { deviceId, session } = await onlineDevice();
    spy.mockRestore();
    expect(links).toHaveLength(1);

    await writeDesired(
      deviceId,
      desiredDocument({ deviceId, generation: 1, pods: [desiredPod({ uid: "a" })] }),
    );
    // The next patch does not touch the document: only the gap in $version shows it was missed.
    const { etag } = (await registry().getTwin(deviceId)).responseBody;
    await registry().updateTwin(deviceId, { properties: { desired: { unrelated: 1 } } }, etag);
    await until(async () => expect((await report(deviceId))?.appliedGeneration).toBe(1));
    expect(session.applies).toBe(1);
  });

  it("delivers a command by direct method and answers it with the session's ack", async () => {
    const { deviceId, session } = await onlineDevice();
    await writeDesired(
      deviceId,
      desiredDocument({ deviceId, generation: 1, pods: [desiredPod({ uid: "p" })] }),
    );
    await until(async () => expect((await report(deviceId))?.appliedGeneration).toBe(1));
    await until(() => expect(emulator.hub.acceptsMethods(deviceId)).toBe(true));

    const restart = command({ deviceId, commandId: "c1", command: "restart-app", podUid: "p", app: "main" });
    const events: { kind: string | undefined; body: unknown }[] = [];
    const off = emulator.onDeviceMessage((m) => {
      if (m.deviceId === deviceId)
        events.push({ kind: m.properties[IOTHUB_MAPPING.kindProperty], body: JSON.parse(m.body.toString()) });
    });
    try {
      const answer = await emulatorServiceClient(emulator).invokeDeviceMethod(deviceId, {
        methodName: IOTHUB_MAPPING.commandMethod,
        payload: restart,
        responseTimeoutInSeconds: 10,
      });
      expect(answer.result).toMatchObject({
        status: 200,
        payload: { kind: "command-ack", commandId: "c1", bootId: session.bootId },
      });
      await until(async () => expect((await report(deviceId))?.pods[0]?.apps[0]?.restartCount).toBe(1));
      // Every command ack also travels as a device-to-cloud message; the final one is `done`.
      await until(() =>
        expect(events).toContainEqual({
          kind: "ack",
          body: expect.objectContaining({ commandId: "c1", stage: "done" }) as unknown,
        }),
      );
    } finally {
      off();
    }
  });

  it("refuses a report that would take the reported section over 32 KB, and writes nothing", async () => {
    const { deviceId, session } = await onlineDevice();
    const before = await reportedSection(deviceId);
    const big = "x".repeat(TWIN_SECTION_LIMIT_BYTES);
    await expect(session.publishRaw("reported", JSON.stringify({ big }), { retain: true })).rejects.toThrow(
      /devicelet_reported refused: the reported section would be \d+ bytes, over IoT Hub's 32768-byte/,
    );
    const after = await reportedSection(deviceId);
    expect(after[IOTHUB_MAPPING.reported.reported]).toEqual(before[IOTHUB_MAPPING.reported.reported]);
  });
});

describe("IotHubLink transports and credentials", () => {
  it("runs over MQTT over WebSockets: a desired document is applied and reported", async () => {
    const { deviceId, session } = await onlineDevice({
      identity: (id) => ({
        connectionString: emulator.addDevice(id).webSocketConnectionString,
        transport: "mqttWs",
      }),
    });
    const pod = desiredPod({ uid: "ws" });
    await writeDesired(deviceId, desiredDocument({ deviceId, generation: 1, pods: [pod] }));
    await until(async () =>
      expect(await report(deviceId)).toMatchObject({
        appliedGeneration: 1,
        pods: [{ uid: "ws", hash: pod.hash }],
      }),
    );
    expect(session.applies).toBe(1);
  });

  it("authenticates with an X.509 certificate asked for at each connect, so a rotated one is used", async () => {
    let current: DeviceCertificate | undefined;
    const given: string[] = [];
    const { deviceId, session } = await onlineDevice({
      identity: (id) => {
        current = makeDeviceCertificate({ deviceId: id });
        const { connectionString } = emulator.addDevice(id, {
          x509: { primaryThumbprint: current.thumbprint },
        });
        return {
          connectionString,
          x509: () => {
            if (current === undefined) throw new Error("no certificate yet");
            given.push(current.thumbprint);
            return Promise.resolve(current);
          },
        };
      },
    });
    const first = current?.thumbprint;
    expect(given).toEqual([first]);

    // The certificate is renewed: the hub holds only the new thumbprint from now on.
    await session.goOffline();
    const renewed = makeDeviceCertificate({ deviceId });
    const registry = emulatorRegistry(emulator);
    await registry.update({
      deviceId,
      authentication: { type: "selfSigned", x509Thumbprint: { primaryThumbprint: renewed.thumbprint } },
    });
    current = renewed;
    await session.goOnline();
    await until(async () =>
      expect((await registry.get(deviceId)).responseBody.connectionState).toBe("Connected"),
    );
    expect(given).toEqual([first, renewed.thumbprint]);
  });

  it("refuses a connection string whose credential does not fit the options", () => {
    const base = { deviceId: "d", logger };
    const sas = "HostName=h.example;DeviceId=d;SharedAccessKey=a2V5";
    const x509 = () => Promise.resolve({ cert: "", key: "" });
    expect(() => new IotHubLink({ ...base, connectionString: sas, x509 })).toThrow(
      /exactly one of a SAS key and x509/,
    );
    expect(
      () => new IotHubLink({ ...base, connectionString: "HostName=h.example;DeviceId=d;x509=true" }),
    ).toThrow(/says x509=true, but no x509 certificate/);
    expect(
      () => new IotHubLink({ ...base, connectionString: "HostName=h.example;DeviceId=d", x509 }),
    ).toThrow(/must say x509=true/);
  });
});

describe("twin documents", () => {
  it("cut JSON text into parts of at most 4 KB and put it together again, deleting surplus parts", () => {
    const text = JSON.stringify({ s: "é😀".repeat(2000) });
    const doc = encodeTwinDocument(text, 40);
    expect(decodeTwinDocument(doc)).toBe(text);
    for (const [key, value] of Object.entries(doc)) {
      if (typeof value === "string") expect(Buffer.byteLength(value)).toBeLessThanOrEqual(4096);
      else if (key !== "n") expect(value).toBeNull();
    }
    expect(decodeTwinDocument({ n: 2, p0: "{}" })).toBeUndefined();
  });
});
