/**
 * Writing a managed node's status, transport taint and in-sync label (controller.ts), apart so the controller
 * reads as the reconcile's decisions. Status is written when it changed or when
 * `statusMaxIntervalSeconds` passed since the last write (the kubelet's nodeStatusReportFrequency;
 * a little sooner, at random: {@link STATUS_SPREAD}); a node whose device is not known yet (one an
 * earlier run left) gets only its conditions, so heartbeats never erase what the device reported.
 * The in-sync label goes with the status it follows; the taint's patch sets it only when the
 * status had nothing new. Neither function retries: the caller's queue does.
 *
 *   const written = await writeNodeStatus({ kube, config, version, transport, entry, node });
 *   await writeTransportTaint({ kube, name, node: written ?? node, transport, inSync: { value: "true" } });
 */
import { systemClock, type Clock } from "../base/clock.ts";
import { toWire, type KubeClient, type Node, type NodeStatus } from "../kube/index.ts";
import type { V1NodeStatus } from "../kube/types.ts";
import type { DeviceSync } from "../provider/types.ts";
import type { Model } from "../workload/shape.ts";
import {
  buildNodeStatus,
  heartbeatConditions,
  inSyncLabel,
  NodeLabel,
  nodeStatusChanged,
  transportTaints,
  type TransportState,
} from "./build.ts";
import type { NodeControllerConfig, NodeEntry, StatusInputs } from "./controller-types.ts";

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
  /** The device's sync state, when the provider reports one: the `DeviceInSync` condition. */
  readonly sync?: { readonly state: DeviceSync | undefined; readonly pendingGraceMs: number };
  /** Draws each write's interval until the next is due ({@link STATUS_SPREAD}); default `Math.random`. */
  readonly random?: () => number;
  /**
   * The provider reports sync: the `devicelet.dev/in-sync` label follows the status's DeviceInSync
   * condition, set (or removed) in the status patch when the node's differs.
   */
  readonly inSyncLabel?: boolean;
}

/**
 * A status with nothing new is written again at a random point of the last quarter of
 * `statusMaxIntervalSeconds` after the last write, never later. Without it, nodes whose statuses
 * were written together (a registration, an adoption after a restart, a rollout that changed every
 * node's DeviceInSync) fall due together every interval for good: at 5,000 nodes the five-minute
 * rewrites came as one wave of 4,372 in three minutes (`npm run bench -- scale`,
 * docs/performance.md), and a wave that shares the heartbeat lane's budget with the Lease renewals
 * can hold them back. Drawn anew at each write, the dues drift apart: spread over 75 s after one
 * interval, and further each interval after. The price is about 14 % more of these writes (a mean
 * of seven eighths of the interval).
 */
export const STATUS_SPREAD = 0.25;

/** The mean interval between writes of a status with nothing new, as a share of the maximum. */
export const STATUS_MEAN_INTERVAL_SHARE = 1 - STATUS_SPREAD / 2;

/** Writes node status when it changed or is due; resolves with the node as written, if it was. */
export async function writeNodeStatus(o: StatusWrite): Promise<Node | undefined> {
  const { kube, config, version, entry, node } = o;
  const clock = o.clock ?? systemClock;
  const due =
    clock.now() - entry.lastStatusAt >= (entry.statusIntervalMs ?? config.statusMaxIntervalSeconds * 1000);
  const inputs: StatusInputs = {
    config,
    device: entry.device,
    node,
    previous: entry.lastStatus,
    transportConnected: o.transport?.connected,
    transportMessage: o.transport?.message,
    // The node's own port when the kubelet API is served (per-node ports), else the configured one.
    kubeletPort: entry.kubeletPort ?? config.kubeletPort,
    version,
    sync: o.sync?.state,
    syncGraceMs: o.sync?.pendingGraceMs,
  };
  if (!due && entry.unchangedFrom !== undefined && sameInputs(entry.unchangedFrom, inputs)) return undefined;
  const options = {
    ready: true,
    readyMessage: READY_MESSAGE,
    transport: o.transport,
    now: new Date(clock.now()),
    previous: entry.lastStatus ?? node.status,
    kubeletPort: inputs.kubeletPort,
    kubeletAddress: config.kubeletAddress,
    version,
    sync: o.sync,
  };
  // Compared as built (Dates and all): turned into wire JSON only when it is written, as most
  // heartbeats find nothing to write.
  const built: Model<V1NodeStatus> = entry.device
    ? buildNodeStatus(entry.device, options)
    : { ...node.status, conditions: heartbeatConditions(options) };
  if (
    entry.lastStatus &&
    !due &&
    !nodeStatusChanged(entry.lastStatus, built) &&
    !conditionsOverwritten(node.status?.conditions, built.conditions)
  ) {
    entry.unchangedFrom = entry.device && !syncMayTurn(o.sync?.state) ? inputs : undefined;
    return undefined;
  }
  entry.unchangedFrom = undefined;
  const status: NodeStatus = toWire(built);
  // null: no label of devicelet's here (no sync, or no device yet); undefined: none, to be removed.
  const label = o.inSyncLabel && entry.device ? inSyncLabel(status) : null;
  const labelChanged = label !== null && label !== node.metadata?.labels?.[NodeLabel.InSync];
  // A node whose device is not known yet gets only its conditions written.
  const written = await kube.patchNodeStatus(
    entry.name,
    entry.device ? status : { conditions: status.conditions ?? [] },
    labelChanged ? { labels: { [NodeLabel.InSync]: label ?? null } } : undefined,
  );
  statusWritten(entry, status, { config, clock, random: o.random });
  return written;
}

