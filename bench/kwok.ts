/**
 * KWOK, the ceiling devicelet's benchmarks compare against, as a {@link Fleet}: `nodes` fake Node
 * objects (annotated for KWOK, tainted `kwok.x-k8s.io/node`, labelled `BENCH_LABEL=<id>-kwok`)
 * and the KWOK binary built by hack/control-plane/build-kwok.sh, run with KWOK's own "fast"
 * stages (node initialise, lease heartbeat, pod ready/complete/delete) read from the module it was
 * built from, so it runs exactly as its authors ship it. Its API user is `kwok` (kwok.kubeconfig).
 *
 *   const kwok = await startKwok({ api, id, nodes: 100, podsPerNode: 110 });
 *   // ... pods on kwok.nodeNames, tolerating kwok.tolerationKey ...
 *   await kwok.stop();
 *   await kwok.removeNodes();
 */
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, openSync, readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { inPool, type BenchApi } from "./api.ts";
import { BENCH_LABEL, concurrency, followFleet, type Fleet } from "./fleet.ts";
import { testenvDir } from "./support.ts";

const repoRoot = path.resolve(import.meta.dirname, "..");

const kwokVersion = () =>
  /^KWOK_VERSION=(\S+)$/m.exec(
    readFileSync(path.join(repoRoot, "hack/control-plane/versions.sh"), "utf8"),
  )?.[1] ?? "";

/** Builds KWOK once (cached by version) and returns the binary's path. */
function kwokBinary(): string {
  return execFileSync("bash", [path.join(repoRoot, "hack/control-plane/build-kwok.sh")], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "inherit"],
  }).trim();
}

function stageFiles(): string[] {
  const modCache = execFileSync("go", ["env", "GOMODCACHE"], { encoding: "utf8" }).trim();
  const stages = path.join(modCache, `sigs.k8s.io/kwok@${kwokVersion()}`, "kustomize/stage");
  return [
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
  ].map((f) => path.join(stages, f));
}

/** Creates the fake nodes, starts KWOK and resolves once all of them are Ready. */
export async function startKwok(o: {
  api: BenchApi;
  id: string;
  nodes: number;
  podsPerNode: number;
}): Promise<Fleet> {
  const label = `${o.id}-kwok`;
  const nodeSelector = `${BENCH_LABEL}=${label}`;
  const binary = kwokBinary();
  const resources = { cpu: "32", memory: "256Gi", pods: String(o.podsPerNode) };
  await inPool(o.nodes, concurrency, (i) =>
    o.api.create("/api/v1/nodes", {
      apiVersion: "v1",
      kind: "Node",
      metadata: {
        name: `${label}-${i}`,
        annotations: { "kwok.x-k8s.io/node": "fake" },
        labels: { type: "kwok", "kubernetes.io/hostname": `${label}-${i}`, [BENCH_LABEL]: label },
      },
      spec: { taints: [{ key: "kwok.x-k8s.io/node", value: "fake", effect: "NoSchedule" }] },
      status: { allocatable: resources, capacity: resources },
    }),
  );
  const dir = mkdtempSync(path.join(os.tmpdir(), "kwok-bench-"));
  const logFile = path.join(dir, "kwok.log");
  const out = openSync(logFile, "a");
  const child = spawn(
    binary,
    [
      ...stageFiles().map((f) => `--config=${f}`),
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
  return followFleet({
    api: o.api,
    child,
    logFile,
    nodeSelector,
    count: o.nodes,
    tool: "kwok",
    username: "kwok",
    tolerationKey: "kwok.x-k8s.io/node",
    what: "KWOK",
  });
}
