/**
 * One replica running several shard engines (`runShardedEngines`, in this process, with the mock
 * provider) on the harness control plane opens ONE pod watch and ONE ConfigMap watch for all of
 * them, counted at the API client every engine shares, while each engine still watches its own
 * shard's nodes. Pods on every shard's devices run, each engine holds only its own shard's pods,
 * and a ConfigMap edit reaches the mounted file of the pod on every shard.
 *
 * In this process rather than as `devicelet run`: the audit log records the watches of the
 * `devicelet` user only, and a sharded replica needs Lease list and delete, which that user's
 * Role does not grant yet (shard-engines.test.ts runs as admin for the same reason).
 */
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseConfig } from "../../src/config/index.ts";
import { engineKubeClient } from "../../src/engine.ts";
import type { KubeClient } from "../../src/kube/index.ts";
import type { Workload } from "../../src/provider/types.ts";
import {
  runShardedEngines,
  shardOf,
  type ShardedEngines,
  type ShardedOptions,
} from "../../src/shard/index.ts";
import { createMockProvider } from "../../providers/mock/index.ts";
import { eventually } from "../support/eventually.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import { adminKubeconfig, uniqueName } from "../support/testenv.ts";
import { isReady, pod, type PodJson } from "../support/workloads.ts";

const id = uniqueName("shardinf");
const ns = id;
const shards = 4;
/** Two devices on every shard, so each shard runs an engine with pods. */
const devices = (() => {
  const byShard = new Map<number, string[]>();
  for (let i = 0; [...byShard.values()].filter((d) => d.length >= 2).length < shards; i++) {
    const device = `${id}-d${i}`;
    const shard = shardOf(device, shards);
    const list = byShard.get(shard) ?? [];
    if (list.length < 2) byShard.set(shard, [...list, device]);
  }
  return [...byShard.values()].flat().sort();
})();
const podName = (device: string) => `p-${device.slice(id.length + 1)}`;

/** The client every engine shares, counting the watches it opens by path. */
function countingWatches(kube: KubeClient): { kube: KubeClient; watches: string[] } {
  const watches: string[] = [];
  const watch: KubeClient["watch"] = (path, query, options) => {
    watches.push(path);
    return kube.watch(path, query, options);
  };
  const counted = new Proxy(kube, {
    get(target, property) {
      if (property === "watch") return watch;
      const value: unknown = Reflect.get(target, property, target);
      return typeof value === "function" ? (value as (...args: unknown[]) => unknown).bind(target) : value;
    },
  });
  return { kube: counted, watches };
}

const stop = new AbortController();
let kube: KubeClient | undefined;
let sharded: ShardedEngines | undefined;
/** The workload each pod last had on its shard's provider, by pod name. */
const workloads = new Map<string, { shard: number; workload: Workload }>();

beforeAll(async () => {
  await kubectl(["create", "namespace", ns]);
  await apply(`apiVersion: v1
kind: ConfigMap
metadata: { name: cfg, namespace: ${ns} }
data: { mode: one }
`);
}, 60_000);

afterAll(async () => {
  stop.abort();
  await sharded?.done.catch(() => undefined);
  await kube?.close();
  await kubectl(["delete", "nodes", "-l", `devicelet.dev/test=${id}`, "--wait=false"]);
  await kubectl(["delete", "namespace", ns, "--wait=false"]);
}, 120_000);

