/**
 * `devicelet run` with `sharding.enabled` and the MQTT provider against a real Mosquitto and 12
 * simulated gateways, 4 shards. One replica runs an engine per shard, each with its own MQTT
 * client id (`<clientId>-shard-<i>`); every device's node carries its shard label and every pod
 * runs on its device. A second replica (same base client id, as replicas of one Deployment) joins
 * and takes the shards assigned to it: no node is ever anything but Ready, every pod stays Ready,
 * a pod changed after the hand-over reaches its device from the new owner, and no device applies
 * any generation twice.
 *
 * The replicas use the admin kubeconfig: the chart's Role does not grant list and delete on Leases
 * yet (the shard coordinator needs them).
 */
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";
import type { Lease } from "../../src/kube/index.ts";
import { assignShards, SHARD_LEASE_LABEL, shardOf } from "../../src/shard/index.ts";
import { nodeMonitorGraceSeconds } from "../../src/testing/controlplane/controlplane.ts";
import { eventually, expectContinuous } from "../support/eventually.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import { readyz } from "../support/leader.ts";
import { retainedDesired } from "../support/mqtt.ts";
import { mqttScene } from "../support/scene.ts";
import { splitName } from "../support/shard-names.ts";
import { expectNoLapse, recordNodeLeases } from "../support/node-leases.ts";
import { adminKubeconfig } from "../support/testenv.ts";
import { isReady, type PodJson } from "../support/workloads.ts";

const shards = 4;
const id = splitName("shardmq", shards);
const ns = id;
const devices = Array.from({ length: 12 }, (_, i) => `${id}-gw-${i}`);

const core = (who: string) => ({
  kubeconfig: adminKubeconfig(),
  nodes: { extraLabels: { "devicelet.dev/test": id } },
  sharding: { enabled: true, shards, leasePrefix: id },
  leaderElection: { identity: `${id}-${who}` },
});
const provider = (brokerUrl: string) => ({
  broker: { url: brokerUrl, clientId: `devicelet-${id}`, reconnect: { minDelayMs: 100, maxDelayMs: 2000 } },
  devices: { allow: [`${id}-*`] },
});

const scene = mqttScene({
  id,
  devices: devices.map((d) => ({ id: d, kind: "gateway" as const })),
  simulator: { appStartMs: 50 },
  provider: (broker) => provider(broker.url),
  core: core("a"),
});

beforeAll(() => scene.start(), 240_000);
afterAll(
  () =>
    Promise.all([
      scene.stop(),
      kubectl(["delete", "nodes", "-l", `devicelet.dev/test=${id}`, "--wait=false"]).catch(() => undefined),
    ]),
  120_000,
);

interface NodeJson {
  metadata: { name: string; labels: Record<string, string> };
  status: { conditions: { type: string; status: string }[] };
}
type ImagePod = PodJson & { spec: { containers: { image: string }[] } };

const nodes = async () => (await getJson<{ items: NodeJson[] }>(["nodes", "-l", scene.nodeSelector])).items;
const pods = async () => (await getJson<{ items: ImagePod[] }>(["pods", "-n", ns])).items;
const shardLeases = async () =>
  (await getJson<{ items: Lease[] }>(["leases", "-n", ns, "-l", `${SHARD_LEASE_LABEL}=${id}`])).items;
const podName = (device: string) => `p-${device.slice(id.length + 1)}`;
const podYaml = (device: string, image: string) => `apiVersion: v1
kind: Pod
metadata: { name: ${podName(device)}, namespace: ${ns} }
spec:
  nodeSelector: { kubernetes.io/hostname: ${device} }
  tolerations:
    - { key: virtual-kubelet.io/provider, operator: Exists, effect: NoSchedule }
  terminationGracePeriodSeconds: 1
  containers:
    - { name: app, image: ${image} }
`;

