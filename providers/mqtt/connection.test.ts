import { Writable } from "node:stream";
import pino from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { startEmbeddedBroker, type EmbeddedBroker } from "../../src/broker/embedded.ts";
import { eventually } from "../../test/support/eventually.ts";
import { validateWithSchema } from "../../src/config/index.ts";
import { MqttConnection } from "./connection.ts";
import { mqttConfigSchema, type MqttConfig } from "./schema.ts";

/** A logger whose lines are kept, parsed. */
const recordingLogger = () => {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(JSON.parse(chunk.toString("utf8")) as Record<string, unknown>);
      done();
    },
  });
  return { logger: pino({ level: "info" }, stream), lines };
};

let broker: EmbeddedBroker | undefined;
const running: MqttConnection[] = [];

afterEach(async () => {
  for (const c of running.splice(0)) await c.stop();
  await broker?.close();
});

describe("MqttConnection client-id takeover", () => {
  it(
    "backs off, longer each time, when another client keeps taking its session",
    { timeout: 30_000 },
    async () => {
      broker = await startEmbeddedBroker();
      const url = broker.url;
      // The same configuration twice, as two devicelet processes sharing one config would have.
      const { broker: config } = validateWithSchema(
        mqttConfigSchema,
        { broker: { url, clientId: "devicelet-shared", reconnect: { minDelayMs: 50, maxDelayMs: 200 } } },
        "mqtt provider config",
        "/provider/config",
      ) as MqttConfig;
      const logs = [recordingLogger(), recordingLogger()];
      const start = async (i: 0 | 1) => {
        const connection = new MqttConnection({
          config,
          graceSeconds: 30,
          bridge: { topic: "devicelet/v1/_bridge/state", payload: (s) => Buffer.from(s) },
          logger: logs[i]?.logger ?? pino({ level: "silent" }),
          random: () => 0, // backoff = half the step: 500, 1000, 2000 ms
        });
        running.push(connection);
        await connection.start(new AbortController().signal);
      };
      await start(0);
      await start(1);

      const takeovers = () =>
        logs.map(({ lines }) =>
          lines.filter((l) => String(l.msg).startsWith("broker session taken over")).map((l) => l.delayMs),
        );
      await eventually(() => expect(takeovers().flat().length).toBeGreaterThanOrEqual(4), {
        timeoutMs: 20_000,
      });
      // Each connection waits longer at each takeover instead of reconnecting at once.
      for (const delays of takeovers())
        expect(delays).toEqual([500, 1000, 2000, 4000].slice(0, delays.length));
      const connects = logs.map(({ lines }) => lines.filter((l) => l.msg === "connected to broker").length);
      expect(connects.reduce((a, b) => a + b, 0)).toBeLessThanOrEqual(takeovers().flat().length + 3);
    },
  );
});
