/**
 * The soak's load: a steady, seeded stream of changes a user makes, through kubectl — Deployments
 * scaled up and down, env edits (a rollout), edits of a ConfigMap mounted as a volume, and pod
 * deletes. A change that fails (the API server is down) is counted and not retried: the audit
 * compares the end state, whatever got through.
 *
 *   await applyWorkloads(kubectl, fleet);               // the starting Deployments and ConfigMap
 *   const counts = await runLoad({ kubectl, fleet, random, until, signal });
 */
import { setTimeout as sleep } from "node:timers/promises";
import { stringify } from "yaml";
import { between, pick } from "./soak-faults.ts";

export type Kubectl = (args: string[], input?: string) => Promise<string>;

export interface Fleet {
  readonly namespace: string;
  readonly nodeSelector: Record<string, string>;
  readonly tolerationKey: string;
}

/** The mounted ConfigMap and where its keys appear as files. */
export const CONFIG_MAP = "soak-config";
export const CONFIG_KEY = "config.txt";
export const CONFIG_MOUNT = "/etc/soak";

interface DeploymentState {
  readonly name: string;
  readonly strategy: "RollingUpdate" | "Recreate";
  readonly mountsConfig: boolean;
  replicas: number;
  version: number;
}

const MAX_REPLICAS = 24;

function deployments(): DeploymentState[] {
  return [
    { name: "soak-rolling", strategy: "RollingUpdate", mountsConfig: false, replicas: 8, version: 1 },
    { name: "soak-recreate", strategy: "Recreate", mountsConfig: false, replicas: 8, version: 1 },
    { name: "soak-config", strategy: "RollingUpdate", mountsConfig: true, replicas: 8, version: 1 },
  ];
}

function deploymentManifest(fleet: Fleet, d: DeploymentState): string {
  return stringify({
    apiVersion: "apps/v1",
    kind: "Deployment",
    metadata: { name: d.name, namespace: fleet.namespace },
    spec: {
      replicas: d.replicas,
      strategy: { type: d.strategy },
      selector: { matchLabels: { app: d.name } },
      template: {
        metadata: { labels: { app: d.name } },
        spec: {
          nodeSelector: fleet.nodeSelector,
          tolerations: [{ key: fleet.tolerationKey, operator: "Exists", effect: "NoSchedule" }],
          terminationGracePeriodSeconds: 2,
          containers: [
            {
              name: "app",
              image: "example/sensor:1.0",
              command: ["/bin/sensor"],
              env: [{ name: "VERSION", value: String(d.version) }],
              ...(d.mountsConfig ? { volumeMounts: [{ name: "config", mountPath: CONFIG_MOUNT }] } : {}),
            },
          ],
          ...(d.mountsConfig ? { volumes: [{ name: "config", configMap: { name: CONFIG_MAP } }] } : {}),
        },
      },
    },
  });
}

const configMapManifest = (fleet: Fleet, version: number) =>
  stringify({
    apiVersion: "v1",
    kind: "ConfigMap",
    metadata: { name: CONFIG_MAP, namespace: fleet.namespace },
    data: { [CONFIG_KEY]: `version ${version}\n` },
  });

export interface Workloads {
  readonly deployments: DeploymentState[];
  configVersion: number;
  /** Pods the Deployments ask for. */
  readonly replicas: () => number;
}

/** Creates the ConfigMap and the Deployments. */
export async function applyWorkloads(kubectl: Kubectl, fleet: Fleet): Promise<Workloads> {
  const state: Workloads = {
    deployments: deployments(),
    configVersion: 1,
    replicas: () => state.deployments.reduce((n, d) => n + d.replicas, 0),
  };
  await kubectl(["apply", "-f", "-"], configMapManifest(fleet, state.configVersion));
  for (const d of state.deployments) await kubectl(["apply", "-f", "-"], deploymentManifest(fleet, d));
  return state;
}

export const CHANGE_KINDS = ["scale", "env-edit", "config-edit", "pod-delete"] as const;
export type ChangeKind = (typeof CHANGE_KINDS)[number];

export interface LoadCounts {
  readonly made: Record<ChangeKind, number>;
  /** Changes kubectl could not make (the API server down, a timeout). */
  failed: number;
}

/** Makes a change every 1–4 s until `until` or `signal`. */
export async function runLoad(o: {
  kubectl: Kubectl;
  fleet: Fleet;
  workloads: Workloads;
  random: () => number;
  until: number;
  signal: AbortSignal;
}): Promise<LoadCounts> {
  const counts: LoadCounts = {
    made: Object.fromEntries(CHANGE_KINDS.map((k) => [k, 0])) as Record<ChangeKind, number>,
    failed: 0,
  };
  const ns = o.fleet.namespace;
  // A function: TypeScript would keep `signal.aborted` narrowed across the awaits.
  const over = () => o.signal.aborted || Date.now() >= o.until;
  while (!over()) {
    await sleep(between(o.random, [1, 4]) * 1000, undefined, { signal: o.signal }).catch(() => undefined);
    if (over()) break;
    const kind = pick(o.random, CHANGE_KINDS);
    const d = pick(o.random, o.workloads.deployments);
    try {
      switch (kind) {
        case "scale": {
          const replicas = Math.floor(o.random() * (MAX_REPLICAS + 1));
          await o.kubectl(["scale", `deployment/${d.name}`, "-n", ns, `--replicas=${replicas}`]);
          d.replicas = replicas;
          break;
        }
        case "env-edit":
          d.version++;
          await o.kubectl(["apply", "-f", "-"], deploymentManifest(o.fleet, d));
          break;
        case "config-edit":
          o.workloads.configVersion++;
          await o.kubectl(["apply", "-f", "-"], configMapManifest(o.fleet, o.workloads.configVersion));
          break;
        case "pod-delete": {
          const names = (await o.kubectl(["get", "pods", "-n", ns, "-o", "name"]))
            .split("\n")
            .filter(Boolean);
          if (names.length === 0) continue;
          await o.kubectl(["delete", "-n", ns, pick(o.random, names), "--wait=false", "--ignore-not-found"]);
          break;
        }
      }
      counts.made[kind]++;
    } catch {
      counts.failed++;
    }
  }
  return counts;
}
