/**
 * Engine benchmark: 1,000 pods over 100 mock device nodes on the harness control plane, then the
 * same Deployment over 100 KWOK fake nodes on the same control plane in the same run.
 *
 * Reports: time until all Running (from the Deployment's creation), p50/p99 from bound to Running
 * as one watcher saw them, API requests per pod by each tool (from the audit log, reads included),
 * and devicelet's peak resident memory. The mock's app start delay is 0, so like KWOK it does no
 * device I/O: this measures the engine and its API traffic.
 */
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, openSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { randomBytes } from "node:crypto";
import { stringify } from "yaml";
import {
  burstDeployment,
  controlPlane,
  kubectl,
  measureBurst,
  peakRssMiB,
  spawnDevicelet,
  waitForNodes,
  testenvDir,
  waitUntil,
  type BurstResult,
} from "./support.ts";

interface Result extends BurstResult {
  tool: string;
  peakRssMiB?: number;
}

const kwokVersion = () =>
  /^KWOK_VERSION=(\S+)$/m.exec(
    readFileSync(path.join(repoRoot, "hack/control-plane/versions.sh"), "utf8"),
  )?.[1] ?? "";

const NODES = 100;
const PODS = 1000;
const repoRoot = path.resolve(import.meta.dirname, "..");

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
    child.kill("SIGTERM");
    kubectl(["delete", "namespace", `${id}-devicelet`, "--wait=false", "--ignore-not-found"]);
  }
}

async function benchKwok(id: string): Promise<Result> {
  const kwokBin = execFileSync("bash", [path.join(repoRoot, "hack/control-plane/build-kwok.sh")], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "inherit"],
  }).trim();
  const nodes = Array.from({ length: NODES }, (_, i) => ({
    apiVersion: "v1",
    kind: "Node",
    metadata: {
      name: `${id}-kwok-${i}`,
      annotations: { "kwok.x-k8s.io/node": "fake" },
      labels: {
        type: "kwok",
        "kubernetes.io/hostname": `${id}-kwok-${i}`,
        "devicelet.dev/bench": `${id}-kwok`,
      },
    },
    spec: { taints: [{ key: "kwok.x-k8s.io/node", value: "fake", effect: "NoSchedule" }] },
    status: {
      allocatable: { cpu: "32", memory: "256Gi", pods: "20" },
      capacity: { cpu: "32", memory: "256Gi", pods: "20" },
    },
  }));
  kubectl(["apply", "-f", "-"], stringify({ apiVersion: "v1", kind: "List", items: nodes }));
  const dir = mkdtempSync(path.join(os.tmpdir(), "kwok-bench-"));
  const out = openSync(path.join(dir, "kwok.log"), "a");
  // KWOK's own "fast" stages (node initialise, lease heartbeat, pod ready/complete/delete), read
  // from the module it was built from, so KWOK runs exactly as its authors ship it.
  const modCache = execFileSync("go", ["env", "GOMODCACHE"], { encoding: "utf8" }).trim();
  const stages = path.join(modCache, `sigs.k8s.io/kwok@${kwokVersion()}`, "kustomize/stage");
  const stageFiles = [
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
  ].map((f) => path.join(stages, f));
  const child = spawn(
    kwokBin,
    [
      ...stageFiles.map((f) => `--config=${f}`),
      `--kubeconfig=${path.join(testenvDir, "kwok.kubeconfig")}`,
      "--manage-all-nodes=false",
      "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
      "--node-lease-duration-seconds=40",
      "--cidr=10.240.0.0/16",
      "--node-ip=127.0.0.1",
      "--server-address=127.0.0.1:0",
    ],
    { stdio: ["ignore", out, out] },
  );
  try {
    await waitUntil(
      `${NODES} KWOK nodes Ready`,
      () => {
        const ready = kubectl([
          "get",
          "nodes",
          "-l",
          `devicelet.dev/bench=${id}-kwok`,
          "-o",
          'jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}',
        ]);
        return ready.split("\n").filter((s) => s === "True").length >= NODES;
      },
      120_000,
    );
    return await measure(
      "kwok",
      "kwok",
      `${id}-kwok`,
      burstDeployment({
        namespace: `${id}-kwok`,
        replicas: PODS,
        nodeSelector: { "devicelet.dev/bench": `${id}-kwok` },
        tolerationKey: "kwok.x-k8s.io/node",
      }),
    );
  } finally {
    child.kill("SIGTERM");
    kubectl(["delete", "namespace", `${id}-kwok`, "--wait=false", "--ignore-not-found"]);
    kubectl([
      "delete",
      "nodes",
      "-l",
      `devicelet.dev/bench=${id}-kwok`,
      "--wait=false",
      "--ignore-not-found",
    ]);
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
    console.table(rows.map(({ apiRequestsByVerb: _v, ...r }) => r));
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
