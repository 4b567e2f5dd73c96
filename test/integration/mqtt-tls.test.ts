/**
 * devicelet reaching the broker over mutual TLS with MQTT 5 (real CLI, a Mosquitto whose TLS
 * listener demands a client certificate): it connects with the configured CA, certificate and key
 * files, and a pod using a Secret — which devicelet sends only over TLS — runs on a device.
 */
import { readFileSync } from "node:fs";
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startSimulator, type Simulator } from "../../src/device/simulator.ts";
import { eventually } from "../support/eventually.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import {
  retainedDesired,
  startMqttDevicelet,
  startMutualTlsBroker,
  type MutualTlsBroker,
  type RunningMqttDevicelet,
  stopAll,
} from "../support/mqtt.ts";
import { uniqueName } from "../support/testenv.ts";
import { isReady, pod, type PodJson } from "../support/workloads.ts";

const id = uniqueName("mqtls");
const ns = id;
const gw = `${id}-gw`;
let broker: MutualTlsBroker;
let devicelet: RunningMqttDevicelet;
let sim: Simulator;

beforeAll(async () => {
  await kubectl(["create", "namespace", ns]);
  broker = await startMutualTlsBroker(id);
  devicelet = await startMqttDevicelet({
    id,
    brokerUrl: broker.tlsUrl,
    namespace: ns,
    provider: {
      broker: {
        url: broker.tlsUrl,
        protocolVersion: 5,
        clientId: `devicelet-${id}`,
        tls: { ca: broker.caFile, cert: broker.client.cert, key: broker.client.key },
      },
    },
  });
  sim = await startSimulator({
    brokerUrl: broker.url,
    devices: [{ id: gw, kind: "gateway" }],
    appStartMs: 50,
  });
});

afterAll(async () => {
  await stopAll(
    () => sim.stop(),
    () => devicelet.stop(),
    () => broker.stop(),
    () => kubectl(["delete", "namespace", ns, "--wait=false"]),
  );
});

describe("mqtt provider: mutual TLS", () => {
  it("the TLS listener refuses a client without a certificate", async () => {
    const ca = readFileSync(broker.caFile);
    await expect(
      mqtt.connectAsync(broker.tlsUrl, {
        ca,
        rejectUnauthorized: true,
        reconnectPeriod: 0,
        connectTimeout: 5_000,
      }),
    ).rejects.toThrow();
  });

  it("connects with CA, certificate and key, and runs a pod that uses a Secret", async () => {
    await eventually(async () => {
      const nodes = await getJson<{ items: unknown[] }>(["nodes", "-l", devicelet.nodeSelector]);
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
    const doc = await retainedDesired(broker.url, gw);
    expect(doc?.pods[0]?.apps[0]?.env.TOKEN).toBe("s3cret");
    // pino redaction: the value never reaches devicelet's log.
    expect(devicelet.logLines().some((l) => JSON.stringify(l).includes("s3cret"))).toBe(false);
  });
});