describe("sharded engines with MQTT", () => {
  it(
    "each shard has its own client id; a joining replica takes its shards with no node NotReady and no apply repeated",
    { timeout: 300_000 },
    async () => {
      const a = scene.devicelet;
      await eventually(
        async () => {
          for (const n of await nodes())
            expect(n.metadata.labels["devicelet.dev/shard"], n.metadata.name).toBe(
              String(shardOf(n.metadata.name, shards)),
            );
          expect((await shardLeases()).map((l) => l.spec?.holderIdentity)).toEqual(
            Array.from({ length: shards }, () => `${id}-a`),
          );
        },
        { timeoutMs: 60_000 },
      );
      await apply(devices.map((d) => podYaml(d, "example/app:1")).join("---\n"));
      const converged = async (image: string) => {
        const items = await pods();
        expect(items).toHaveLength(devices.length);
        for (const p of items) {
          expect(isReady(p), p.metadata.name).toBe(true);
          expect(p.spec.containers[0]?.image).toBe(image);
        }
        for (const d of devices) {
          const uid = items.find((p) => p.metadata.name === podName(d))?.metadata.uid;
          expect(scene.device(d).runningPods(), d).toEqual([uid]);
        }
      };
      await eventually(() => converged("example/app:1"), { timeoutMs: 90_000 });
      // One broker session per shard, each under its own client id.
      const connected = (replica: typeof a) =>
        replica.logLines().filter((l) => l.msg === "connected to broker");
      const shardClientIds = (list: readonly number[]) =>
        list.map((s) => `devicelet-${id}-shard-${s}`).sort();
      expect([...new Set(connected(a).map((l) => l.clientId))].sort()).toEqual(
        shardClientIds(Array.from({ length: shards }, (_, s) => s)),
      );

      const seen: string[] = [];
      /** When each poll answered. */
      const polls: number[] = [];
      // Pods are watched through the hand-over only: a new image restarts the app (not Ready a moment).
      const watching = { on: true, pods: true };
      const watch = (async () => {
        while (watching.on) {
          try {
            for (const n of await nodes()) {
              const ready = n.status.conditions.find((c) => c.type === "Ready")?.status;
              if (ready !== "True") seen.push(`${n.metadata.name} Ready=${ready}`);
            }
            const checkPods = watching.pods;
            for (const p of await pods())
              if (checkPods && !isReady(p)) seen.push(`pod ${p.metadata.name} not ready`);
            polls.push(Date.now());
          } catch {
            // A failed poll is a gap in the record, not a finding.
          }
          await sleep(500);
        }
      })();

      await eventually(() => expect(polls.length).toBeGreaterThan(0));
      const leases = recordNodeLeases(devices);
      onTestFinished(() => leases.stop());
      const joining = Date.now();
      const b = await scene.startDevicelet({
        id: `${id}-b`,
        provider: provider(scene.broker.url),
        core: core("b"),
      });
      const expected = assignShards(shards, [`${id}-a`, `${id}-b`]);
      const bShards = expected.flatMap((owner, shard) => (owner === `${id}-b` ? [shard] : []));
      expect(bShards.length).toBeGreaterThan(0);
      await eventually(
        async () => {
          const byName = new Map(
            (await shardLeases()).map((l) => [l.metadata?.name, l.spec?.holderIdentity]),
          );
          for (const [shard, owner] of expected.entries())
            expect(byName.get(`${id}-shard-${shard}`), `shard ${shard}`).toBe(owner);
          const running = b
            .logLines()
            .filter((l) => l.msg === "shard engine running")
            .map((l) => l.shard);
          expect([...new Set(running)].sort()).toEqual(bShards);
        },
        { timeoutMs: 60_000 },
      );
      await eventually(async () => {
        expect(await readyz(a)).toBe(200);
        expect(await readyz(b)).toBe(200);
      });

      // A change after the hand-over reaches every device, from whichever replica owns it now.
      // A poll that already chose to check pods must answer before the image changes.
      watching.pods = false;
      const polled = polls.length;
      await eventually(() => expect(polls.length).toBeGreaterThan(polled));
      await kubectl(["set", "image", "pod", "--all", "app=example/app:2", "-n", ns]);
      await eventually(
        async () => {
          for (const d of devices) {
            const desired = await retainedDesired(scene.broker.url, d);
            expect(
              desired?.pods.map((p) => `${p.name} ${p.apps[0]?.image}`),
              d,
            ).toEqual([`${podName(d)} example/app:2`]);
            expect(scene.device(d).appliedGenerations.at(-1), d).toEqual({
              epoch: desired?.epoch,
              generation: desired?.generation,
            });
          }
        },
        { timeoutMs: 60_000 },
      );
      await eventually(() => converged("example/app:2"), { timeoutMs: 60_000 });
      await sleep(5_000);
      const lastLook = Date.now();
      await eventually(() => expect(polls.at(-1)).toBeGreaterThan(lastLook));
      watching.on = false;
      await watch;
      expectContinuous(polls, { from: joining, to: lastLook, maxGapMs: 5_000 });
      expect(seen).toEqual([]);
      // The Ready polls end before a heartbeat missed late in the hand-over would show (the
      // controller-manager waits its grace period), so the node Leases say it directly.
      await expectNoLapse(leases, { after: lastLook, graceMs: nodeMonitorGraceSeconds * 1000 });
      // No device applied any (epoch, generation) twice.
      for (const d of devices) {
        const applied = scene.device(d).appliedGenerations.map((g) => `${g.epoch}/${g.generation}`);
        expect(new Set(applied).size, d).toBe(applied.length);
      }
      // b connected once per shard it took, under that shard's client id, and found the session a
      // had left on the broker (clean session off): the session moved with the shard.
      const bConnects = connected(b);
      expect(bConnects.map((l) => l.clientId).sort()).toEqual(shardClientIds(bShards));
      for (const l of bConnects) expect(l.sessionPresent, String(l.clientId)).toBe(true);
    },
  );
});
