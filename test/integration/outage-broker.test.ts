/**
 * Node liveness never depends on the broker (docs/architecture.md, decision 1), with the real Mosquitto process
 * really stopped under the real `devicelet run` and simulated devices:
 * - the broker is down for longer than devicelet's broker grace plus the controller-manager's
 *   node-monitor grace, then comes back. Throughout, and for a minute after, every node stays
 *   Ready=True and every pod keeps its UID (none deleted, re-created or evicted), and no device is
 *   sent a desired document that drops its pods. The loss is visible all the same: a
 *   `TransportConnected=False` node condition, a NoSchedule taint, and pods whose DeviceConnected
 *   condition is Unknown (TransportDisconnected); all of it clears once the broker is back;
 * - devicelet started while the broker is down (its nodes registered by an earlier run) renews
 *   every node's Lease and keeps every node Ready.
 * Nodes and pods are sampled every few seconds and the samples judged at the end.
 */
import { setTimeout as sleep } from "node:timers/promises";
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { nodeMonitorGraceSeconds } from "../../src/testing/controlplane/controlplane.ts";
import { parseDeviceTopic, topics } from "../../src/protocol/topics.ts";
import type { DesiredDocument } from "../../src/protocol/types.ts";
import { eventually } from "../support/eventually.ts";
import { apply, getJson } from "../support/kubectl.ts";
import { barePod } from "../support/mqtt.ts";
import { mqttScene } from "../support/scene.ts";
import { uniqueName } from "../support/testenv.ts";
import { condition, isReady, type PodJson } from "../support/workloads.ts";

const id = uniqueName("obrk");
const ns = id;
const gwA = `${id}-gw-a`;
const gwB = `${id}-gw-b`;
const transportTaint = "devicelet.dev/transport-unreachable";
/** devicelet's broker grace here: the loss shows on nodes and pods after this long. */
const brokerGraceSeconds = 10;
/** Longer than both graces together, so that either one giving up would show. */
const outageMs = (brokerGraceSeconds + nodeMonitorGraceSeconds + 20) * 1000;
const afterMs = 60_000;
const sampleEveryMs = 3_000;

const scene = mqttScene({
  id,
  devices: [
    { id: gwA, kind: "gateway" },
    { id: gwB, kind: "gateway" },
  ],
  provider: { health: { disconnectedGraceSeconds: brokerGraceSeconds } },
});

interface NodeJson {
  metadata: { name: string };
  spec: { taints?: { key: string; effect: string }[] };
  status: { conditions: { type: string; status: string; reason?: string }[] };
}

/** Every desired document the broker delivered for a device, in order; a cleared one as `undefined`. */
const desiredSeen = new Map<string, (DesiredDocument | undefined)[]>();
let recorder: mqtt.MqttClient | undefined;

beforeAll(async () => {
  await scene.start();
  // A plain subscriber, as a device would be: it reconnects and resubscribes after the outage, and
  // then gets the retained documents again, exactly what the devices get.
  recorder = await mqtt.connectAsync(scene.broker.url, { clean: true, reconnectPeriod: 500 });
  recorder.on("error", () => undefined);
  recorder.on("message", (topic, payload) => {
    const parsed = parseDeviceTopic(topic);
    if (parsed?.kind !== "desired") return;
    const docs = desiredSeen.get(parsed.deviceId) ?? [];
    docs.push(payload.length === 0 ? undefined : (JSON.parse(payload.toString("utf8")) as DesiredDocument));
    desiredSeen.set(parsed.deviceId, docs);
  });
  await recorder.subscribeAsync(topics.desired("+"), { qos: 1 });
});

afterAll(async () => {
  await recorder?.endAsync(true);
  await scene.stop();
});

const nodesNow = async () =>
  (await getJson<{ items: NodeJson[] }>(["nodes", "-l", scene.nodeSelector])).items;
const podsNow = async () => (await getJson<{ items: PodJson[] }>(["pods", "-n", ns])).items;
const nodeCondition = (node: NodeJson, type: string) => node.status.conditions.find((c) => c.type === type);

interface Sample {
  readonly at: number;
  readonly notReady: string[];
  readonly pods: Record<string, { uid: string; deleting: boolean }>;
}

/**
 * Samples nodes and pods every few seconds until `stop()`; the interval paces the sampling, it
 * synchronises nothing. A failed read is kept and fails the test: the API server stays up here.
 */
