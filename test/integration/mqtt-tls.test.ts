/**
 * devicelet reaching the broker over mutual TLS with MQTT 5 (real CLI, a Mosquitto whose TLS
 * listener demands a client certificate): it connects with the configured CA, certificate and key
 * files, and a pod using a Secret — which devicelet sends only over TLS — runs on a device.
 */
import { readFileSync } from "node:fs";
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { eventually } from "../support/eventually.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import { retainedDesired, startMutualTlsBroker } from "../support/mqtt.ts";
import { mqttScene } from "../support/scene.ts";
import { uniqueName } from "../support/testenv.ts";
import { isReady, pod, type PodJson } from "../support/workloads.ts";

const id = uniqueName("mqtls");
const ns = id;
const gw = `${id}-gw`;
// devicelet on the mutual-TLS listener; the simulated device (no client certificate) on the plain one.
const scene = mqttScene({
  id,
  broker: startMutualTlsBroker,
  devices: [{ id: gw, kind: "gateway" }],
  simulator: { appStartMs: 50 },
  provider: (broker) => ({
    broker: {
      url: broker.tlsUrl,
      protocolVersion: 5,
      clientId: `devicelet-${id}`,
      tls: { ca: broker.caFile, cert: broker.client.cert, key: broker.client.key },
    },
    // Trusted with Secrets by config (docs/security.md); here it is the test that vouches for it.
    devices: { allow: [`${id}-*`], secrets: { allow: [gw] } },
  }),
});

beforeAll(() => scene.start());
afterAll(() => scene.stop());

describe("mqtt provider: mutual TLS", () => {
  it("the TLS listener refuses a client without a certificate", async () => {
    const ca = readFileSync(scene.broker.caFile);
    await expect(
      mqtt.connectAsync(scene.broker.tlsUrl, {
        ca,
        rejectUnauthorized: true,
        reconnectPeriod: 0,
        connectTimeout: 5_000,
      }),
    ).rejects.toThrow();
  });

  it("connects with CA, certificate and key, and runs a pod that uses a Secret", async () => {
    await eventually(async () => {
      const nodes = await getJson<{ items: unknown[] }>(["nodes", "-l", scene.nodeSelector]);
      expect(nodes.items).toHaveLength(1);
    });
    await kubectl(["create", "secret", "generic", "token", "-n", ns, "--from-literal=value=s3cret"]);
    await apply(
      pod({
        namespace: ns,
        name: "secretive",
        testId: id,
        node: gw,
        spec: `  containers:
    - name: app
      image: example/app:1
      env: [{ name: TOKEN, valueFrom: { secretKeyRef: { name: token, key: value } } }]`,
      }),
    );
    await eventually(async () =>
      expect(isReady(await getJson<PodJson>(["pod", "secretive", "-n", ns]))).toBe(true),
    );
    const doc = await retainedDesired(scene.broker.url, gw);
    expect(doc?.pods[0]?.apps[0]?.env.TOKEN).toBe("s3cret");
    // pino redaction: the value never reaches devicelet's log.
    expect(scene.devicelet.logLines().some((l) => JSON.stringify(l).includes("s3cret"))).toBe(false);
  });
});
