/**
 * {@link KubeletRouter}: one kubelet API for every shard engine of a process. Each engine
 * registers the backend of the nodes it serves while it runs; a request for a node goes to the
 * engine serving that node now, and a node no engine here serves has no device, no pods and no
 * provider (the routes answer 404, or 503 for logs and streams), as for a node of another process.
 * Node names are disjoint between shards (one device, one shard, one node), so at most one engine
 * claims a node.
 *
 *   const router = new KubeletRouter();
 *   const kubelet = createKubeletApi({ ..., backend: router });
 *   const unroute = router.serve(engineBackend);   // while the shard's engine runs
 *   unroute();                                      // the shard stopped: its nodes are no longer routed here
 */
import type { Pod } from "../kube/index.ts";
import type { KubeletBackend } from "../kubelet/index.ts";
import type { PodLifecycleProvider } from "../provider/types.ts";

/** One engine's view, as the kubelet API reads it, plus the names of the nodes it serves. */
export type RoutedBackend = KubeletBackend & { nodeNames(): readonly string[] };

export class KubeletRouter implements KubeletBackend {
  readonly #backends = new Set<RoutedBackend>();

  /** Routes requests for `backend`'s nodes to it until the returned function is called. */
  serve(backend: RoutedBackend): () => void {
    this.#backends.add(backend);
    return () => {
      this.#backends.delete(backend);
    };
  }

  /** How many engines are registered now. */
  get size(): number {
    return this.#backends.size;
  }

  providerOf(nodeName: string): PodLifecycleProvider | undefined {
    return this.#serving(nodeName)?.providerOf(nodeName);
  }

  deviceOf(nodeName: string): string | undefined {
    return this.#serving(nodeName)?.deviceOf(nodeName);
  }

  podsOn(nodeName: string): readonly Pod[] {
    return this.#serving(nodeName)?.podsOn(nodeName) ?? [];
  }

  pod(namespace: string, name: string): Pod | undefined {
    for (const backend of this.#backends) {
      const pod = backend.pod(namespace, name);
      if (pod) return pod;
    }
    return undefined;
  }

  nodeStartTime(nodeName: string): Date {
    // A node no engine here serves (its shard is moving) has no device to say when it started.
    return this.#serving(nodeName)?.nodeStartTime(nodeName) ?? new Date();
  }

  /** The engine whose device owns the node, else the one that lists it (not yet known as its own). */
  #serving(nodeName: string): RoutedBackend | undefined {
    for (const backend of this.#backends) if (backend.deviceOf(nodeName) !== undefined) return backend;
    for (const backend of this.#backends) if (backend.nodeNames().includes(nodeName)) return backend;
    return undefined;
  }
}
