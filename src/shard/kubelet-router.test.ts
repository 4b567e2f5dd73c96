/**
 * KubeletRouter: a request for a node reaches the engine serving it, and nothing once that engine
 * has stopped serving (its shard moved).
 */
import { describe, expect, it } from "vitest";
import type { Pod } from "../kube/index.ts";
import type { PodLifecycleProvider } from "../provider/types.ts";
import { KubeletRouter, type RoutedBackend } from "./kubelet-router.ts";

const provider = (name: string) => ({ name }) as unknown as PodLifecycleProvider;
const podOn = (node: string, name: string): Pod => ({
  metadata: { namespace: "ns", name },
  spec: { nodeName: node, containers: [] },
});

/** An engine serving `nodes` (node name = device id), the last one not yet known as its own. */
function engine(name: string, nodes: string[], pending: string[] = []): RoutedBackend {
  const pods = [...nodes, ...pending].map((n) => podOn(n, `${n}-pod`));
  return {
    providerOf: () => provider(name),
    deviceOf: (node) => (nodes.includes(node) ? node : undefined),
    podsOn: (node) => pods.filter((p) => p.spec?.nodeName === node),
    pod: (namespace, podName) => pods.find((p) => p.metadata?.name === podName && namespace === "ns"),
    nodeStartTime: () => new Date(`2026-12-0${name === "s0" ? 1 : 2}T00:00:00Z`),
    nodeNames: () => [...nodes, ...pending],
  };
}

describe("KubeletRouter", () => {
  it("routes each node to the engine that serves it", () => {
    const router = new KubeletRouter();
    router.serve(engine("s0", ["a", "b"]));
    router.serve(engine("s1", ["c"], ["d"]));
    expect(router.providerOf("a")?.name).toBe("s0");
    expect(router.providerOf("c")?.name).toBe("s1");
    // Listed by its engine but not yet known as its own: still that engine's.
    expect(router.providerOf("d")?.name).toBe("s1");
    expect(router.deviceOf("b")).toBe("b");
    expect(router.podsOn("c").map((p) => p.metadata?.name)).toEqual(["c-pod"]);
    expect(router.pod("ns", "a-pod")?.spec?.nodeName).toBe("a");
    expect(router.nodeStartTime("c").toISOString()).toBe("2026-12-02T00:00:00.000Z");
  });

  it("serves nothing for a node whose engine stopped", () => {
    const router = new KubeletRouter();
    const unroute = router.serve(engine("s0", ["a"]));
    router.serve(engine("s1", ["c"]));
    unroute();
    expect(router.size).toBe(1);
    expect(router.providerOf("a")).toBeUndefined();
    expect(router.deviceOf("a")).toBeUndefined();
    expect(router.podsOn("a")).toEqual([]);
    expect(router.pod("ns", "a-pod")).toBeUndefined();
    expect(router.providerOf("c")?.name).toBe("s1");
  });
});
