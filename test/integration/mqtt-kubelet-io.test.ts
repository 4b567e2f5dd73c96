/**
 * Logs, exec and stats over the device protocol (docs/protocol.md §§ 3.9, 3.10) through a real
 * Mosquitto running the configuration shipped in examples/mosquitto/ (mutual TLS, the ACL that
 * keeps each device in its own subtree): the MQTT provider on one side, a scripted device with its
 * own certificate on the other. That the sessions work at all shows the ACL grants a device its
 * session and stats topics; a malformed session message is rejected and counted while the
 * provider carries on serving.
 */
import { readFileSync } from "node:fs";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createMqttProvider, type MqttProvider } from "../../providers/mqtt/index.ts";
import { topics } from "../../src/protocol/topics.ts";
import { isNotFound } from "../../src/provider/errors.ts";
import type { PodRef } from "../../src/provider/types.ts";
import { refOf, workload } from "../../src/testing/workload.ts";
import { MemoryStore } from "../../src/testing/memory-store.ts";
import { eventually } from "../support/eventually.ts";
import { startExampleBroker, type ExampleBroker } from "../support/example-broker.ts";
import { scriptedDevice, type ScriptedDevice } from "../support/io-device.ts";

const DEVICE = "gw-kio";
const b64 = (text: string) => Buffer.from(text).toString("base64");
const read = async (chunks: AsyncIterable<string>) => {
  let text = "";
  for await (const chunk of chunks) text += chunk;
  return text;
};
const never = new AbortController().signal;

let broker: ExampleBroker;
let provider: MqttProvider;
let device: ScriptedDevice;
let pod: PodRef;
const stop = new AbortController();

beforeAll(async () => {
  broker = await startExampleBroker("kubelet-io", { identities: ["_devicelet", DEVICE] });
  const own = broker.identity("_devicelet");
  provider = createMqttProvider(
    {
      broker: {
        url: broker.tlsUrl,
        clientId: "devicelet-kubelet-io",
        protocolVersion: 5,
        tls: { ca: broker.caFile, cert: own.cert, key: own.key },
      },
      devices: { allow: [DEVICE] },
      metricsLogIntervalSeconds: 0,
    },
    {
      logger: pino({ level: "silent" }),
      store: new MemoryStore(),
      recordEvent: () => undefined,
      fail: (err) => {
        throw err;
      },
    },
  );
  await provider.start(stop.signal);
  const files = broker.identity(DEVICE);
  device = await scriptedDevice({
    url: broker.tlsUrl,
    deviceId: DEVICE,
    capabilities: { logs: true, exec: true, stats: true, statsIntervalSeconds: 5 },
    connect: {
      protocolVersion: 5,
      ca: readFileSync(broker.caFile),
      cert: readFileSync(files.cert),
      key: readFileSync(files.key),
    },
  });
  await eventually(
    async () => {
      const info = (await provider.listDevices()).find((d) => d.id === DEVICE);
      if (!info?.connected) throw new Error(`${DEVICE} not connected yet`);
    },
    { timeoutMs: 10_000, intervalMs: 20 },
  );
  const w = workload({ name: "kio-0", deviceId: DEVICE, image: "example/app:1" });
  await provider.createPod(w);
  pod = refOf(w);
  // The device's answers: exec echoes its stdin and exits 3; logs send two lines.
  device.onOpen((open) => {
    void (async () => {
      if (open.type === "logs") {
        await device.out(open.streamId, [
          { kind: "io-data", seq: 0, stream: "log", data: b64("one\ntwo\n") },
          { kind: "io-end", seq: 1 },
        ]);
        return;
      }
      await device.out(open.streamId, [{ kind: "io-data", seq: 0, stream: "stdout", data: "" }]);
      const input = await eventually(
        () => {
          const mine = device.inbox.filter((m) => m.streamId === open.streamId);
          if (!mine.some((m) => m.kind === "io-stdin" && m.eof === true)) throw new Error("no eof yet");
          return mine.flatMap((m) => (m.kind === "io-stdin" ? [Buffer.from(m.data, "base64")] : []));
        },
        { timeoutMs: 10_000, intervalMs: 10 },
      );
      await device.out(open.streamId, [
        { kind: "io-data", seq: 1, stream: "stdout", data: Buffer.concat(input).toString("base64") },
        { kind: "io-end", seq: 2, exitCode: 3 },
      ]);
    })();
  });
});

afterAll(async () => {
  await device.close();
  stop.abort();
  await provider.stop();
  await broker.stop();
});

describe("sessions and stats through examples/mosquitto", () => {
  it("serves logs", async () => {
    const stream = await provider.getContainerLogs(pod, "app-v1", { signal: never });
    expect(await read(stream.chunks)).toBe("one\ntwo\n");
  });

  it("runs a command with stdin and returns its exit code", async () => {
    const out: Buffer[] = [];
    const result = await provider.execInContainer(pod, "app-v1", ["cat"], {
      stdin: (async function* () {
        yield Buffer.from("piped\n");
      })(),
      stdout: (chunk) => out.push(Buffer.from(chunk)),
      tty: false,
      signal: never,
    });
    expect(result).toEqual({ exitCode: 3 });
    expect(Buffer.concat(out).toString()).toBe("piped\n");
  });

  it("keeps the device's stats sample", async () => {
    await device.stats({
      node: { memory: { workingSetBytes: 7 } },
      pods: [{ podUid: pod.uid, apps: [{ app: "app-v1", memory: { workingSetBytes: 5 } }] }],
    });
    const stats = await eventually(
      async () => {
        const s = await provider.getStats(DEVICE);
        if (!s.node) throw new Error("no sample yet");
        return s;
      },
      { timeoutMs: 10_000, intervalMs: 20 },
    );
    expect(stats.node?.memory).toEqual({ workingSetBytes: 7 });
    expect(stats.pods).toMatchObject([
      { pod, containers: [{ name: "app-v1", memory: { workingSetBytes: 5 } }] },
    ]);
    expect(isNotFound(await provider.getStats("gw-nobody").catch((err: unknown) => err))).toBe(true);
  });

  it("rejects and counts a malformed session message, and keeps serving", async () => {
    const before = provider.metrics().rejected;
    await device.raw(topics.ioOut(DEVICE, "s-bogus"), JSON.stringify({ protocol: 1, kind: "io-data" }));
    await device.raw(topics.ioOut(DEVICE, "s-bogus"), "not json");
    await eventually(
      () => {
        const now = provider.metrics().rejected;
        if (now.schema === before.schema || now["not-json"] === before["not-json"]) {
          throw new Error(`rejected ${JSON.stringify(now)}`);
        }
      },
      { timeoutMs: 10_000, intervalMs: 20 },
    );
    const after = provider.metrics().rejected;
    expect([after.schema - before.schema, after["not-json"] - before["not-json"]]).toEqual([1, 1]);
    const stream = await provider.getContainerLogs(pod, "app-v1", { signal: never });
    expect(await read(stream.chunks)).toBe("one\ntwo\n");
  });
});
