import { randomUUID } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startMosquitto, type Broker } from "../../hack/testenv/mosquitto.ts";

let broker: Broker;
beforeAll(async () => {
  broker = await startMosquitto({ dir: mkdtempSync(path.join(os.tmpdir(), "devicelet-mosquitto-")) });
});
afterAll(async () => {
  await broker.stop();
});

async function roundTrip(url: string, opts: mqtt.IClientOptions, retain = false) {
  const topic = `test/${randomUUID()}`;
  const sub = await mqtt.connectAsync(url, opts);
  const got = new Promise<string>((resolve) =>
    sub.on("message", (_t, payload) => resolve(payload.toString())),
  );
  await sub.subscribeAsync(topic, { qos: 1 });
  const pub = await mqtt.connectAsync(url, opts);
  await pub.publishAsync(topic, "hello", { qos: 1, retain });
  const message = await got;
  await Promise.all([sub.endAsync(), pub.endAsync()]);
  return message;
}

/** Live processes whose command line names `text`. */
function processesNaming(text: string): number[] {
  return readdirSync("/proc")
    .filter((entry) => /^\d+$/.test(entry))
    .filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(text);
      } catch {
        return false; // gone meanwhile
      }
    })
    .map(Number);
}

describe("the harness Mosquitto", () => {
  it("stops a broker that did not come up in time instead of leaving it running", async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "devicelet-mosquitto-late-"));
    await expect(startMosquitto({ dir, readyTimeoutMs: 0 })).rejects.toThrow(/timed out after 0 ms/);
    expect(processesNaming(path.join(dir, "mosquitto.conf"))).toEqual([]);
  });

  it("round-trips a message on the plain listener", async () => {
    expect(await roundTrip(broker.url, {})).toBe("hello");
  });

  it("round-trips on the TLS listener, verifying the broker against the harness CA", async () => {
    expect(await roundTrip(broker.tlsUrl, { ca: broker.ca, rejectUnauthorized: true })).toBe("hello");
  });

  it("refuses TLS to a client that does not trust the harness CA", async () => {
    await expect(
      mqtt.connectAsync(broker.tlsUrl, {
        rejectUnauthorized: true,
        reconnectPeriod: 0,
        connectTimeout: 5_000,
      }),
    ).rejects.toThrow();
  });

  it("still delivers a retained message after the broker restarts (persistence on)", async () => {
    const topic = `retained/${randomUUID()}`;
    const pub = await mqtt.connectAsync(broker.url, {});
    await pub.publishAsync(topic, "kept", { qos: 1, retain: true });
    await pub.endAsync();
    await broker.restart();
    const sub = await mqtt.connectAsync(broker.url, {});
    const got = new Promise<string>((resolve) =>
      sub.on("message", (_t, payload) => resolve(payload.toString())),
    );
    await sub.subscribeAsync(topic, { qos: 1 });
    expect(await got).toBe("kept");
    await sub.endAsync();
  });
});