function sampler() {
  const samples: Sample[] = [];
  const failures: unknown[] = [];
  const stopped = new AbortController();
  const loop = (async () => {
    while (!stopped.signal.aborted) {
      try {
        const [nodes, pods] = await Promise.all([nodesNow(), podsNow()]);
        samples.push({
          at: Date.now(),
          notReady: nodes
            .filter((n) => nodeCondition(n, "Ready")?.status !== "True")
            .map((n) => `${n.metadata.name}: Ready=${nodeCondition(n, "Ready")?.status ?? "missing"}`),
          pods: Object.fromEntries(
            pods.map((p) => [
              p.metadata.name,
              { uid: p.metadata.uid, deleting: p.metadata.deletionTimestamp !== undefined },
            ]),
          ),
        });
      } catch (err) {
        failures.push(err);
      }
      await sleep(sampleEveryMs, undefined, { signal: stopped.signal }).catch(() => undefined);
    }
  })();
  return {
    samples,
    failures,
    async stop() {
      stopped.abort();
      await loop;
    },
  };
}

/**
 * Mosquitto down for `outageMs`, then up again for `afterMs`. Resolves with what did not happen in
 * time (undefined when it did): the loss shown during the outage, and cleared after it. These are
 * judged after the samples, so a run that fails both says first what matters most.
 */
async function outageAndBack(): Promise<{ lossShown?: Error; lossCleared?: Error }> {
  const failure = (err: unknown) => (err instanceof Error ? err : new Error(String(err)));
  let lossShown: Error | undefined;
  try {
    await scene.broker.stop();
    const stoppedAt = Date.now();
    // The loss becomes visible while the broker is still down.
    lossShown = await eventually(
      async () => {
        for (const node of await nodesNow()) {
          const name = node.metadata.name;
          expect(nodeCondition(node, "TransportConnected")?.status, name).toBe("False");
          expect(node.spec.taints ?? [], name).toContainEqual(
            expect.objectContaining({ key: transportTaint, effect: "NoSchedule" }),
          );
        }
        for (const p of await podsNow()) {
          expect(condition(p, "devicelet.dev/DeviceConnected"), p.metadata.name).toMatchObject({
            status: "Unknown",
            reason: "TransportDisconnected",
          });
        }
      },
      { timeoutMs: outageMs - 5_000, intervalMs: 1_000 },
    ).then(() => undefined, failure);
    await until(stoppedAt + outageMs);
  } finally {
    await scene.broker.start();
  }
  const backAt = Date.now();
  const lossCleared = await eventually(
    async () => {
      for (const node of await nodesNow()) {
        const name = node.metadata.name;
        expect(nodeCondition(node, "TransportConnected")?.status, name).toBe("True");
        expect(
          (node.spec.taints ?? []).map((t) => t.key),
          name,
        ).not.toContain(transportTaint);
      }
      for (const p of await podsNow()) {
        expect(condition(p, "devicelet.dev/DeviceConnected")?.status, p.metadata.name).toBe("True");
        expect(isReady(p), p.metadata.name).toBe(true);
      }
    },
    { timeoutMs: afterMs, intervalMs: 1_000 },
  ).then(() => undefined, failure);
  await until(backAt + afterMs);
  return { lossShown, lossCleared };
}

/** Waits until `at` (a scenario's fixed duration: the outage lasts this long whatever happens). */
const until = (at: number) => sleep(Math.max(0, at - Date.now()));

