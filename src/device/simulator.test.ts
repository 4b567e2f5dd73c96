import { once } from "node:events";
import { createServer } from "node:net";
import pino from "pino";
import { describe, expect, it, vi } from "vitest";
import { startDeviceBroker } from "../../test/support/device-broker.ts";
import { encodeMessage } from "../protocol/codec.ts";
import { topics } from "../protocol/topics.ts";
import type { IoOpenMessage, IoOutMessage, StatsMessage } from "../protocol/types.ts";
import { desiredDocument, desiredPod } from "./fixtures.ts";
import { startSimulator } from "./simulator.ts";

describe("startSimulator", () => {
  it("names the broker without its credentials when devices do not come online", async () => {
    // A port that accepts TCP and never answers CONNECT: no device ever comes online.
    const silent = createServer(() => undefined).listen(0, "127.0.0.1");
    await once(silent, "listening");
    const { port } = silent.address() as { port: number };
    try {
      const started = startSimulator({
        brokerUrl: `mqtt://sim-user:s3cret-password@127.0.0.1:${port}`,
        devices: [{ id: "leak-mcu-0", kind: "mcu" }],
        startTimeoutMs: 200,
        logger: pino({ level: "silent" }),
      });
      await expect(started).rejects.toThrow(`not online in time (leak-mcu-0…) at mqtt://127.0.0.1:${port}`);
      await expect(started).rejects.not.toThrow(/s3cret|sim-user/);
    } finally {
      silent.close();
    }
  });
});

describe("simulated devices over MQTT", () => {
  it("answer logs and exec sessions on io/{streamId}, send stats, and microcontrollers refuse sessions", async () => {
    const broker = await startDeviceBroker();
    const sim = await startSimulator({
      brokerUrl: broker.url,
      protocolVersion: 4,
      devices: [
        { id: "io-gw", kind: "gateway" },
        { id: "io-mcu", kind: "mcu" },
      ],
      statsIntervalSeconds: 5,
      logger: pino({ level: "silent" }),
    });
    try {
      const pod = desiredPod({ uid: "p1", name: "web", apps: [{ name: "main" }] });
      await broker.publish(
        topics.desired("io-gw"),
        encodeMessage(desiredDocument({ deviceId: "io-gw", generation: 1, pods: [pod] })),
        { retain: true },
      );
      await vi.waitFor(() => expect(sim.device("io-gw").runningPods()).toEqual(["p1"]), { timeout: 5_000 });
      const open = (deviceId: string, streamId: string, body: Partial<IoOpenMessage>) =>
        broker.publish(
          topics.ioIn(deviceId, streamId),
          encodeMessage({
            protocol: 1,
            kind: "io-open",
            deviceId,
            streamId,
            type: "exec",
            podUid: "p1",
            app: "main",
            maxChunkBytes: 1024,
            idleSeconds: 10,
            ...body,
          }),
        );
      const out = (deviceId: string, streamId: string) =>
        broker.messagesOn<IoOutMessage>(topics.ioOut(deviceId, streamId));
      const end = (deviceId: string, streamId: string) =>
        vi.waitFor(
          () => {
            const last = out(deviceId, streamId).at(-1);
            if (last?.kind !== "io-end") throw new Error("not ended");
            return last;
          },
          { timeout: 5_000 },
        );
      await open("io-gw", "e1", {
        exec: { command: ["echo", "hello"], stdin: false, stdout: true, stderr: true, tty: false },
      });
      expect(await end("io-gw", "e1")).toMatchObject({ exitCode: 0 });
      const text = out("io-gw", "e1")
        .flatMap((m) => (m.kind === "io-data" ? [Buffer.from(m.data, "base64").toString()] : []))
        .join("");
      expect(text).toBe("hello\n");
      await open("io-gw", "l1", { type: "logs", logs: { tailLines: 5 } });
      await end("io-gw", "l1");
      expect(out("io-gw", "l1").some((m) => m.kind === "io-data" && m.data !== "")).toBe(true);
      await open("io-mcu", "m1", { type: "logs", logs: {} });
      expect(await end("io-mcu", "m1")).toMatchObject({ error: { reason: "Unsupported" } });
      const stats = broker.messagesOn<StatsMessage>(topics.stats("io-gw"));
      expect(stats[0]).toMatchObject({
        kind: "stats",
        deviceId: "io-gw",
        bootId: sim.device("io-gw").bootId,
      });
      expect(broker.messagesOn(topics.stats("io-mcu"))).toEqual([]);
    } finally {
      await sim.stop();
      await broker.close();
    }
  });
});