/** The Ready condition's message in every status devicelet writes, its Node's registration's too. */
export const READY_MESSAGE = "devicelet is running and reaching the API server";

/**
 * Records `status` as written to the entry's node now, the Node's creation included (a Node is
 * created with the status a heartbeat would write, so none is written after it), and draws when
 * a status with nothing new is due again ({@link STATUS_SPREAD}).
 */
export function statusWritten(
  entry: NodeEntry,
  status: NodeStatus,
  o: {
    readonly config: NodeControllerConfig;
    readonly clock: Clock;
    readonly random?: (() => number) | undefined;
  },
): void {
  entry.lastStatus = status;
  entry.lastStatusAt = o.clock.now();
  entry.statusIntervalMs =
    o.config.statusMaxIntervalSeconds * 1000 * (1 - STATUS_SPREAD * (o.random ?? Math.random)());
}

/**
 * Whether a status built from `b` is the one found unchanged from `a` (see {@link StatusInputs}).
 * Building and comparing a status at every heartbeat was a tenth of the CPU devicelet spent holding
 * 1,000 nodes (`npm run bench -- scale`, docs/performance.md).
 */
function sameInputs(a: StatusInputs, b: StatusInputs): boolean {
  return (
    a.config === b.config &&
    a.device === b.device &&
    a.node === b.node &&
    a.previous === b.previous &&
    a.transportConnected === b.transportConnected &&
    a.transportMessage === b.transportMessage &&
    a.kubeletPort === b.kubeletPort &&
    a.version === b.version &&
    a.syncGraceMs === b.syncGraceMs &&
    sameSync(a.sync, b.sync)
  );
}

/** Providers may hand out a new DeviceSync at each call: compared by what it says. */
function sameSync(a: DeviceSync | undefined, b: DeviceSync | undefined): boolean {
  if (a === b) return true;
  if (a === undefined || b === undefined) return false;
  return (
    a.desiredGeneration === b.desiredGeneration &&
    a.appliedGeneration === b.appliedGeneration &&
    a.behindSince?.getTime() === b.behindSince?.getTime() &&
    a.rejected?.generation === b.rejected?.generation &&
    a.rejected?.reason === b.rejected?.reason &&
    a.rejected?.message === b.rejected?.message
  );
}

/**
 * Whether the DeviceInSync condition can change with time alone: a device behind, not refusing,
 * turns from InSync to ApplyPending once the grace has passed (build.ts `syncCondition`).
 */
const syncMayTurn = (sync: DeviceSync | undefined): boolean =>
  sync !== undefined && sync.rejected === undefined && sync.appliedGeneration < sync.desiredGeneration;

/**
 * Whether the node lifecycle controller has marked a condition devicelet writes `Unknown` (reason
 * `NodeStatusUnknown`, after it judged the Lease stale, as after an API server outage): only the
 * node's kubelet ever sets it back, as the kubelet does by comparing with the server's copy. Such
 * a node gets its status written at the next heartbeat, not when it is next due (minutes), so it
 * is Ready and untainted again within seconds. Only that reason counts, so a cached copy that has
 * not caught up with devicelet's own last write is no reason to write again.
 */
function conditionsOverwritten(
  server: readonly { type: string; status: string; reason?: string }[] | undefined,
  ours: readonly { type: string; status: string }[] | undefined,
): boolean {
  return (ours ?? []).some((c) => {
    const there = server?.find((s) => s.type === c.type);
    return there?.reason === "NodeStatusUnknown" && there.status !== c.status;
  });
}

/**
 * Adds or removes the NoSchedule taint of an unreachable transport, and sets the
 * `devicelet.dev/in-sync` label to `inSync` (removing it for undefined), when the node's differ:
 * one patch for both, none when neither changed. `inSync` is read from the status as written,
 * so the label changes only with the condition, never more often than node status is written.
 * Resolves with the Node as the patch left it, undefined when nothing was patched.
 */
export async function writeTransportTaint(o: {
  readonly kube: Pick<KubeClient, "patchNode">;
  readonly name: string;
  readonly node: Node;
  readonly transport: TransportState | undefined;
  /** The label's value (undefined: no label); absent leaves the label alone (a provider without sync). */
  readonly inSync?: { readonly value: "true" | "false" | undefined };
}): Promise<Node | undefined> {
  const { node, inSync } = o;
  const taints = transportTaints(node.spec?.taints, o.transport?.connected === false);
  const current = node.metadata?.labels?.[NodeLabel.InSync];
  const label =
    inSync === undefined || inSync.value === current
      ? undefined
      : { [NodeLabel.InSync]: inSync.value ?? null };
  if (!taints && !label) return undefined;
  // The taint list is replaced whole, so only against the version it was computed from; the label
  // is devicelet's own and a merge patch of it is right whatever else changed meanwhile.
  return o.kube.patchNode(o.name, {
    metadata: {
      ...(taints ? { resourceVersion: node.metadata?.resourceVersion } : {}),
      ...(label ? { labels: label } : {}),
    },
    ...(taints ? { spec: { taints } } : {}),
  });
}
