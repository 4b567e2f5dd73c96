/**
 * `devicelet run` with `sharding.enabled` and the mock provider, on the harness control plane:
 * one replica runs an engine per shard (4 shards, 12 devices), each device's node carries
 * `devicelet.dev/shard=<shardOf(id)>`, and pods on every node run. A second replica joins: it
 * takes the shards the rendezvous assignment gives it, adopts their nodes and pods, and no node is
 * ever anything but Ready (polled every 500 ms throughout), no pod stops being Ready.
 *
 * The mock devices keep their state in files shared by the replicas (`<stateFile>.shard-<i>`), as
 * real devices keep running their apps whichever replica serves them: the new owner of a shard
 * finds its pods running and adopts them, instead of starting them again (Pending for a moment).
 *
 * The replicas use the admin kubeconfig: the chart's Role does not grant list and delete on Leases
 * yet (the shard coordinator needs them).
 */
import { mkdtempSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";
import type { Lease } from "../../src/kube/index.ts";
import { assignShards, SHARD_LEASE_LABEL, shardOf } from "../../src/shard/index.ts";
import { nodeMonitorGraceSeconds } from "../../src/testing/controlplane/controlplane.ts";
import { runDevicelet, type DeviceletProcess } from "../support/devicelet.ts";
import { eventually, expectContinuous } from "../support/eventually.ts";
import { readyz } from "../support/leader.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import { stopAll } from "../support/mqtt.ts";
import { splitName } from "../support/shard-names.ts";
import { expectNoLapse, recordNodeLeases } from "../support/node-leases.ts";
import { adminKubeconfig } from "../support/testenv.ts";
import { isReady, type PodJson } from "../support/workloads.ts";

const shards = 4;
const id = splitName("shardeng", shards);
const ns = id;
const devices = Array.from({ length: 12 }, (_, i) => `${id}-d${i}`);
const stateFile = path.join(mkdtempSync(path.join(os.tmpdir(), `${id}-mock-`)), "devices.json");

interface NodeJson {
  metadata: { name: string; labels: Record<string, string> };
  status: { conditions: { type: string; status: string }[] };
}

const replicas: DeviceletProcess[] = [];
const startReplica = async (who: string, mock: Record<string, unknown> = {}) => {
  const replica = await runDevicelet({
    id: `${id}-${who}`,
    waitForRunning: true,
    config: () => ({
      kubeconfig: adminKubeconfig(),
      state: { namespace: ns },
      nodes: { extraLabels: { "devicelet.dev/test": id } },
      pods: { statusDebounceMs: 50 },
      sharding: { enabled: true, shards, leasePrefix: id },
      leaderElection: { identity: `${id}-${who}` },
      provider: {
        type: "mock",
        config: {
          devices: { count: devices.length, idPrefix: `${id}-d` },
          appStartDelayMs: 50,
          stateFile,
          ...mock,
        },
      },
    }),
  });
  replicas.push(replica);
  return replica;
};

const shardLeases = async () =>
  (await getJson<{ items: Lease[] }>(["leases", "-n", ns, "-l", `${SHARD_LEASE_LABEL}=${id}`])).items;

const nodes = async () =>
  (await getJson<{ items: NodeJson[] }>(["nodes", "-l", `devicelet.dev/test=${id}`])).items;

const podYaml = (device: string) => `apiVersion: v1
kind: Pod
metadata: { name: p-${device.slice(id.length + 1)}, namespace: ${ns} }
spec:
  nodeSelector: { kubernetes.io/hostname: ${device} }
  tolerations:
    - { key: virtual-kubelet.io/provider, operator: Exists, effect: NoSchedule }
  terminationGracePeriodSeconds: 1
  containers:
    - { name: app, image: example/app:1 }
`;

beforeAll(async () => {
  await kubectl(["create", "namespace", ns]);
}, 60_000);
afterAll(
  () =>
    stopAll(
      ...replicas.map((r) => () => r.stop()),
      () => kubectl(["delete", "nodes", "-l", `devicelet.dev/test=${id}`, "--wait=false"]),
      () => kubectl(["delete", "namespace", ns, "--wait=false"]),
    ),
  120_000,
);

describe("sharded engines", () => {
  it(
    "one replica serves every shard; a second takes its shards over with no node NotReady",
    { timeout: 300_000 },
    async () => {
      const a = await startReplica("a");
      // Every device a node, labelled with its shard; every shard Lease held by a.
      await eventually(
        async () => {
          const items = await nodes();
          expect(items.map((n) => n.metadata.name).sort()).toEqual([...devices].sort());
          for (const n of items)
            expect(n.metadata.labels["devicelet.dev/shard"], n.metadata.name).toBe(
              String(shardOf(n.metadata.name, shards)),
            );
          const held = (await shardLeases()).map((l) => l.spec?.holderIdentity);
          expect(held).toEqual(Array.from({ length: shards }, () => `${id}-a`));
        },
        { timeoutMs: 60_000 },
      );
      await apply(devices.map(podYaml).join("---\n"));
      const allPodsReady = async () => {
        const pods = (await getJson<{ items: PodJson[] }>(["pods", "-n", ns])).items;
        expect(pods).toHaveLength(devices.length);
        for (const p of pods) expect(isReady(p), p.metadata.name).toBe(true);
      };
      await eventually(allPodsReady, { timeoutMs: 60_000 });
      await eventually(async () => expect(await readyz(a)).toBe(200));

      // Watch every node's Ready condition and every pod's readiness while b joins.
      const seen: string[] = [];
      /** When each poll answered. */
      const polls: number[] = [];
      const watching = { on: true };
      const watch = (async () => {
        while (watching.on) {
          try {
            for (const n of await nodes()) {
              const ready = n.status.conditions.find((c) => c.type === "Ready")?.status;
              if (ready !== "True") seen.push(`${n.metadata.name} Ready=${ready}`);
            }
            for (const p of (await getJson<{ items: PodJson[] }>(["pods", "-n", ns])).items)
              if (!isReady(p)) seen.push(`pod ${p.metadata.name} not ready`);
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
      const b = await startReplica("b");
      const expected = assignShards(shards, [`${id}-a`, `${id}-b`]);
      expect(expected).toContain(`${id}-b`);
      await eventually(
        async () => {
          const byName = new Map(
            (await shardLeases()).map((l) => [l.metadata?.name, l.spec?.holderIdentity]),
          );
          for (const [shard, owner] of expected.entries())
            expect(byName.get(`${id}-shard-${shard}`), `shard ${shard}`).toBe(owner);
        },
        { timeoutMs: 60_000 },
      );
      // b runs an engine for each of its shards, and its nodes are heartbeated by it: a stays up.
      const bShards = expected.flatMap((owner, shard) => (owner === `${id}-b` ? [shard] : []));
      await eventually(
        () => {
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
      // Past a node lease's renew interval on the new owner, then a last look.
      await sleep(12_000);
      await allPodsReady();
      const lastLook = Date.now();
      await eventually(() => expect(polls.at(-1)).toBeGreaterThan(lastLook));
      watching.on = false;
      await watch;
      expectContinuous(polls, { from: joining, to: lastLook, maxGapMs: 5_000 });
      expect(seen).toEqual([]);
      // The Ready polls end before a heartbeat missed late in the hand-over would show (the
      // controller-manager waits its grace period), so the node Leases say it directly.
      await expectNoLapse(leases, { after: lastLook, graceMs: nodeMonitorGraceSeconds * 1000 });
      // The moved nodes' leases are renewed by b's engines (their holder is the node, so look at
      // b's log instead): b's engines registered no new nodes, they adopted a's.
      expect((await nodes()).map((n) => n.metadata.name).sort()).toEqual([...devices].sort());
    },
  );

  it(
    "stops every shard and exits 1 when one shard's provider fails, releasing the shard Leases",
    { timeout: 120_000 },
    async () => {
      // Alone now: the first test's replicas have stopped and released everything.
      for (const r of replicas.splice(0)) await r.stop();
      const c = await startReplica("c", { fatalErrorAfterMs: 3_000 });
      expect(await c.exited()).toBe(1);
      // It held every shard and ran its engine before the failure. (Read from its log: polling
      // the Leases for a state that lasts about 3 s could miss it on a slow run.)
      const ran = c
        .logLines()
        .filter((l) => l.msg === "shard engine running")
        .map((l) => l.shard);
      expect([...new Set(ran)].sort()).toEqual(Array.from({ length: shards }, (_, s) => s));
      expect(c.logLines().map((l) => l.msg)).toContain("a shard engine failed: stopping every shard");
      expect((await shardLeases()).map((l) => l.spec?.holderIdentity ?? "")).toEqual(
        Array.from({ length: shards }, () => ""),
      );
    },
  );

  it(
    "labels a node registered without its shard (before sharding) and heartbeats it, device reported or not",
    { timeout: 120_000 },
    async () => {
      for (const r of replicas.splice(0)) await r.stop();
      // As a devicelet that ran without sharding left them: no shard label. Two of them belong to
      // devices the provider does not report now (an offline device's node), so only the shard
      // label brings them to an engine; the first is also adopted when its device registers.
      const unlabelled = [devices[0] ?? "", ...devices.slice(-2)];
      for (const name of unlabelled) await kubectl(["label", "node", name, "devicelet.dev/shard-"]);
      const leaseOf = async (name: string) =>
        Date.parse((await getJson<Lease>(["lease", "-n", "kube-node-lease", name])).spec?.renewTime ?? "");
      const before = new Map(await Promise.all(unlabelled.map(async (n) => [n, await leaseOf(n)] as const)));
      await startReplica("d", { devices: { count: devices.length - 2, idPrefix: `${id}-d` } });
      await eventually(
        async () => {
          const byName = new Map((await nodes()).map((n) => [n.metadata.name, n]));
          for (const name of unlabelled) {
            expect(byName.get(name)?.metadata.labels["devicelet.dev/shard"], name).toBe(
              String(shardOf(name, shards)),
            );
            // Served again: its Lease renewed by the shard's engine since the label came back.
            expect(await leaseOf(name), name).toBeGreaterThan(before.get(name) ?? Number.POSITIVE_INFINITY);
          }
        },
        { timeoutMs: 60_000 },
      );
    },
  );
});
