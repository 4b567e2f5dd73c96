/**
 * Sharding as the chart installs it, on the harness control plane: a real `helm install` of
 * examples/sharded.yaml (its pods stay Pending: there is no kubelet), and devicelet's code run in
 * this process on that release's ServiceAccount token, so every request is authorized by the
 * chart's RBAC as it would be in the pod.
 *
 * - relabelShardNodes gives nodes registered before sharding their `devicelet.dev/shard` label,
 *   leaves a node without a providerID alone, writes nothing on a second run, and leaves a node
 *   that was deleted and re-created under its name after the list alone (the real API server's
 *   answer to the uid precondition).
 * - A ShardCoordinator joins, holds every shard and leaves: the state-namespace Role's Lease verbs
 *   without resourceNames are enough, and nothing more is granted (no watch, no patch, nothing in
 *   another namespace).
 */
import { mkdtempSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { pino } from "pino";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { createKubeClient, type KubeClient, type Node } from "../../src/kube/index.ts";
import { NodeLabel, providerIdFor } from "../../src/node/build.ts";
import { SHARD_LEASE_LABEL, ShardCoordinator, shardOf } from "../../src/shard/index.ts";
import { relabelShardNodes } from "../../src/shard/relabel.ts";
import { chartDir, helm, helmBinary } from "../support/chart.ts";
import { eventually } from "../support/eventually.ts";
import { getJson, kubectl } from "../support/kubectl.ts";
import { adminKubeconfig, uniqueName, writeTokenKubeconfig } from "../support/testenv.ts";

const release = uniqueName("shard");
const ns = release;
const fullname = `${release}-devicelet`;
/** The chart's default leasePrefix: the release's full name. */
const prefix = fullname;
/** A provider name of this run only, so the nodes listed are this file's. */
const provider = uniqueName("relabel");
const shards = 64;
const elsewhere = uniqueName("shard-elsewhere");
const dir = mkdtempSync(path.join(os.tmpdir(), "devicelet-shard-relabel-"));
const tokenKubeconfig = path.join(dir, "kubeconfig");
const nodes: string[] = [];
let binary = "";
let installed = false;
let client: KubeClient | undefined;
/** The client on the chart's ServiceAccount token. */
const kube = (): KubeClient => {
  if (!client) throw new Error("no client: the release was not installed");
  return client;
};

/** Log lines at warn and above, of every client and component this file runs. */
const problems: Record<string, unknown>[] = [];
const logger = pino(
  { level: "debug" },
  {
    write: (line: string) => {
      const entry = JSON.parse(line) as Record<string, unknown>;
      if (typeof entry.level === "number" && entry.level >= 40) problems.push(entry);
    },
  },
);

beforeAll(async () => {
  binary = await helmBinary();
  await kubectl(["create", "namespace", ns]);
  await kubectl(["create", "namespace", elsewhere]);
  const kubeconfig = `--kubeconfig=${adminKubeconfig()}`;
  await helm(binary, [
    "install",
    release,
    chartDir,
    `--namespace=${ns}`,
    "-f",
    path.join(chartDir, "examples/sharded.yaml"),
    kubeconfig,
  ]);
  installed = true;
  const token = (await kubectl(["create", "token", fullname, "-n", ns, "--duration=1h"])).trim();
  writeTokenKubeconfig(tokenKubeconfig, fullname, token);
  client = createKubeClient({ kubeconfigPath: tokenKubeconfig, qps: 50, burst: 100, logger });
}, 900_000);

afterAll(async () => {
  await client?.close();
  if (nodes.length > 0) await kubectl(["delete", "node", ...nodes, "--ignore-not-found", "--wait=false"]);
  if (installed)
    await helm(binary, ["uninstall", release, `--namespace=${ns}`, `--kubeconfig=${adminKubeconfig()}`]);
  await kubectl(["delete", "namespace", ns, elsewhere, "--wait=false", "--ignore-not-found"]);
}, 120_000);

beforeEach(() => {
  problems.length = 0;
});

/** Creates, as cluster-admin, a Node as devicelet registered it before sharding: no shard label. */
async function createNode(name: string, deviceId: string | undefined): Promise<void> {
  nodes.push(name);
  const node: Node = {
    apiVersion: "v1",
    kind: "Node",
    metadata: {
      name,
      labels: { [NodeLabel.Type]: "virtual-kubelet", [NodeLabel.Transport]: provider },
    },
    spec: deviceId === undefined ? {} : { providerID: providerIdFor(provider, deviceId) },
  };
  await kubectl(["create", "-f", "-"], { input: JSON.stringify(node) });
}

const shardLabels = async (): Promise<Record<string, string | undefined>> =>
  Object.fromEntries(
    (await getJson<{ items: Node[] }>(["nodes", "-l", `${NodeLabel.Transport}=${provider}`])).items.map(
      (n) => [n.metadata?.name ?? "", n.metadata?.labels?.[NodeLabel.Shard]],
    ),
  );

describe("relabelShardNodes as the chart's sharded ServiceAccount", () => {
  it("labels the nodes registered before sharding, leaves one without a providerID alone, then writes nothing", async () => {
    const devices = ["gw-0042", "plant a/sensor#7"] as const;
    await createNode(`${provider}-a`, devices[0]);
    await createNode(`${provider}-b`, devices[1]);
    await createNode(`${provider}-foreign`, undefined);

    const first = await relabelShardNodes({ kube: kube(), providerName: provider, shards, logger });
    expect(await shardLabels()).toEqual({
      [`${provider}-a`]: String(shardOf(devices[0], shards)),
      [`${provider}-b`]: String(shardOf(devices[1], shards)),
      [`${provider}-foreign`]: undefined,
    });
    expect(first).toMatchObject({
      listed: 3,
      relabeled: [`${provider}-a`, `${provider}-b`],
      skipped: [`${provider}-foreign`],
      failed: [],
    });

    // Another replica starting later finds nothing to do: no node written.
    const before = kube().budget.counts()["patch nodes"] ?? 0;
    const second = await relabelShardNodes({ kube: kube(), providerName: provider, shards, logger });
    expect(second).toMatchObject({ listed: 3, relabeled: [], unchanged: 2, failed: [] });
    expect(kube().budget.counts()["patch nodes"] ?? 0).toBe(before);
    // The only warning: the node without a providerID.
    expect(problems.map((p) => p.node)).toEqual([`${provider}-foreign`, `${provider}-foreign`]);
  });

  it("leaves alone a node deleted and re-created under its name after the list", async () => {
    const name = `${provider}-recreated`;
    await createNode(name, "gw-before");
    let recreatedUid = "";
    const racing: Pick<KubeClient, "listNodes" | "patchNode"> = {
      listNodes: async (selector, options) => {
        const listed = await kube().listNodes(selector, options);
        // Only this node (the others are labelled already), then replaced by one of no device.
        await kubectl(["delete", "node", name]);
        await kubectl(["create", "-f", "-"], {
          input: JSON.stringify({
            apiVersion: "v1",
            kind: "Node",
            metadata: {
              name,
              labels: { [NodeLabel.Type]: "virtual-kubelet", [NodeLabel.Transport]: provider },
            },
          }),
        });
        recreatedUid = (await getJson<Node>(["node", name])).metadata?.uid ?? "";
        return listed;
      },
      patchNode: (nodeName, patch, options) => kube().patchNode(nodeName, patch, options),
    };
    const result = await relabelShardNodes({ kube: racing, providerName: provider, shards, logger });
    expect(result).toMatchObject({ relabeled: [], gone: [name], failed: [] });
    const now = await getJson<Node>(["node", name]);
    expect(now.metadata?.uid).toBe(recreatedUid);
    expect(now.metadata?.labels?.[NodeLabel.Shard]).toBeUndefined();
    // The only warning: the node without a providerID, listed again.
    expect(problems.map((p) => p.node)).toEqual([`${provider}-foreign`]);
  });
});

describe("the chart's sharded Role", () => {
  it("lets a coordinator join, hold every shard, release them and leave", async () => {
    const shardCount = 4;
    const identity = `${fullname}-0`;
    const started = new Set<number>();
    const coordinator = new ShardCoordinator({
      kube: kube(),
      namespace: ns,
      prefix,
      identity,
      shards: shardCount,
      leaseDurationMs: 4_000,
      renewDeadlineMs: 3_000,
      retryPeriodMs: 1_000,
      logger,
      onShardStarted: (shard) => started.add(shard),
      onShardStopped: () => undefined,
    });
    const stop = new AbortController();
    const done = coordinator.run(stop.signal);
    try {
      await eventually(() => expect(coordinator.owned()).toEqual([0, 1, 2, 3]), { timeoutMs: 30_000 });
    } finally {
      stop.abort();
      await done;
    }
    expect([...started].sort()).toEqual([0, 1, 2, 3]);
    const leases = await getJson<{
      items: { metadata: { name: string }; spec: { holderIdentity?: string } }[];
    }>(["leases", "-n", ns]);
    const holders = Object.fromEntries(
      leases.items.map((l) => [l.metadata.name, l.spec.holderIdentity ?? ""]),
    );
    // Released (an empty holder), and the member Lease deleted on leaving.
    expect(holders).toEqual(
      Object.fromEntries(Array.from({ length: shardCount }, (_, i) => [`${prefix}-shard-${i}`, ""])),
    );
    const labelled = await kubectl([
      "get",
      "leases",
      "-n",
      ns,
      "-l",
      `${SHARD_LEASE_LABEL}=${prefix}`,
      "-o",
      "name",
    ]);
    expect(labelled.trim().split("\n")).toHaveLength(shardCount);
    expect(problems).toEqual([]);
  });

  it("grants Leases in the state namespace only, and never watch or patch", async () => {
    const canI = async (...args: string[]) =>
      (
        await kubectl(["auth", "can-i", ...args], { kubeconfig: tokenKubeconfig }).catch(
          (err: unknown) => (err as { stdout?: string }).stdout ?? "",
        )
      ).trim();
    for (const verb of ["get", "list", "create", "update", "delete"])
      expect([verb, await canI(verb, "leases.coordination.k8s.io", "-n", ns)]).toEqual([verb, "yes"]);
    for (const verb of ["watch", "patch"])
      expect([verb, await canI(verb, "leases.coordination.k8s.io", "-n", ns)]).toEqual([verb, "no"]);
    for (const verb of ["get", "list", "create", "update", "delete"])
      expect([verb, await canI(verb, "leases.coordination.k8s.io", "-n", elsewhere)]).toEqual([verb, "no"]);
  });
});
