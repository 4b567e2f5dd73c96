/**
 * Engine benchmark: 1,000 pods over 100 mock device nodes on the harness control plane, then the
 * same Deployment over 100 KWOK fake nodes on the same control plane in the same run.
 *
 * Reports: time until all Running (from the Deployment's creation), p50/p99 from bound to Running
 * as one watcher saw them, API requests per pod by each tool (from the audit log, reads included),
 * and devicelet's peak resident memory. The mock's app start delay is 0, so like KWOK it does no
 * device I/O: this measures the engine and its API traffic.
 */
import { writeFileSync } from "node:fs";
import path from "node:path";
import { randomBytes } from "node:crypto";
import { BenchApi } from "./api.ts";
import { BENCH_LABEL, endProcess } from "./fleet.ts";
import { startKwok } from "./kwok.ts";
import {
  burstDeployment,
  controlPlane,
  kubectl,
  measureBurst,
  peakRssMiB,
  spawnDevicelet,
  waitForNodes,
  testenvDir,
  type BurstResult,
} from "./support.ts";

interface Result extends BurstResult {
  tool: string;
  peakRssMiB?: number;
}

const NODES = 100;
const PODS = 1000;

async function measure(
  tool: string,
  username: string,
  ns: string,
  manifest: string,
): Promise<Omit<Result, "peakRssMiB">> {
  return { tool, ...(await measureBurst({ username, namespace: ns, manifest, pods: PODS })) };
}

async function benchDevicelet(id: string): Promise<Result> {
  const { child } = spawnDevicelet({
    kubeconfig: path.join(testenvDir, "devicelet.kubeconfig"),
    nodes: { extraLabels: { "devicelet.dev/bench": id } },
    log: { level: "warn" },
    provider: {
      type: "mock",
      config: { devices: { count: NODES, idPrefix: id, capacity: { pods: "20" } }, appStartDelayMs: 0 },
    },
  });
  try {
    await waitForNodes(`devicelet.dev/bench=${id}`, NODES);
    const result = await measure(
      "devicelet",
      "devicelet",
      `${id}-devicelet`,
      burstDeployment({
        namespace: `${id}-devicelet`,
        replicas: PODS,
        nodeSelector: { "devicelet.dev/bench": id },
        tolerationKey: "virtual-kubelet.io/provider",
      }),
    );
    const rss = child.pid ? await peakRssMiB(child.pid) : Number.NaN;
    return { ...result, peakRssMiB: rss };
  } finally {
    await endProcess(child);
    kubectl(["delete", "namespace", `${id}-devicelet`, "--wait=false", "--ignore-not-found"]);
    // Without their nodes, the pods left Terminating are removed by the pod garbage collector.
    kubectl(["delete", "nodes", "-l", `${BENCH_LABEL}=${id}`, "--wait=false", "--ignore-not-found"]);
  }
}

async function benchKwok(id: string): Promise<Result> {
  const api = BenchApi.admin();
  try {
    const kwok = await startKwok({ api, id, nodes: NODES, podsPerNode: 20 });
    try {
      return await measure(
        "kwok",
        "kwok",
        `${id}-kwok`,
        burstDeployment({
          namespace: `${id}-kwok`,
          replicas: PODS,
          nodeSelector: { [BENCH_LABEL]: `${id}-kwok` },
          tolerationKey: kwok.tolerationKey,
        }),
      );
    } finally {
      await kwok.stop();
      kubectl(["delete", "namespace", `${id}-kwok`, "--wait=false", "--ignore-not-found"]);
      await kwok.removeNodes();
    }
  } finally {
    await api.close();
  }
}

export async function benchEngine(): Promise<void> {
  const stop = await controlPlane();
  const id = `bench-${randomBytes(3).toString("hex")}`;
  try {
    const devicelet = await benchDevicelet(id);
    console.log("devicelet:", JSON.stringify(devicelet));
    const kwok = await benchKwok(id);
    console.log("kwok:", JSON.stringify(kwok));
    const rows = [devicelet, kwok];
    console.log(`\nengine benchmark: ${PODS} pods over ${NODES} nodes, one control plane, same run\n`);
    console.table(
      rows.map(({ apiRequestsByVerb: _v, apiRequestsByRequest: _r, slowest: _s, startedAt: _a, ...r }) => r),
    );
    console.log("API requests by verb:", Object.fromEntries(rows.map((r) => [r.tool, r.apiRequestsByVerb])));
    console.log(
      `ratio devicelet/kwok: all-Running time ${(devicelet.allRunningSeconds / kwok.allRunningSeconds).toFixed(2)}, ` +
        `API requests per pod ${(devicelet.apiRequestsPerPod / kwok.apiRequestsPerPod).toFixed(2)}`,
    );
    writeFileSync(
      path.join(testenvDir, "bench-engine.json"),
      JSON.stringify({ date: new Date().toISOString(), rows }, null, 2),
    );
  } finally {
    await stop();
  }
}
