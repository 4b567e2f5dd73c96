/**
 * How the engine layer of the conformance kit looks at the world: the real kubectl of the harness
 * control plane, as cluster-admin, so nothing of devicelet's own client is trusted to check itself;
 * and a poll for end states (no sleeps as synchronisation).
 *
 *   const cluster = new KitCluster(controlPlane);
 *   await cluster.apply(manifest);
 *   const pod = await eventually(async () => { const p = await cluster.pod(ns, "p"); expect(…); return p; });
 */
import { execFile } from "node:child_process";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import type { ControlPlane } from "./controlplane/index.ts";

const run = promisify(execFile);

export interface Condition {
  readonly type: string;
  readonly status: string;
  readonly reason?: string;
  readonly message?: string;
}

export interface PodJson {
  readonly metadata: { name: string; uid: string; deletionTimestamp?: string };
  readonly spec: { nodeName?: string };
  readonly status: {
    readonly phase?: string;
    readonly podIP?: string;
    readonly conditions?: readonly Condition[];
    readonly containerStatuses?: readonly {
      readonly name: string;
      readonly ready: boolean;
      readonly restartCount: number;
      readonly state: { waiting?: { reason: string }; running?: { startedAt: string } };
    }[];
  };
}

export interface NodeJson {
  readonly metadata: { name: string; annotations?: Record<string, string>; labels?: Record<string, string> };
  readonly spec: { taints?: readonly { key: string; effect: string }[] };
  readonly status: { conditions?: readonly Condition[] };
}

export const conditionOf = (o: { status: { conditions?: readonly Condition[] } }, type: string) =>
  o.status.conditions?.find((c) => c.type === type);

/** Running with Ready=True: what tools written for kubelets call a running pod. */
export const isRunning = (pod: PodJson) =>
  pod.status.phase === "Running" && conditionOf(pod, "Ready")?.status === "True";

export class KitCluster {
  readonly #kubectl: string;
  readonly #kubeconfig: string;

  constructor(controlPlane: Pick<ControlPlane, "binDir" | "adminKubeconfig">) {
    this.#kubectl = path.join(controlPlane.binDir, "kubectl");
    this.#kubeconfig = controlPlane.adminKubeconfig;
  }

  /** Runs kubectl as cluster-admin; resolves with stdout, rejects with stderr in the message. */
  async kubectl(args: readonly string[], input?: string): Promise<string> {
    const child = run(this.#kubectl, [`--kubeconfig=${this.#kubeconfig}`, ...args], {
      maxBuffer: 64 * 1024 * 1024,
    });
    if (input !== undefined) child.child.stdin?.end(input);
    try {
      return (await child).stdout;
    } catch (err) {
      const e = err as { stderr?: string; message: string };
      throw new Error(`kubectl ${args.join(" ")}: ${e.stderr || e.message}`);
    }
  }

  async getJson<T>(args: readonly string[]): Promise<T> {
    return JSON.parse(await this.kubectl(["get", ...args, "-o", "json"])) as T;
  }

  apply(manifest: string): Promise<string> {
    return this.kubectl(["apply", "-f", "-"], manifest);
  }

  pod(namespace: string, name: string): Promise<PodJson> {
    return this.getJson<PodJson>(["pod", name, "-n", namespace]);
  }

  async podNames(namespace: string): Promise<string[]> {
    return (await this.getJson<{ items: PodJson[] }>(["pods", "-n", namespace])).items.map(
      (p) => p.metadata.name,
    );
  }

  node(name: string): Promise<NodeJson> {
    return this.getJson<NodeJson>(["node", name]);
  }

  async nodes(selector: string): Promise<NodeJson[]> {
    return (await this.getJson<{ items: NodeJson[] }>(["nodes", "-l", selector])).items;
  }
}

/**
 * Polls `probe` until it returns without throwing, or rethrows its last error after `timeoutMs`.
 * The deadline only bounds a failing test; it is not a performance assertion.
 */
export async function eventually<T>(probe: () => Promise<T> | T, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await probe();
    } catch (err) {
      if (Date.now() > deadline) throw err;
    }
    await sleep(250);
  }
}
