/**
 * A node the node lifecycle controller marked `Unknown` is Ready again within a heartbeat of
 * devicelet coming back, not when its status is next due. `devicelet run` is frozen (SIGSTOP)
 * until the harness controller-manager, its Lease stale past `--node-monitor-grace-period`, sets
 * the node's Ready condition to Unknown (reason `NodeStatusUnknown`); only the node's own kubelet
 * ever sets it back. Then it is thawed (SIGCONT). Its node status would be due again only after
 * `nodeStatus.maxIntervalSeconds` (5 minutes by default, kept here): the node must be Ready and
 * without the controller's `unreachable` taints long before that.
 */
import { afterAll, expect, it } from "vitest";
import { nodeMonitorGraceSeconds } from "../../src/testing/controlplane/controlplane.ts";
import { startDevicelet, type RunningDevicelet } from "../support/devicelet.ts";
import { eventually } from "../support/eventually.ts";
import { getJson, kubectl } from "../support/kubectl.ts";
import { uniqueName } from "../support/testenv.ts";

const id = uniqueName("unknown");
let devicelet: RunningDevicelet | undefined;

afterAll(async () => {
  devicelet?.resume();
  await devicelet?.kill();
  await kubectl(["delete", "namespace", id, "--wait=false", "--ignore-not-found"]);
  await kubectl(["delete", "nodes", "-l", `devicelet.dev/test=${id}`, "--wait=false"]);
});

interface NodeJson {
  metadata: { name: string };
  spec: { taints?: { key: string; effect: string }[] };
  status: { conditions?: { type: string; status: string; reason?: string }[] };
}

const readyOf = (node: NodeJson) => node.status.conditions?.find((c) => c.type === "Ready");
const unreachableTaints = (node: NodeJson) =>
  (node.spec.taints ?? []).filter((t) => t.key === "node.kubernetes.io/unreachable");

it("writes Ready over the controller's Unknown at the next heartbeat after a freeze", async () => {
  await kubectl(["create", "namespace", id]);
  const d = (devicelet = await startDevicelet({
    id,
    provider: { devices: { count: 1, idPrefix: id }, appStartDelayMs: 100 },
    core: { lease: { renewIntervalSeconds: 5 } },
    expectNodes: 1,
  }));
  const [registered] = (await getJson<{ items: NodeJson[] }>(["nodes", "-l", d.nodeSelector])).items;
  const name = registered?.metadata.name ?? "";
  expect(name).not.toBe("");
  const getNode = () => getJson<NodeJson>(["node", name]);
  await eventually(async () => expect(readyOf(await getNode())?.status).toBe("True"), { timeoutMs: 30_000 });

  d.pause();
  try {
    await eventually(
      async () =>
        expect(readyOf(await getNode())).toMatchObject({ status: "Unknown", reason: "NodeStatusUnknown" }),
      { timeoutMs: (nodeMonitorGraceSeconds + 60) * 1000, intervalMs: 1_000 },
    );
  } finally {
    d.resume();
  }

  // Two renew intervals and the round trips: far less than the 5 minutes the status could wait.
  const node = await eventually(
    async () => {
      const n = await getNode();
      expect(readyOf(n)?.status).toBe("True");
      expect(unreachableTaints(n)).toEqual([]);
      return n;
    },
    { timeoutMs: 30_000, intervalMs: 500 },
  );
  expect(readyOf(node)?.reason).not.toBe("NodeStatusUnknown");
  expect(d.logLines().some((l) => l.level === 60)).toBe(false);
});
