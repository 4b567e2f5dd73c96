/**
 * Three `devicelet run` replicas with `sharding.enabled` (8 shards, client-go's timings: lease
 * 15 s, renew deadline 10 s, retry 2 s) and the MQTT provider, against a real Mosquitto with 20
 * simulated gateways, while pods are created, updated and deleted in a bounded loop; one replica
 * is SIGKILLed in the middle of it. Asserted on the world:
 * - the survivors take the dead replica's shards: at the end every shard Lease is held by the
 *   survivor the rendezvous assignment over the two gives it, and that survivor runs its engine;
 * - no device node is ever anything but Ready (nodes polled every second throughout);
 * - no generation is reused: per device, every desired document the broker delivered (a recorder
 *   subscribed before the first replica started) carries a strictly increasing generation;
 * - no change is lost: every pod left at the end runs its latest spec on its device (its last
 *   applied document is the last one published), and every deleted pod is gone;
 * - no apply is duplicated: each device applied each generation at most once, and never a document
 *   with the same content as the one before it.
 * The time from SIGKILL to the last of the dead replica's shards starting elsewhere is printed.
 *
 * The replicas use the admin kubeconfig: the chart's Role does not grant list and delete on Leases
 * yet (the shard coordinator needs them).
 */
import { setTimeout as sleep } from "node:timers/promises";
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Lease } from "../../src/kube/index.ts";
import type { DesiredDocument } from "../../src/protocol/types.ts";
import { assignShards, SHARD_LEASE_LABEL } from "../../src/shard/index.ts";
import { eventually, expectContinuous } from "../support/eventually.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import { startBroker, stopAll, type RunningMqttDevicelet } from "../support/mqtt.ts";
import { mqttScene } from "../support/scene.ts";
import { adminKubeconfig, uniqueName } from "../support/testenv.ts";
import { isReady, type PodJson } from "../support/workloads.ts";

const id = uniqueName("shardkill");
const ns = id;
const shards = 8;
const devices = Array.from({ length: 20 }, (_, i) => `${id}-gw-${i}`);
const ROUNDS = 10;
const KILL_AFTER = 2;
const nodeLeaseSeconds = 40;
/**
 * Node leases renew every 5 s, not the default 10 s. The harness controller-manager declares a
 * node dead 30 s after its last renewal (`nodeMonitorGraceSeconds`; Kubernetes' default is 50 s),
 * and the worst node's gap is its age at the kill plus the takeover (up to 15 s of lease and two
 * 2 s ticks with jitter) plus the engine's start: with 10 s renewals that left about 3 s under CI
 * load, where a cluster's defaults leave 20.
 */
const nodeLease = { durationSeconds: nodeLeaseSeconds, renewIntervalSeconds: 5 };
const identity = (who: string) => `${id}-${who}`;

const core = (who: string) => ({
  kubeconfig: adminKubeconfig(),
  nodes: { extraLabels: { "devicelet.dev/test": id } },
  lease: nodeLease,
  sharding: { enabled: true, shards, leasePrefix: id },
  leaderElection: { identity: identity(who) },
});
const provider = (brokerUrl: string) => ({
  broker: { url: brokerUrl, clientId: `devicelet-${id}`, reconnect: { minDelayMs: 100, maxDelayMs: 2000 } },
  devices: { allow: [`${id}-*`] },
  desired: { generationBlock: 4 },
  metricsLogIntervalSeconds: 1,
});

let recorder: mqtt.MqttClient | undefined;
const seen: DesiredDocument[] = [];

const scene = mqttScene({
  id,
  devices: devices.map((d) => ({ id: d, kind: "gateway" as const })),
  simulator: { appStartMs: 50 },
  provider: (broker) => provider(broker.url),
  core: core("a"),
  broker: async (name) => {
    const broker = await startBroker(name);
    try {
      recorder = await mqtt.connectAsync(broker.url, { clean: true, reconnectPeriod: 0 });
      recorder.on("message", (_topic, payload) => {
        if (payload.length > 0) seen.push(JSON.parse(payload.toString("utf8")) as DesiredDocument);
      });
      await recorder.subscribeAsync("devicelet/v1/+/desired", { qos: 1 });
      return broker;
    } catch (err) {
      await broker.stop();
      throw err;
    }
  },
});

let stopWatch = (): Promise<void> => Promise.resolve();
beforeAll(() => scene.start(), 240_000);
afterAll(
  () =>
    stopAll(
      () => stopWatch(),
      () => recorder?.endAsync() ?? Promise.resolve(),
      () => scene.stop(),
      () => kubectl(["delete", "nodes", "-l", `devicelet.dev/test=${id}`, "--wait=false"]),
    ),
  120_000,
);

