/**
 * Writing a managed node's status and transport taint (controller.ts), apart so the controller
 * reads as the reconcile's decisions. Status is written when it changed or when
 * `statusMaxIntervalSeconds` passed since the last write (the kubelet's nodeStatusReportFrequency);
 * a node whose device is not known yet (one an earlier run left) gets only its conditions, so
 * heartbeats never erase what the device reported. Neither function retries: the caller's queue
 * does.
 *
 *   const written = await writeNodeStatus({ kube, config, version, transport, entry, node });
 *   await writeTransportTaint({ kube, name, node: written ?? node, transport });
 */
import { systemClock, type Clock } from "../base/clock.ts";
import { toWire, type KubeClient, type Node, type NodeStatus } from "../kube/index.ts";
import {
  buildNodeStatus,
  heartbeatConditions,
  nodeStatusChanged,
  transportTaints,
  type TransportState,
} from "./build.ts";
import type { NodeControllerConfig, NodeEntry } from "./controller-types.ts";

export interface StatusWrite {
  readonly kube: Pick<KubeClient, "patchNodeStatus">;
  readonly config: NodeControllerConfig;
  readonly version: string;
  readonly transport: TransportState | undefined;
  /** Updated in place: `lastStatus` and `lastStatusAt` once written. */
  readonly entry: NodeEntry;
  /** The Node as last read. */
  readonly node: Node;
  /** Stamps heartbeat times and decides when status is due; default {@link systemClock}. */
  readonly clock?: Clock;
}

/** Writes node status when it changed or is due; resolves with the node as written, if it was. */
export async function writeNodeStatus(o: StatusWrite): Promise<Node | undefined> {
  const { kube, config, version, entry, node } = o;
  const clock = o.clock ?? systemClock;
  const options = {
    ready: true,
    readyMessage: "devicelet is running and reaching the API server",
    transport: o.transport,
    now: new Date(clock.now()),
    previous: entry.lastStatus ?? node.status,
    // The node's own port when the kubelet API is served (per-node ports), else the configured one.
    kubeletPort: entry.kubeletPort ?? config.kubeletPort,
    kubeletAddress: config.kubeletAddress,
    version,
  };
  const status: NodeStatus = entry.device
    ? toWire(buildNodeStatus(entry.device, options))
    : { ...node.status, conditions: toWire(heartbeatConditions(options)) };
  const due = clock.now() - entry.lastStatusAt >= config.statusMaxIntervalSeconds * 1000;
  if (entry.lastStatus && !due && !nodeStatusChanged(entry.lastStatus, status)) return undefined;
  // A node whose device is not known yet gets only its conditions written.
  const written = await kube.patchNodeStatus(
    entry.name,
    entry.device ? status : { conditions: status.conditions ?? [] },
  );
  entry.lastStatus = status;
  entry.lastStatusAt = clock.now();
  return written;
}

/** Adds or removes the NoSchedule taint of an unreachable transport, when the node's differs. */
export async function writeTransportTaint(o: {
  readonly kube: Pick<KubeClient, "patchNode">;
  readonly name: string;
  readonly node: Node;
  readonly transport: TransportState | undefined;
}): Promise<void> {
  const { node } = o;
  const taints = transportTaints(node.spec?.taints, o.transport?.connected === false);
  if (!taints) return;
  await o.kube.patchNode(o.name, {
    metadata: { resourceVersion: node.metadata?.resourceVersion },
    spec: { taints },
  });
}
