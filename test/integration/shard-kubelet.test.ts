/**
 * The kubelet API of a sharded devicelet, end to end in the lab (test/support/lab.ts): one
 * replica, 3 shards, 6 mock devices, ONE kubelet API serving every shard's nodes (one serving
 * certificate, one port per node): `kubectl logs` reaches the app on every node, whichever shard
 * engine serves it. A second replica joins and takes the shards assigned to it: the first releases
 * those nodes' ports, the second binds them, and `kubectl logs` on the moved pods answers again,
 * now from the second replica's engines.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { assignShards, shardOf } from "../../src/shard/index.ts";
import { eventually } from "../support/eventually.ts";
import { startLab, type Lab, type LabDevicelet } from "../support/lab.ts";
import { splitName } from "../support/shard-names.ts";
import { isReady, pod, type PodJson } from "../support/workloads.ts";

const shards = 3;
const devicesOf = (name: string) => Array.from({ length: 6 }, (_, i) => `${name}-d${i}`);
/** Replicas `<id>-a` and `<id>-b` each own some of the devices: the hand-over moves some, not all. */
const id = splitName("kshard", shards, devicesOf);
const ns = id;
const devices = devicesOf(id);
let lab: Lab;
let failed = false;

const start = (who: string, labOf: Lab): Promise<LabDevicelet> =>
  labOf.startDevicelet({
    // a's lab id is the test id, so the lab's node check (label devicelet.dev/test=<lab id>) finds them.
    id: who === "a" ? id : `${id}-${who}`,
    provider: { devices: { count: devices.length, idPrefix: `${id}-d` }, appLogIntervalMs: 200 },
    core: {
      kubeconfig: labOf.adminKubeconfig,
      nodes: { extraLabels: { "devicelet.dev/test": id } },
      sharding: { enabled: true, shards, leasePrefix: id },
      leaderElection: { identity: `${id}-${who}` },
    },
    expectNodes: who === "a" ? devices.length : 0,
  });

const logsOf = async (device: string) => {
  const out = await lab.kubectlOk(["logs", "-n", ns, `p-${device.slice(id.length + 1)}`, "--tail=1"]);
  return out.split("\n").filter(Boolean);
};

beforeAll(async () => {
  lab = await startLab({ id: "shard-kubelet" });
}, 420_000);
afterAll(async () => {
  if (!(lab as Lab | undefined)) return;
  if (failed) console.error(lab.describe());
  await lab.stop({ keepDir: failed });
}, 60_000);

describe("the kubelet API of sharded engines", () => {
  it(
    "routes each node to its shard's engine, and follows a shard to its new replica",
    { timeout: 300_000 },
    async ({ onTestFailed }) => {
      onTestFailed(() => {
        failed = true;
      });
      const a = await start("a", lab);
      await lab.kubectlOk(["create", "namespace", ns]);
      await lab.kubectlOk(["apply", "-f", "-"], {
        input: devices
          .map((d) =>
            pod({
              namespace: ns,
              name: `p-${d.slice(id.length + 1)}`,
              testId: id,
              node: d,
              spec: `  containers:
    - name: app
      image: example/sensor:1.0`,
            }),
          )
          .join("\n---\n"),
      });
      await eventually(
        async () => {
          const items = (
            JSON.parse(await lab.kubectlOk(["get", "pods", "-n", ns, "-o", "json"])) as { items: PodJson[] }
          ).items;
          expect(items).toHaveLength(devices.length);
          for (const p of items) expect(isReady(p), p.metadata.name).toBe(true);
        },
        { timeoutMs: 90_000 },
      );
      // Every shard is served here; logs come back for every node.
      for (const d of devices) await eventually(async () => expect(await logsOf(d)).toHaveLength(1));

      // The second replica takes some of the devices, not all (splitName chose the id for that).
      const owners = assignShards(shards, [`${id}-a`, `${id}-b`]);
      const moved = devices.filter((d) => owners[shardOf(d, shards)] === `${id}-b`);
      expect(moved.length).toBeGreaterThan(0);
      expect(moved.length).toBeLessThan(devices.length);
      const b = await start("b", lab);
      await eventually(
        () => {
          const running = new Set(
            b
              .logLines()
              .filter((l) => l.msg === "shard engine running")
              .map((l) => l.shard),
          );
          for (const d of moved) expect(running.has(shardOf(d, shards)), d).toBe(true);
        },
        { timeoutMs: 60_000 },
      );
      // The moved nodes' logs are served by b now (its mock runs the apps; a's stopped with its shards).
      for (const d of devices)
        await eventually(async () => expect(await logsOf(d), d).toHaveLength(1), { timeoutMs: 60_000 });
      // a gave the moved nodes' ports up when their shards stopped, and only theirs.
      const released = a
        .logLines()
        .filter((l) => l.msg === "kubelet API port released")
        .map((l) => l.node as string);
      expect([...new Set(released)].sort()).toEqual([...moved].sort());
      await a.stop();
      await b.stop();
    },
  );
});
