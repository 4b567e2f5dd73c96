/**
 * Registering a device's Node without ever taking over someone else's. The name may already be
 * taken: by devicelet's own Node from an earlier run (adopted: labels, annotations, taint and
 * providerID patched back to what devicelet sets), or by a Node devicelet does not own, a kubeadm
 * node or another virtual kubelet's (reported as `foreign` and never written to). Ownership is
 * {@link isDeviceletNode}: this device's providerID, or devicelet's `type` and transport labels.
 *
 *   const r = await registerNode({ kube, desired, deviceId, providerName });
 *   if (r.outcome === "foreign") refuse(r.node); else heartbeat(r.node);
 */
import { isAlreadyExists, type KubeClient, type Node } from "../kube/index.ts";
import { isDeviceletNode } from "./build.ts";

export type Registration =
  | { readonly outcome: "created" | "adopted"; readonly node: Node }
  | { readonly outcome: "foreign"; readonly node: Node };

/**
 * Creates `desired`; when a Node of that name exists, adopts it if it is devicelet's, else
 * answers `foreign` with it as read. Rejects with the API server's error otherwise (the caller's
 * queue decides whether to retry).
 */
export async function registerNode(o: {
  readonly kube: Pick<KubeClient, "createNode" | "getNode" | "patchNode">;
  readonly desired: Node;
  readonly deviceId: string;
  readonly providerName: string;
}): Promise<Registration> {
  const name = o.desired.metadata?.name ?? "";
  try {
    return { outcome: "created", node: await o.kube.createNode(o.desired) };
  } catch (err) {
    if (!isAlreadyExists(err)) throw err;
  }
  const existing = await o.kube.getNode(name);
  if (!existing) throw new Error(`node ${name} existed and is gone again; registering it once more`);
  if (!isDeviceletNode(existing, { providerName: o.providerName, deviceId: o.deviceId })) {
    return { outcome: "foreign", node: existing };
  }
  const { metadata, spec } = o.desired;
  const node = await o.kube.patchNode(name, {
    metadata: { labels: metadata?.labels, annotations: metadata?.annotations },
    spec: { taints: spec?.taints, providerID: spec?.providerID },
  });
  return { outcome: "adopted", node };
}