describe("shard engines of one replica", () => {
  it(
    "share one pod watch and one ConfigMap watch; pods on every shard run and see ConfigMap edits",
    { timeout: 240_000 },
    async () => {
      const config = parseConfig(
        JSON.stringify({
          kubeconfig: adminKubeconfig(),
          nodes: { extraLabels: { "devicelet.dev/test": id } },
          pods: { statusDebounceMs: 50 },
          log: { level: "warn" },
          state: { namespace: ns },
          kubelet: { serve: false },
          health: { serve: false },
          metrics: { serve: false },
          sharding: { enabled: true, shards, leasePrefix: id },
          leaderElection: { identity: `${id}-a` },
          provider: { type: "shard-informer-test", config: {} },
        }),
        "shard informer test config",
      );
      const logger = pino({ level: process.env.DEVICELET_TEST_LOG_LEVEL ?? "warn" });
      const options: ShardedOptions = {
        config,
        logger,
        version: "test",
        // One mock per shard engine, recording the workloads it is given.
        createProvider: (context) => {
          const provider = createMockProvider(
            { devices: devices.map((device) => ({ id: device })), appStartDelayMs: 50 },
            context,
          );
          const shard = context.shard ?? -1;
          const record = (workload: Workload) => workloads.set(workload.pod.name, { shard, workload });
          const createPod = provider.createPod.bind(provider);
          const updatePod = provider.updatePod.bind(provider);
          provider.createPod = (workload) => {
            record(workload);
            return createPod(workload);
          };
          provider.updatePod = (workload) => {
            record(workload);
            return updatePod(workload);
          };
          return provider;
        },
      };
      const counting = countingWatches(engineKubeClient(options, `${id}-a`));
      kube = counting.kube;
      const replica = await runShardedEngines({ ...options, kube }, stop.signal);
      sharded = replica;
      const engines = () => replica.engines();

      // Every shard's engine running, with its two devices' nodes.
      await eventually(
        () => {
          expect([...engines().keys()].sort()).toEqual(Array.from({ length: shards }, (_, s) => s));
          for (const [shard, engine] of engines())
            expect(engine.nodes.nodeNames().sort(), `shard ${shard}`).toEqual(
              devices.filter((d) => shardOf(d, shards) === shard),
            );
        },
        { timeoutMs: 90_000 },
      );

      await apply(
        devices
          .map((device) =>
            pod({
              namespace: ns,
              name: podName(device),
              testId: id,
              node: device,
              spec: `  containers:
    - name: app
      image: example/app:1
      volumeMounts: [{ name: cfg, mountPath: /etc/app }]
  volumes:
    - { name: cfg, configMap: { name: cfg } }
`,
            }),
          )
          .join("---\n"),
      );
      await eventually(
        async () => {
          const pods = (await getJson<{ items: PodJson[] }>(["pods", "-n", ns])).items;
          expect(pods).toHaveLength(devices.length);
          for (const p of pods) expect(isReady(p), p.metadata.name).toBe(true);
        },
        { timeoutMs: 90_000 },
      );
      // Each engine holds only the pods of its shard's nodes, and ran them on its own provider.
      for (const [shard, engine] of engines()) {
        const mine = devices.filter((d) => shardOf(d, shards) === shard).map(podName);
        expect(
          engine.pods
            .managedPods()
            .map((p) => p.metadata?.name)
            .sort(),
          `shard ${shard}`,
        ).toEqual(mine);
        for (const name of mine) expect(workloads.get(name)?.shard, name).toBe(shard);
      }

      // A ConfigMap edit reaches the mounted file of the pod on every shard, the last included.
      await kubectl(["patch", "configmap", "cfg", "-n", ns, "--type=merge", "-p", '{"data":{"mode":"two"}}']);
      await eventually(
        () => {
          for (const device of devices) {
            const files = workloads.get(podName(device))?.workload.apps[0]?.files ?? [];
            expect(
              files.find((f) => f.path === "/etc/app/mode")?.content,
              `${podName(device)} on shard ${shardOf(device, shards)}`,
            ).toBe("two");
          }
        },
        { timeoutMs: 60_000 },
      );

      // One pod watch and one ConfigMap watch for the replica; a node watch per shard engine.
      const opened = (path: string) => counting.watches.filter((p) => p === path).length;
      expect(opened("/api/v1/pods")).toBe(1);
      expect(opened("/api/v1/configmaps")).toBe(1);
      expect(opened("/api/v1/nodes")).toBeGreaterThanOrEqual(shards);
    },
  );
});
