import mqtt from "mqtt";
import { describe, expect, it } from "vitest";
import { startEmbeddedBroker } from "./embedded.ts";

describe("the embedded broker", () => {
  it("listens on loopback and keeps retained messages for late subscribers (MQTT 3.1.1)", async () => {
    const broker = await startEmbeddedBroker();
    expect(broker.url).toMatch(/^mqtt:\/\/127\.0\.0\.1:\d+$/);
    const pub = await mqtt.connectAsync(broker.url, { protocolVersion: 4 });
    await pub.publishAsync("devicelet/v1/d1/desired", "doc", { qos: 1, retain: true });
    const sub = await mqtt.connectAsync(broker.url, { protocolVersion: 4 });
    const got = new Promise<string>((resolve) => sub.on("message", (_t, p) => resolve(p.toString())));
    await sub.subscribeAsync("devicelet/v1/+/desired", { qos: 1 });
    expect(await got).toBe("doc");
    await Promise.all([pub.endAsync(), sub.endAsync()]);
    await broker.close();
  });
});
