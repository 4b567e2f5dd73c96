/**
 * Logs, exec and stats of the MQTT provider over the device protocol (docs/protocol.md §§ 3.9,
 * 3.10), end to end through a real broker (aedes, in this process) with a scripted device that
 * answers each session as the test says. What is asserted is what reaches the client (text,
 * exit code, provider error) and what the device received.
 */
import mqtt from "mqtt";
import pino from "pino";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { startEmbeddedBroker, type EmbeddedBroker } from "../../src/broker/embedded.ts";
import { topics } from "../../src/protocol/topics.ts";
import type { DeviceCapabilities, IoInMessage } from "../../src/protocol/types.ts";
import { isNotFound, isTransient, isUnsupported } from "../../src/provider/errors.ts";
import type { PodRef } from "../../src/provider/types.ts";
import { refOf, workload } from "../../src/testing/workload.ts";
import { eventually } from "../../test/support/eventually.ts";
import { scriptedDevice, type ScriptedDevice } from "../../test/support/io-device.ts";
import { MemoryStore } from "../../test/support/memory-store.ts";
import { createMqttProvider, type MqttProvider } from "./index.ts";

const b64 = (text: string) => Buffer.from(text).toString("base64");
const read = async (chunks: AsyncIterable<string>) => {
  let text = "";
  for await (const chunk of chunks) text += chunk;
  return text;
};
const never = new AbortController().signal;

let broker: EmbeddedBroker;
let provider: MqttProvider;
const stop = new AbortController();
/** Every session message devicelet published, as the broker passed it on. */
const published: string[] = [];
let watcher: mqtt.MqttClient;
const devices: ScriptedDevice[] = [];