describe("broker outage", () => {
  it(
    "keeps every node Ready and every pod, shows the loss as a condition and a taint, and clears it after",
    { timeout: outageMs + afterMs + 180_000 },
    async () => {
      await apply(barePod({ namespace: ns, testId: id, name: "on-a", node: gwA }));
      await apply(barePod({ namespace: ns, testId: id, name: "on-b", node: gwB }));
      await apply(`apiVersion: apps/v1
kind: Deployment
metadata: { name: kept, namespace: ${ns} }
spec:
  replicas: 1
  selector: { matchLabels: { app: kept } }
  template:
    metadata: { labels: { app: kept } }
    spec:
      nodeSelector: { kubernetes.io/hostname: ${gwB} }
      tolerations: [{ key: virtual-kubelet.io/provider, operator: Exists, effect: NoSchedule }]
      containers: [{ name: app, image: example/kept:1 }]
`);
      const before = await eventually(
        async () => {
          const pods = await podsNow();
          expect(pods).toHaveLength(3);
          for (const p of pods) expect(isReady(p), p.metadata.name).toBe(true);
          return pods;
        },
        { timeoutMs: 60_000 },
      );
      const uids = Object.fromEntries(before.map((p) => [p.metadata.name, p.metadata.uid]));
      const uidsOn = (node: string) =>
        before.filter((p) => p.spec.nodeName === node).map((p) => p.metadata.uid);
      // Documents delivered from here on must all carry these pods.
      const seenBefore = new Map([...desiredSeen].map(([device, docs]) => [device, docs.length]));

      const watch = sampler();
      let outcome: Awaited<ReturnType<typeof outageAndBack>>;
      try {
        outcome = await outageAndBack();
      } finally {
        await watch.stop();
      }

      // Judged on the whole record: enough samples, spread over the outage and the minute after.
      expect(watch.failures).toEqual([]);
      expect(watch.samples.length).toBeGreaterThan((outageMs + afterMs) / sampleEveryMs / 2);
      expect(watch.samples.flatMap((s) => s.notReady)).toEqual([]);
      for (const s of watch.samples) {
        expect(s.pods).toEqual(
          Object.fromEntries(Object.entries(uids).map(([name, uid]) => [name, { uid, deleting: false }])),
        );
      }
      for (const device of [gwA, gwB]) {
        // At least the retained document, delivered again when the subscriber reconnected.
        const docs = (desiredSeen.get(device) ?? []).slice(seenBefore.get(device) ?? 0);
        expect(docs.length, device).toBeGreaterThan(0);
        for (const doc of docs) {
          expect(
            doc?.pods.map((p) => p.uid),
            device,
          ).toEqual(expect.arrayContaining(uidsOn(device)));
          expect(
            doc?.tombstones.filter((t) => uidsOn(device).includes(t.uid)),
            device,
          ).toEqual([]);
        }
        // The devices kept running their apps.
        expect(scene.device(device).runningPods().sort(), device).toEqual(uidsOn(device).sort());
      }
      // Shown while the broker was down (condition, taint, pod condition), and cleared after.
      if (outcome.lossShown !== undefined) throw outcome.lossShown;
      if (outcome.lossCleared !== undefined) throw outcome.lossCleared;
    },
  );

  it(
    "starts with the broker down, renews every node's Lease and keeps every node Ready",
    { timeout: 240_000 },
    async () => {
      const leaseRenewed = async () =>
        Object.fromEntries(
          await Promise.all(
            [gwA, gwB].map(async (node) => {
              const lease = await getJson<{ spec: { renewTime?: string } }>([
                "lease",
                node,
                "-n",
                "kube-node-lease",
              ]);
              return [node, Date.parse(lease.spec.renewTime ?? "")] as const;
            }),
          ),
        );
      await scene.devicelet.stop();
      await scene.broker.stop();
      const watch = sampler();
      try {
        const stoppedRenewals = await leaseRenewed();
        const runningLines = () =>
          scene.devicelet.logLines().filter((l) => l.msg === "devicelet is running").length;
        const runningBefore = runningLines();
        // The process starts; its pods wait for the broker, its nodes must not.
        await scene.devicelet.restart({ waitForRunning: false });
        const startedAt = Date.now();
        // Every Lease renewed by the new run, and then again (a heartbeat, not one write).
        const firstRenewals = await eventually(
          async () => {
            const now = await leaseRenewed();
            for (const node of [gwA, gwB])
              expect(now[node], node).toBeGreaterThan(stoppedRenewals[node] ?? 0);
            return now;
          },
          { timeoutMs: 30_000, intervalMs: 1_000 },
        );
        await eventually(
          async () => {
            const now = await leaseRenewed();
            for (const node of [gwA, gwB]) expect(now[node], node).toBeGreaterThan(firstRenewals[node] ?? 0);
          },
          { timeoutMs: 30_000, intervalMs: 1_000 },
        );
        // Longer than the node-monitor grace: a node whose Lease went stale would be NotReady by now.
        await until(startedAt + (nodeMonitorGraceSeconds + 15) * 1000);
        await watch.stop();
        // Judged on the whole record, as above.
        expect(watch.failures).toEqual([]);
        expect(watch.samples.length).toBeGreaterThan(nodeMonitorGraceSeconds / (sampleEveryMs / 1000) / 2);
        expect(watch.samples.flatMap((s) => s.notReady)).toEqual([]);
        for (const node of await nodesNow())
          expect(nodeCondition(node, "TransportConnected")?.status, node.metadata.name).toBe("False");
        // It said why it was not running yet, and it was not: pods need the broker's state first.
        expect(
          scene.devicelet
            .logLines()
            .some((l) => l.msg === "nodes are heartbeating; waiting for the provider"),
        ).toBe(true);
        expect(runningLines()).toBe(runningBefore);
        await scene.broker.start();
        await eventually(() => expect(runningLines()).toBe(runningBefore + 1), { timeoutMs: 60_000 });
      } finally {
        await watch.stop();
        await scene.broker.start();
      }
    },
  );
});
