/**
 * On MQTT 5 devicelet's CONNECT carries a Maximum Packet Size (§3.1.2.11.4) derived from the
 * inbound limit, so the broker discards larger packets instead of forwarding them; on 3.1.1 there
 * is no such property. The CONNECT is read off the wire by a loopback listener and parsed.
 */
import net from "node:net";
import mqttPacket from "mqtt-packet";
import pino from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { validateWithSchema } from "../../src/config/index.ts";
import { MqttConnection } from "./connection.ts";
import { inboundPacketLimit } from "./fit.ts";
import { createMqttProvider, type MqttProvider } from "./index.ts";
import { mqttConfigSchema, type MqttConfig } from "./schema.ts";
import { quietContext } from "../../test/support/provider-context.ts";

const servers: net.Server[] = [];
const connections: MqttConnection[] = [];
let provider: MqttProvider | undefined;
afterEach(async () => {
  await provider?.stop();
  provider = undefined;
  for (const c of connections.splice(0)) await c.stop();
  for (const s of servers.splice(0)) await new Promise((resolve) => s.close(resolve));
});

/** The first CONNECT packet a client sends to a listener on 127.0.0.1 (never answered). */
async function firstConnect(connect: (url: string) => void): Promise<mqttPacket.IConnectPacket> {
  const server = net.createServer();
  servers.push(server);
  const packet = new Promise<mqttPacket.IConnectPacket>((resolve) => {
    server.on("connection", (socket) => {
      const parser = mqttPacket.parser({ protocolVersion: 5 });
      parser.on("packet", (p) => {
        if (p.cmd === "connect") resolve(p);
        socket.destroy();
      });
      socket.on("data", (chunk) => parser.parse(chunk));
      socket.on("error", () => undefined);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  connect(`mqtt://127.0.0.1:${port}`);
  return packet;
}

const start = (url: string, protocolVersion: 4 | 5, maximumPacketSize?: number) => {
  const { broker } = validateWithSchema(
    mqttConfigSchema,
    { broker: { url, protocolVersion, connectTimeoutMs: 500 }, devices: { allow: ["*"] } },
    "test",
  ) as MqttConfig;
  const connection = new MqttConnection({
    config: broker,
    graceSeconds: 30,
    bridge: { topic: "devicelet/v1/_bridge/state", payload: (s) => Buffer.from(s) },
    logger: pino({ level: "silent" }),
    ...(maximumPacketSize === undefined ? {} : { maximumPacketSize }),
  });
  connections.push(connection);
  // Never answered: start() stays pending until stop() in afterEach.
  connection.start(new AbortController().signal).catch(() => undefined);
};

describe("MQTT 5 Maximum Packet Size", () => {
  it("is sent in CONNECT on MQTT 5: the inbound limit plus headroom", async () => {
    const limit = inboundPacketLimit(262_144);
    const connect = await firstConnect((url) => start(url, 5, limit));
    expect(connect.protocolVersion).toBe(5);
    expect(connect.properties?.maximumPacketSize).toBe(limit);
    expect(limit).toBeGreaterThan(262_144);
  });

  it("the provider derives it from devices.maxMessageBytes (or desired.maxDocumentBytes, if larger)", async () => {
    const connect = await firstConnect((url) => {
      provider = createMqttProvider(
        {
          broker: { url, protocolVersion: 5, connectTimeoutMs: 500 },
          devices: { allow: ["*"], maxMessageBytes: 100_000 },
          desired: { maxDocumentBytes: 2048 },
        },
        quietContext(),
      );
      provider.start(new AbortController().signal).catch(() => undefined);
    });
    expect(connect.properties?.maximumPacketSize).toBe(inboundPacketLimit(100_000));
  });

  it("is absent on MQTT 3.1.1, which has no properties", async () => {
    const connect = await firstConnect((url) => start(url, 4, inboundPacketLimit(262_144)));
    expect(connect.protocolVersion).toBe(4);
    expect(connect.properties).toBeUndefined();
  });
});