beforeAll(async () => {
  broker = await startEmbeddedBroker();
  watcher = await mqtt.connectAsync(broker.url, { clientId: "io-watcher", protocolVersion: 4 });
  watcher.on("message", (topic) => published.push(topic));
  await watcher.subscribeAsync("devicelet/v1/+/io/+", { qos: 1 });
  provider = createMqttProvider(
    {
      broker: { url: broker.url, clientId: "devicelet-io-unit" },
      devices: { allow: ["*"] },
      sessions: { openTimeoutSeconds: 1, gapTimeoutSeconds: 1, idleSeconds: 3, maxPerDevice: 2 },
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
});

afterEach(async () => {
  await Promise.all(devices.splice(0).map((d) => d.close()));
});

afterAll(async () => {
  stop.abort();
  await provider.stop();
  await watcher.endAsync();
  await broker.close();
});

let n = 0;
/** A device born with `capabilities` and running one pod with the app `app-v1`. */
async function deviceWithPod(
  capabilities: Partial<DeviceCapabilities>,
): Promise<{ device: ScriptedDevice; pod: PodRef }> {
  const deviceId = `gw-io-${++n}`;
  const device = await scriptedDevice({ url: broker.url, deviceId, capabilities });
  devices.push(device);
  await eventually(
    async () => {
      const info = (await provider.listDevices()).find((d) => d.id === deviceId);
      if (!info?.connected) throw new Error(`${deviceId} not connected yet`);
    },
    { timeoutMs: 5000, intervalMs: 10 },
  );
  const w = workload({ name: `pod-${n}`, deviceId, image: "example/app:1" });
  await provider.createPod(w);
  return { device, pod: refOf(w) };
}

describe("logs", () => {
  it("asks for the tail and passes whole lines on, however the device cut its chunks", async () => {
    const { device, pod } = await deviceWithPod({ logs: true });
    device.onOpen((open) => {
      void device.out(open.streamId, [
        { kind: "io-data", seq: 0, stream: "log", data: b64("b\nc") },
        { kind: "io-data", seq: 1, stream: "log", data: b64("\n") },
        { kind: "io-end", seq: 2 },
      ]);
    });
    const stream = await provider.getContainerLogs(pod, "app-v1", {
      tailLines: 2,
      timestamps: true,
      signal: never,
    });
    expect(stream.notice).toBeUndefined();
    expect(await read(stream.chunks)).toBe("b\nc\n");
    expect(device.inbox[0]).toMatchObject({
      kind: "io-open",
      type: "logs",
      podUid: pod.uid,
      app: "app-v1",
      logs: { tailLines: 2, timestamps: true },
      maxChunkBytes: 32768,
      idleSeconds: 3,
    });
  });

  it("follows until the client goes, then tells the device with io-cancel", async () => {
    const { device, pod } = await deviceWithPod({ logs: true });
    device.onOpen(
      (open) =>
        void device.out(open.streamId, [{ kind: "io-data", seq: 0, stream: "log", data: b64("one\n") }]),
    );
    const client = new AbortController();
    const stream = await provider.getContainerLogs(pod, "app-v1", { follow: true, signal: client.signal });
    const seen: string[] = [];
    for await (const chunk of stream.chunks) {
      seen.push(chunk);
      client.abort();
    }
    expect(seen).toEqual(["one\n"]);
    const cancel = await eventually(
      () => {
        const found = device.inbox.find(
          (m): m is Extract<IoInMessage, { kind: "io-cancel" }> => m.kind === "io-cancel",
        );
        if (!found) throw new Error("no io-cancel yet");
        return found;
      },
      { timeoutMs: 5000, intervalMs: 10 },
    );
    expect(cancel).toMatchObject({ streamId: device.inbox[0]?.streamId, reason: "ClientGone" });
  });

  it("cuts the log at limitBytes and tells the device it has enough", async () => {
    const { device, pod } = await deviceWithPod({ logs: true });
    device.onOpen((open) => {
      void device.out(open.streamId, [
        { kind: "io-data", seq: 0, stream: "log", data: b64("hello world\n") },
      ]);
    });
    const stream = await provider.getContainerLogs(pod, "app-v1", { limitBytes: 5, signal: never });
    expect(await read(stream.chunks)).toBe("hello");
    expect(device.inbox[0]).toMatchObject({ kind: "io-open", logs: { limitBytes: 5 } });
    await eventually(
      () => {
        if (!device.inbox.some((m) => m.kind === "io-cancel" && m.reason === "LimitReached"))
          throw new Error("no io-cancel yet");
      },
      { timeoutMs: 5000, intervalMs: 10 },
    );
  });

  it("puts reordered and repeated chunks back in seq order, once each", async () => {
    const { device, pod } = await deviceWithPod({ logs: true });
    device.onOpen((open) => {
      void device.out(open.streamId, [
        { kind: "io-data", seq: 1, stream: "log", data: b64("second\n") },
        { kind: "io-data", seq: 0, stream: "log", data: b64("first\n") },
        { kind: "io-data", seq: 0, stream: "log", data: b64("first\n") },
        { kind: "io-data", seq: 1, stream: "log", data: b64("second\n") },
        { kind: "io-end", seq: 2 },
      ]);
    });
    const stream = await provider.getContainerLogs(pod, "app-v1", { signal: never });
    expect(await read(stream.chunks)).toBe("first\nsecond\n");
  });

  it("ends with an error when a seq never arrives", async () => {
    const { device, pod } = await deviceWithPod({ logs: true });
    device.onOpen((open) => {
      void device.out(open.streamId, [
        { kind: "io-data", seq: 0, stream: "log", data: b64("first\n") },
        { kind: "io-data", seq: 2, stream: "log", data: b64("third\n") },
      ]);
    });
    const stream = await provider.getContainerLogs(pod, "app-v1", { signal: never });
    const error = await read(stream.chunks).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(isTransient(error)).toBe(true);
    expect(String(error)).toMatch(/seq 1 never arrived/);
  });

  it("serves the cached text with a notice once the device is offline", async () => {
    const { device, pod } = await deviceWithPod({ logs: true });
    device.onOpen((open) => {
      void device.out(open.streamId, [
        { kind: "io-data", seq: 0, stream: "log", data: b64("2026-03-01T12:00:00.000000001Z up\n") },
        { kind: "io-end", seq: 1 },
      ]);
    });
    const live = await provider.getContainerLogs(pod, "app-v1", { timestamps: true, signal: never });
    expect(await read(live.chunks)).toBe("2026-03-01T12:00:00.000000001Z up\n");
    await device.goOffline();
    await eventually(
      async () => {
        const info = (await provider.listDevices()).find((d) => d.id === device.deviceId);
        if (info?.connected !== false) throw new Error("still connected");
      },
      { timeoutMs: 5000, intervalMs: 10 },
    );
    const before = published.length;
    const cached = await provider.getContainerLogs(pod, "app-v1", { signal: never });
    expect(cached.notice).toMatch(new RegExp(`^device ${device.deviceId} is offline; log as received at 20`));
    expect(await read(cached.chunks)).toBe("up\n");
    expect(published.length).toBe(before);
  });

  it("refuses at once, publishing nothing, for a device that announced no logs", async () => {
    const { pod } = await deviceWithPod({ logs: false, exec: true });
    const before = published.length;
    const error = await provider
      .getContainerLogs(pod, "app-v1", { signal: never })
      .catch((err: unknown) => err);
    expect(isUnsupported(error)).toBe(true);
    expect(String(error)).toMatch(/does not serve logs/);
    expect(published.length).toBe(before);
  });

  it("fails with transient when the device does not answer", async () => {
    const { pod } = await deviceWithPod({ logs: true });
    const error = await provider
      .getContainerLogs(pod, "app-v1", { signal: never })
      .catch((err: unknown) => err);
    expect(isTransient(error)).toBe(true);
    expect(String(error)).toMatch(/did not answer/);
  });

  it("refuses unknown containers and pods", async () => {
    const { pod } = await deviceWithPod({ logs: true });
    const other = await provider
      .getContainerLogs(pod, "nope", { signal: never })
      .catch((err: unknown) => err);
    expect(isNotFound(other)).toBe(true);
    const gone = await provider
      .getContainerLogs({ ...pod, uid: "no-such-uid" }, "app-v1", { signal: never })
      .catch((err: unknown) => err);
    expect(isNotFound(gone)).toBe(true);
  });
});

describe("exec", () => {
  it("passes stdin to the device and its output back, and resolves with the exit code", async () => {
    const { device, pod } = await deviceWithPod({ exec: true });
    device.onOpen((open) => {
      void device.out(open.streamId, [{ kind: "io-data", seq: 0, stream: "stdout", data: "" }]);
    });
    const answered = (async () => {
      const stdin = await eventually(
        () => {
          const eof = device.inbox.find((m) => m.kind === "io-stdin" && m.eof === true);
          if (!eof) throw new Error("no eof yet");
          return device.inbox.flatMap((m) => (m.kind === "io-stdin" ? [Buffer.from(m.data, "base64")] : []));
        },
        { timeoutMs: 5000, intervalMs: 10 },
      );
      const streamId = device.inbox[0]?.streamId ?? "";
      await device.out(streamId, [
        { kind: "io-data", seq: 1, stream: "stdout", data: Buffer.concat(stdin).toString("base64") },
        { kind: "io-data", seq: 2, stream: "stderr", data: b64("oops\n") },
        { kind: "io-end", seq: 3, exitCode: 3 },
      ]);
    })();
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    const result = await provider.execInContainer(pod, "app-v1", ["sh", "-c", "cat; exit 3"], {
      stdin: (async function* () {
        yield Buffer.from("hello ");
        yield Buffer.from("world\n");
      })(),
      stdout: (chunk) => stdout.push(Buffer.from(chunk)),
      stderr: (chunk) => stderr.push(Buffer.from(chunk)),
      tty: false,
      signal: never,
    });
    await answered;
    expect(result).toEqual({ exitCode: 3 });
    expect(Buffer.concat(stdout).toString()).toBe("hello world\n");
    expect(Buffer.concat(stderr).toString()).toBe("oops\n");
    expect(device.inbox[0]).toMatchObject({
      kind: "io-open",
      type: "exec",
      exec: { command: ["sh", "-c", "cat; exit 3"], stdin: true, stdout: true, stderr: true, tty: false },
    });
  });

  it.each([
    ["NotFound", isNotFound],
    ["Unsupported", isUnsupported],
    ["Failed", isTransient],
  ] as const)("maps the device's io-end error %s to the provider error", async (reason, guard) => {
    const { device, pod } = await deviceWithPod({ exec: true });
    device.onOpen((open) => {
      void device.out(open.streamId, [
        { kind: "io-end", seq: 0, error: { reason, message: `said ${reason}` } },
      ]);
    });
    const error = await provider
      .execInContainer(pod, "app-v1", ["ls"], { tty: false, signal: never })
      .catch((err: unknown) => err);
    expect(guard(error)).toBe(true);
    expect(String(error)).toContain(`device ${device.deviceId}: said ${reason}`);
  });

  it("refuses a terminal on a device without one, and exec on a device without exec", async () => {
    const { pod } = await deviceWithPod({ exec: true });
    const before = published.length;
    const tty = await provider
      .execInContainer(pod, "app-v1", ["sh"], { tty: true, signal: never })
      .catch((err: unknown) => err);
    expect(isUnsupported(tty)).toBe(true);
    const logsOnly = await deviceWithPod({ logs: true });
    const noExec = await provider
      .execInContainer(logsOnly.pod, "app-v1", ["ls"], { tty: false, signal: never })
      .catch((err: unknown) => err);
    expect(isUnsupported(noExec)).toBe(true);
    expect(String(noExec)).toMatch(/does not serve exec/);
    expect(published.length).toBe(before);
  });

  it("opens a terminal on a device that has one and passes its size changes on", async () => {
    const { device, pod } = await deviceWithPod({ exec: true, tty: true });
    device.onOpen((open) => void device.out(open.streamId, [{ kind: "io-end", seq: 0, exitCode: 0 }]));
    const result = await provider.execInContainer(pod, "app-v1", ["sh"], {
      stdout: () => undefined,
      tty: true,
      resize: (async function* () {
        yield { width: 80, height: 24 };
      })(),
      signal: never,
    });
    expect(result).toEqual({ exitCode: 0 });
    expect(device.inbox[0]).toMatchObject({
      kind: "io-open",
      exec: { tty: true, stdin: false, stderr: false },
    });
    await eventually(
      () => {
        const resize = device.inbox.find((m) => m.kind === "io-resize");
        if (!resize) throw new Error("no io-resize yet");
        expect(resize).toMatchObject({ width: 80, height: 24 });
      },
      { timeoutMs: 5000, intervalMs: 10 },
    );
  });

  it("answers at once with transient for an offline device, naming it", async () => {
    const { device, pod } = await deviceWithPod({ exec: true });
    await device.goOffline();
    await eventually(
      async () => {
        const info = (await provider.listDevices()).find((d) => d.id === device.deviceId);
        if (info?.connected !== false) throw new Error("still connected");
      },
      { timeoutMs: 5000, intervalMs: 10 },
    );
    const before = published.length;
    const error = await provider
      .execInContainer(pod, "app-v1", ["ls"], { tty: false, signal: never })
      .catch((err: unknown) => err);
    expect(isTransient(error)).toBe(true);
    expect(String(error)).toMatch(new RegExp(`device ${device.deviceId} is offline \\(last seen 20`));
    expect(published.length).toBe(before);
  });

  it("ends running sessions when the device goes offline, and refuses more than the limit", async () => {
    const { device, pod } = await deviceWithPod({ exec: true });
    device.onOpen(
      (open) => void device.out(open.streamId, [{ kind: "io-data", seq: 0, stream: "stdout", data: "" }]),
    );
    const running = [1, 2].map(() =>
      provider
        .execInContainer(pod, "app-v1", ["sleep", "60"], { tty: false, signal: never })
        .catch((err: unknown) => err),
    );
    await eventually(
      () => {
        if (device.inbox.filter((m) => m.kind === "io-open").length < 2) throw new Error("not open yet");
      },
      { timeoutMs: 5000, intervalMs: 10 },
    );
    const third = await provider
      .execInContainer(pod, "app-v1", ["ls"], { tty: false, signal: never })
      .catch((err: unknown) => err);
    expect(isTransient(third)).toBe(true);
    expect(String(third)).toMatch(/already runs 2 sessions/);
    await device.goOffline();
    for (const error of await Promise.all(running)) {
      expect(isTransient(error)).toBe(true);
      expect(String(error)).toMatch(/went offline/);
    }
  });
});

describe("stats", () => {
  it("keeps the latest sample, derives CPU rates from the one before, and maps pods", async () => {
    const { device, pod } = await deviceWithPod({ stats: true, statsIntervalSeconds: 5 });
    const t0 = Date.now() - 2000;
    const sample = (at: number, nodeCpu: number, appCpu: number) => ({
      at: new Date(at).toISOString(),
      node: { cpu: { usageCoreNanoSeconds: nodeCpu }, memory: { workingSetBytes: 1000 } },
      pods: [
        {
          podUid: pod.uid,
          apps: [
            {
              app: "app-v1",
              startTime: "2026-03-01T11:00:00.000Z",
              cpu: { usageCoreNanoSeconds: appCpu },
              memory: { workingSetBytes: 42 },
            },
          ],
        },
        { podUid: "not-ours", apps: [] },
      ],
    });
    await device.stats(sample(t0, 1e9, 1e8));
    await eventually(
      async () => {
        const stats = await provider.getStats(device.deviceId);
        if (!stats.node) throw new Error("no sample yet");
      },
      { timeoutMs: 5000, intervalMs: 10 },
    );
    const first = await provider.getStats(device.deviceId);
    expect(first.node?.cpu).toEqual({ usageCoreNanoSeconds: 1e9 });
    await device.stats(sample(t0 + 1000, 1.5e9, 1.25e8));
    const second = await eventually(
      async () => {
        const stats = await provider.getStats(device.deviceId);
        if (stats.node?.cpu?.usageCoreNanoSeconds !== 1.5e9) throw new Error("second sample not yet");
        return stats;
      },
      { timeoutMs: 5000, intervalMs: 10 },
    );
    expect(second.node).toMatchObject({ cpu: { usageNanoCores: 5e8 }, memory: { workingSetBytes: 1000 } });
    expect(second.pods).toEqual([
      {
        pod,
        startTime: new Date("2026-03-01T11:00:00.000Z"),
        containers: [
          {
            name: "app-v1",
            time: new Date(t0 + 1000),
            startTime: new Date("2026-03-01T11:00:00.000Z"),
            cpu: { usageCoreNanoSeconds: 1.25e8, usageNanoCores: 2.5e7 },
            memory: { workingSetBytes: 42 },
          },
        ],
      },
    ]);
  });

  it("throws NotFound for a device never seen", async () => {
    const error = await provider.getStats("no-such-device").catch((err: unknown) => err);
    expect(isNotFound(error)).toBe(true);
  });
});

describe("bad session output", () => {
  it("is rejected and counted, and the session still ends cleanly", async () => {
    const { device, pod } = await deviceWithPod({ logs: true });
    device.onOpen((open) => {
      void (async () => {
        await device.raw(topics.ioOut(device.deviceId, open.streamId), '{"protocol":1,"kind":"io-data"}');
        await device.out(open.streamId, [
          { kind: "io-data", seq: 0, stream: "log", data: b64("ok\n") },
          { kind: "io-end", seq: 1 },
        ]);
      })();
    });
    const before = provider.metrics().rejected.schema;
    const stream = await provider.getContainerLogs(pod, "app-v1", { signal: never });
    expect(await read(stream.chunks)).toBe("ok\n");
    expect(provider.metrics().rejected.schema).toBe(before + 1);
  });
});
