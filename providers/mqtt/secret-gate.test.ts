import mqtt from "mqtt";
import { afterEach, describe, expect, it } from "vitest";
import { startEmbeddedBroker, type EmbeddedBroker } from "../../src/broker/embedded.ts";
import { desiredDocument } from "../../src/device/fixtures.ts";
import { encodeMessage } from "../../src/protocol/codec.ts";
import { topics } from "../../src/protocol/topics.ts";
import type { DesiredDocument } from "../../src/protocol/types.ts";
import type { Workload } from "../../src/provider/types.ts";
import { eventually } from "../../test/support/eventually.ts";
import { app, workload } from "../mock/testing.ts";
import { createMqttProvider, type MqttProvider } from "./index.ts";
import { connectionInsecurity, SecretGate } from "./secret-gate.ts";
import { holdBack, toDesiredPod } from "./translate.ts";
import { quietContext } from "../../test/support/provider-context.ts";

const MARKER = "marker-7f3a9c1e5b2d4e6f8091a2b3c4d5e6f7";

/** A workload on `deviceId` whose app has TOKEN from a Secret. */
const withSecret = (deviceId: string): Workload => {
  const w = workload("secretive", deviceId);
  return {
    ...w,
    apps: [{ ...app("app0", "example.com/app:1"), env: { TOKEN: MARKER }, secretEnv: ["TOKEN"] }],
  };
};

const verified = { url: "mqtts://broker:8883", tls: { rejectUnauthorized: true } };
const gate = (o: {
  url?: string;
  rejectUnauthorized?: boolean;
  allow?: readonly string[];
  allowSecretsWithoutTls?: boolean;
}) =>
  new SecretGate({
    insecurity: connectionInsecurity({
      url: o.url ?? verified.url,
      tls: { rejectUnauthorized: o.rejectUnauthorized ?? true },
    }),
    devices: { secrets: { allow: o.allow ?? [] } },
    allowSecretsWithoutTls: o.allowSecretsWithoutTls ?? false,
  });

describe("the SecretRequiresTLS gate", () => {
  it("refuses Secrets over a plain broker connection, and over TLS without certificate checks", () => {
    expect(gate({ url: "mqtt://broker:1883", allow: ["*"] }).check("gw-1")?.message).toMatch(/is not TLS/);
    expect(gate({ url: "ws://broker/mqtt", allow: ["*"] }).check("gw-1")?.reason).toBe("SecretRequiresTLS");
    expect(gate({ rejectUnauthorized: false, allow: ["*"] }).check("gw-1")?.message).toMatch(
      /rejectUnauthorized is false/,
    );
  });

  it("refuses a device the config does not trust, naming the key to set; trusts listed ids and globs", () => {
    const g = gate({ allow: ["gw-*", "mcu-7"] });
    expect(g.check("gw-1")).toBeUndefined();
    expect(g.check("mcu-7")).toBeUndefined();
    const refused = g.check("mcu-8");
    expect(refused?.reason).toBe("SecretRequiresTLS");
    expect(refused?.message).toContain("provider.config.devices.secrets.allow");
    // Secure default: nobody is trusted.
    expect(gate({}).check("gw-1")?.message).toContain("devices.secrets.allow");
  });

  it("is off with allowSecretsWithoutTls, and says so at start as a warning", () => {
    const g = gate({ url: "mqtt://broker:1883", allowSecretsWithoutTls: true });
    expect(g.check("anything")).toBeUndefined();
    expect(g.startupNotes()).toEqual([
      { level: "warn", message: expect.stringMatching(/allowSecretsWithoutTls is on/) as unknown },
    ]);
    expect(gate({}).startupNotes()[0]?.message).toMatch(/no device is trusted/);
    expect(gate({ allow: ["gw-*"] }).startupNotes()).toEqual([]);
  });

  it("holds back only pods that carry Secrets", () => {
    const g = gate({});
    const plain = workload("plain", "gw-1");
    expect(holdBack(plain, toDesiredPod(plain), { secrets: g })).toBeUndefined();
    const secret = withSecret("gw-1");
    expect(holdBack(secret, toDesiredPod(secret), { secrets: g })?.reason).toBe("SecretRequiresTLS");
    expect(holdBack(secret, toDesiredPod(secret), { secrets: gate({ allow: ["gw-1"] }) })).toBeUndefined();
  });
});

let broker: EmbeddedBroker | undefined;
let provider: MqttProvider | undefined;
afterEach(async () => {
  await provider?.stop();
  await broker?.close();
  provider = undefined;
  broker = undefined;
});

/** The retained desired document: subscribe, then a marker published after the SUBACK ends the wait. */
const retainedDesired = async (url: string, deviceId: string): Promise<DesiredDocument | undefined> => {
  const client = await mqtt.connectAsync(url, { clean: true, reconnectPeriod: 0 });
  try {
    const marker = `test/marker/${deviceId}`;
    let found: DesiredDocument | undefined;
    const done = new Promise<void>((resolve) => {
      client.on("message", (topic, payload) => {
        if (topic === marker) resolve();
        else if (payload.length > 0) found = JSON.parse(payload.toString()) as DesiredDocument;
      });
    });
    await client.subscribeAsync([topics.desired(deviceId), marker], { qos: 1 });
    await client.publishAsync(marker, "x", { qos: 1 });
    await done;
    return found;
  } finally {
    await client.endAsync();
  }
};

describe("the gate after a restart", () => {
  it("judges a Secret-bearing pod adopted from an earlier run's retained document again", async () => {
    broker = await startEmbeddedBroker();
    // An earlier run (with other settings) left a retained document carrying the Secret.
    const earlier = withSecret("gw-1");
    const seed = await mqtt.connectAsync(broker.url, { reconnectPeriod: 0 });
    const doc = desiredDocument({ deviceId: "gw-1", generation: 7, pods: [toDesiredPod(earlier)] });
    await seed.publishAsync(topics.desired("gw-1"), encodeMessage(doc), { qos: 1, retain: true });
    await seed.endAsync();
    // This run: a plain connection, no escape hatch.
    provider = createMqttProvider(
      {
        broker: { url: broker.url, clientId: "devicelet-gate-test", protocolVersion: 4 },
        devices: { allow: ["gw-*"] },
        desired: { readbackTimeoutMs: 2_000 },
      },
      quietContext(),
    );
    await provider.start(new AbortController().signal);
    expect((await provider.listPods()).map((p) => p.pod.uid)).toEqual([earlier.pod.uid]);
    // The engine hands over the same pod, unchanged: it must not stay in the document.
    await provider.updatePod(earlier);
    const url = broker.url;
    await eventually(
      async () => {
        const now = await retainedDesired(url, "gw-1");
        expect(now?.generation).toBeGreaterThan(7);
        expect(JSON.stringify(now)).not.toContain(MARKER);
      },
      { timeoutMs: 3_000 },
    );
    const status = await provider.getPodStatus(earlier.pod);
    expect(JSON.stringify(status)).toContain("SecretRequiresTLS");
  });
});