interface NodeJson {
  metadata: { name: string };
  status: { conditions: { type: string; status: string }[] };
}
const shardLeases = async () =>
  (await getJson<{ items: Lease[] }>(["leases", "-n", ns, "-l", `${SHARD_LEASE_LABEL}=${id}`])).items;

const labelled = (name: string, node: string, round: number) => `apiVersion: v1
kind: Pod
metadata: { name: ${name}, namespace: ${ns}, labels: { round: "${round}" } }
spec:
  nodeSelector: { kubernetes.io/hostname: ${node} }
  tolerations:
    - { key: virtual-kubelet.io/provider, operator: Exists, effect: NoSchedule }
  terminationGracePeriodSeconds: 2
  containers:
    - { name: app, image: example/app:1 }
`;
const podName = (round: number, device: number) => `r${round}-${device}`;
const engineStarts = (replica: RunningMqttDevicelet) =>
  replica
    .logLines()
    .filter((l) => l.msg === "shard engine running")
    .map((l) => ({ shard: l.shard as number, at: l.time as number }));

describe("three sharded replicas, one SIGKILLed under load", () => {
  it(
    "the survivors take its shards with no node NotReady, no generation reused, no change lost, no apply duplicated",
    { timeout: 420_000 },
    async () => {
      const a = scene.devicelet;
      const b = await scene.startDevicelet({
        id: `${id}-b`,
        provider: provider(scene.broker.url),
        core: core("b"),
      });
      const c = await scene.startDevicelet({
        id: `${id}-c`,
        provider: provider(scene.broker.url),
        core: core("c"),
      });
      const all = assignShards(shards, ["a", "b", "c"].map(identity));
      await eventually(
        async () => {
          const byName = new Map(
            (await shardLeases()).map((l) => [l.metadata?.name, l.spec?.holderIdentity]),
          );
          for (const [shard, owner] of all.entries())
            expect(byName.get(`${id}-shard-${shard}`), `shard ${shard}`).toBe(owner);
        },
        { timeoutMs: 90_000 },
      );
      // The victim: the replica with the most shards (b on a tie).
      const count = (who: string) => all.filter((o) => o === identity(who)).length;
      const victimName = ["b", "a", "c"].reduce((x, y) => (count(y) > count(x) ? y : x));
      const replicas = { a, b, c };
      const victim = replicas[victimName as keyof typeof replicas];
      const survivors = ["a", "b", "c"].filter((w) => w !== victimName);
      const victimShards = all.flatMap((o, s) => (o === identity(victimName) ? [s] : []));

      const notReady: string[] = [];
      /** When each poll of the nodes answered. */
      const polls: number[] = [];
      const watching = { on: true };
      const watch = (async () => {
        while (watching.on) {
          try {
            for (const n of (await getJson<{ items: NodeJson[] }>(["nodes", "-l", scene.nodeSelector]))
              .items) {
              const ready = n.status.conditions.find((x) => x.type === "Ready")?.status;
              if (ready !== "True") notReady.push(`${n.metadata.name} Ready=${ready} at ${Date.now()}`);
            }
            polls.push(Date.now());
          } catch {
            // A failed poll is a gap in the record, not a finding.
          }
          await sleep(1_000);
        }
      })();
      stopWatch = async () => {
        watching.on = false;
        await watch;
      };

      let killedAt = 0;
      for (let round = 0; round < ROUNDS; round++) {
        await apply(devices.map((d, i) => labelled(podName(round, i), d, round)).join("---\n"));
        if (round >= 1)
          await kubectl(["set", "image", "pod", "-l", `round=${round - 1}`, "app=example/app:2", "-n", ns]);
        if (round >= 2)
          await kubectl(["delete", "pod", "-l", `round=${round - 2}`, "-n", ns, "--wait=false"]);
        if (round === KILL_AFTER) {
          killedAt = Date.now();
          await victim.kill();
        }
        // Pacing of the load (bounded), not synchronisation.
        await sleep(1_500);
      }
      const left = devices.flatMap((_, i) => [podName(ROUNDS - 2, i), podName(ROUNDS - 1, i)]);

      // The survivors own every shard as the assignment over the two says, each running its engine.
      const after = assignShards(shards, survivors.map(identity));
      await eventually(
        async () => {
          const byName = new Map(
            (await shardLeases()).map((l) => [l.metadata?.name, l.spec?.holderIdentity]),
          );
          for (const [shard, owner] of after.entries())
            expect(byName.get(`${id}-shard-${shard}`), `shard ${shard}`).toBe(owner);
          for (const shard of victimShards) {
            const owner = replicas[(after[shard] ?? "").slice(id.length + 1) as keyof typeof replicas];
            expect(
              engineStarts(owner).some((s) => s.shard === shard && s.at > killedAt),
              `shard ${shard}`,
            ).toBe(true);
          }
        },
        { timeoutMs: 90_000 },
      );
      const pods = await eventually(
        async () => {
          const items = (
            await getJson<{ items: (PodJson & { spec: { containers: { image: string }[] } })[] }>([
              "pods",
              "-n",
              ns,
            ])
          ).items;
          expect(items.map((p) => p.metadata.name).sort()).toEqual([...left].sort());
          for (const p of items) expect(isReady(p), p.metadata.name).toBe(true);
          return items;
        },
        { timeoutMs: 180_000 },
      );
      const imageOf = new Map(pods.map((p) => [p.metadata.name, p.spec.containers[0]?.image]));
      const uidOf = new Map(pods.map((p) => [p.metadata.name, p.metadata.uid]));
      await eventually(
        () => {
          for (const [i, deviceId] of devices.entries()) {
            const mine = [podName(ROUNDS - 2, i), podName(ROUNDS - 1, i)];
            const device = scene.device(deviceId);
            expect(device.runningPods().sort(), deviceId).toEqual(mine.map((n) => uidOf.get(n)).sort());
            const last = seen.filter((d) => d.deviceId === deviceId).at(-1);
            expect(last?.pods.map((p) => `${p.name} ${p.apps[0]?.image}`).sort(), deviceId).toEqual(
              mine.map((n) => `${n} ${imageOf.get(n)}`).sort(),
            );
            expect(device.appliedGenerations.at(-1), deviceId).toEqual({
              epoch: last?.epoch,
              generation: last?.generation,
            });
          }
        },
        { timeoutMs: 60_000 },
      );
      expect(imageOf.get(podName(ROUNDS - 2, 0))).toBe("example/app:2");
      // The node record must run past the moment all of that held (which is after every takeover),
      // so the watcher stops only once a poll has answered after it.
      const lastLook = Date.now();
      await eventually(() => expect(polls.at(-1)).toBeGreaterThan(lastLook));
      await stopWatch();
      expect(notReady).toEqual([]);

      for (const deviceId of devices) {
        const docs = seen.filter((d) => d.deviceId === deviceId);
        expect(new Set(docs.map((d) => d.epoch)).size, deviceId).toBe(1);
        const backwards = docs.filter((d, k) => k > 0 && d.generation <= (docs[k - 1]?.generation ?? 0));
        expect(
          backwards.map((d) => `${d.epoch}/${d.generation}`),
          deviceId,
        ).toEqual([]);
      }
      const contentOf = new Map(seen.map((d) => [`${d.deviceId} ${d.epoch}/${d.generation}`, d.contentHash]));
      for (const deviceId of devices) {
        const applied = scene
          .device(deviceId)
          .appliedGenerations.map((g) => `${deviceId} ${g.epoch}/${g.generation}`);
        expect(new Set(applied).size, deviceId).toBe(applied.length);
        const hashes = applied.map((k) => contentOf.get(k));
        expect(
          applied.filter((_, k) => k > 0 && hashes[k] === hashes[k - 1]),
          deviceId,
        ).toEqual([]);
      }
      const takeovers = victimShards.map((shard) => {
        const owner = replicas[(after[shard] ?? "").slice(id.length + 1) as keyof typeof replicas];
        return (
          (engineStarts(owner).find((s) => s.shard === shard && s.at > killedAt)?.at ?? Infinity) - killedAt
        );
      });
      // The node record spans the kill, every takeover and the convergence after them, with no gap a
      // NotReady node could hide in. (It used to ask for more than 20 polls, which a quick run did
      // not reach; then it ended at the last takeover, which a quick run could pass before the
      // watcher's next poll.)
      expect(Math.max(...takeovers)).toBeLessThan(lastLook - killedAt);
      expectContinuous(polls, { from: killedAt, to: lastLook, maxGapMs: 5_000 });
      console.log(
        [
          `sharded kill (${shards} shards, 3 replicas, ${devices.length} devices; lease 15 s / renew 10 s / retry 2 s; node leases renewed every 5 s):`,
          `  killed ${victimName} holding shards ${victimShards.join(",")}`,
          `  SIGKILL → its shards' engines running elsewhere: ${takeovers.join(", ")} ms`,
          `  desired documents seen: ${seen.length}; applies: ${devices.map((d) => scene.device(d).appliedGenerations.length).reduce((x, y) => x + y, 0)}`,
          `  nodes polled ${polls.length} times`,
        ].join("\n"),
      );
    },
  );
});
