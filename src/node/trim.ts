/**
 * Nodes as devicelet's caches keep them, with only the fields read: {@link trimNode} for the node
 * controller's informer, {@link nodeIdentity} for a standby replica's cache, which only counts.
 * Like the pod cache (src/pod/trim.ts), a whitelist: code that starts reading another field of a
 * cached Node adds it here. Kept values are kept whole and shared with the input.
 *
 * As in the pod cache, repeated strings are kept once ({@link nodeStringTable}): label values,
 * taints, condition types, reasons, messages and times (heartbeats of many nodes fall in the same
 * second). The name, UID, resourceVersion, the device-id annotation and the hostname and device-id
 * labels are unique to a node and left as they are.
 *
 *   new Informer<Node>({ ..., labelSelector, trim: trimNode });
 */
import { StringTable } from "../base/intern.ts";
import { type Node, type NodeStatus, type ObjectMeta, pickFields } from "../kube/index.ts";
import { NodeLabel } from "./build.ts";

type NodeSpec = NonNullable<Node["spec"]>;

const METADATA = [
  // The cache key; the Lease's owner reference and the UID precondition of deleting a gone node.
  "name",
  "uid",
  // The taint patch's precondition (status-writer.ts), and the store's replay check.
  "resourceVersion",
  // The `devicelet.dev/in-sync` label, compared before it is patched (status-writer.ts).
  "labels",
] as const satisfies readonly (keyof ObjectMeta)[];

const SPEC = [
  // The taint list is patched whole: it is recomputed from the cached one (status-writer.ts).
  "taints",
] as const satisfies readonly (keyof NodeSpec)[];

const STATUS = [
  // Foreign conditions and `lastTransitionTime`s carried into the next status (build.ts), and
  // `devicelet_nodes` (src/metrics).
  "conditions",
  // Resources the device no longer states are written as "0" (build.ts `buildNodeStatus`).
  "capacity",
  // The kubelet API port a node keeps across restarts (controller.ts `#assignPort`).
  "daemonEndpoints",
] as const satisfies readonly (keyof NodeStatus)[];

/**
 * A table for Node strings, apart from the pods' (they share few strings, and neither fills the
 * other's): 4,096 entries a generation, so at most 8,192 strings of up to 256 characters. A
 * thousand nodes repeat a few dozen label values and condition strings, and about one time a
 * second of heartbeats.
 */
export const nodeStringTable = (): StringTable => new StringTable({ generationSize: 4_096, maxLength: 256 });

/** {@link trimNode} with its own string table, for tests. */
export function nodeTrimmer(strings: StringTable): (node: Node) => Node {
  return (node) => internNode(trimmedNode(node), strings);
}

/**
 * The Node with only what the node controller reads: the fields above, and of the annotations only
 * `devicelet.dev/device-id` (a node of an earlier run is adopted by it). Dropped: `managedFields`,
 * other annotations, `spec.providerID` and `podCIDR`s, and `status` addresses, allocatable,
 * nodeInfo, images and volumes (devicelet writes those from the device, it never reads them back).
 * One string table for the process.
 */
export const trimNode: (node: Node) => Node = nodeTrimmer(nodeStringTable());

function trimmedNode(node: Node): Node {
  const trimmed: Node = {};
  if (node.apiVersion !== undefined) trimmed.apiVersion = node.apiVersion;
  if (node.kind !== undefined) trimmed.kind = node.kind;
  if (node.metadata) {
    const metadata: ObjectMeta = pickFields(node.metadata, METADATA);
    const deviceId = node.metadata.annotations?.[NodeLabel.DeviceId];
    if (deviceId !== undefined) metadata.annotations = { [NodeLabel.DeviceId]: deviceId };
    trimmed.metadata = metadata;
  }
  if (node.spec) trimmed.spec = pickFields(node.spec, SPEC);
  if (node.status) trimmed.status = pickFields(node.status, STATUS);
  return trimmed;
}

/** Labels whose value is unique to the node. */
const UNIQUE_LABELS: ReadonlySet<string> = new Set([NodeLabel.Hostname, NodeLabel.DeviceId]);

/** Swaps the repeated strings of a trimmed Node for the table's copies, in place; returns `node`. */
function internNode(node: Node, strings: StringTable): Node {
  strings.internValues(node.metadata?.labels, UNIQUE_LABELS);
  for (const taint of node.spec?.taints ?? []) {
    strings.internFields(taint, ["key", "value", "effect", "timeAdded"]);
  }
  for (const condition of node.status?.conditions ?? []) {
    strings.internFields(condition, ["type", "reason", "message", "lastHeartbeatTime", "lastTransitionTime"]);
  }
  // Capacity quantities are short ("4", "8Gi"): V8 shares those already, so they are not looked up.
  return node;
}

/** Name, UID and resourceVersion only: enough to count objects and follow their changes. */
export function nodeIdentity(node: Node): Node {
  return node.metadata ? { metadata: pickFields(node.metadata, ["name", "uid", "resourceVersion"]) } : {};
}
