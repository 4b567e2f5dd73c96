/**
 * The node controller's options and per-device state (controller.ts), apart so the controller
 * reads as behaviour.
 */
import type { Logger } from "pino";
import type { Clock } from "../base/clock.ts";
import type { EventRecorder, KubeClient, Node, NodeStatus } from "../kube/index.ts";
import type {
  DeviceInfo,
  DeviceInventory,
  DeviceNotifier,
  DeviceRetirement,
  DeviceSync,
  DeviceSyncReporter,
} from "../provider/types.ts";
import type { BirthProblem } from "./birth.ts";
import type { DeviceLabelPolicy } from "./labels.ts";
import type { NodeLease } from "./lease.ts";

export interface NodeControllerConfig {
  readonly namePrefix: string;
  readonly taintKey: string;
  readonly extraLabels: Readonly<Record<string, string>>;
  readonly leaseDurationSeconds: number;
  readonly leaseRenewIntervalSeconds: number;
  readonly statusMaxIntervalSeconds: number;
  /** The port every node advertises when there is no {@link NodeControllerOptions.kubeletPorts}. */
  readonly kubeletPort: number;
  readonly kubeletAddress: string;
  /** The heartbeat lane's rate limit, to warn when the fleet outgrows it. */
  readonly heartbeatQps: number;
  /** Which device labels reach the node (labels.ts); default: only under `device.devicelet.dev/`. */
  readonly deviceLabels?: DeviceLabelPolicy;
  /** CIDRs device IPs must be in; empty or absent: any IP. */
  readonly addressRanges?: readonly string[];
}

export interface NodeControllerOptions {
  readonly kube: KubeClient;
  readonly inventory: DeviceInventory;
  readonly providerName: string;
  readonly config: NodeControllerConfig;
  readonly version: string;
  readonly logger: Logger;
  /**
   * The transport's health (the provider's `health()`): shown as the `TransportConnected`
   * condition and taint, never as Ready. Absent: the provider has no transport to report.
   */
  readonly transport?: () => { readonly ready: boolean; readonly message: string };
  /** How often the transport's health is looked at; default 2 s. */
  readonly transportPollMs?: number;
  /** Where refusals and ignored birth fields are recorded as Events on the node; absent: logged only. */
  readonly events?: Pick<EventRecorder, "record">;
  /** The provider's way to tell a device (its `notifyDevice`), when it has one. */
  readonly notifier?: DeviceNotifier;
  /** How often a device refused for a taken node name is looked at again; default 30 s. */
  readonly recheckRefusedMs?: number;
  /**
   * The provider's decommissioning (its `retireDevice`), when it has one: the Node of a device
   * that is not online, deleted by someone else, retires the device instead of being registered
   * again (docs/protocol.md § 5). Absent: every deleted Node is registered again.
   */
  readonly retirement?: DeviceRetirement;
  /**
   * The provider's sync reporting (its `deviceSync`), when it has one: each node gets the
   * `DeviceInSync` condition and the `devicelet.dev/in-sync` label. Absent: neither.
   */
  readonly sync?: DeviceSyncReporter;
  /** How long a device may be behind before it shows `ApplyPending` (False); default 30 s. */
  readonly syncPendingGraceMs?: number;
  /** Times leases, status heartbeats, retries and polls; default the system clock. */
  readonly clock?: Clock;
  /**
   * The kubelet API's per-node ports (src/kubelet/ports.ts): each node advertises its own, kept
   * across restarts. Absent (the kubelet API is not served): every node advertises `kubeletPort`.
   */
  readonly kubeletPorts?: KubeletPortAssigner;
  /** Told how long each successful node Lease renewal took, in seconds (src/metrics). */
  readonly onLeaseRenewed?: (seconds: number) => void;
}

/** Hands each node a kubelet API port of its own (src/kubelet/ports.ts). */
export interface KubeletPortAssigner {
  /** The node's port, preferring `preferred` (the one its Node advertises); 0 when none is free. */
  assign(nodeName: string, preferred?: number): Promise<number>;
  /** The node is gone: its port is free again. */
  release(nodeName: string): Promise<void>;
}

/** What the rest of devicelet may know about a managed node. */
export interface ManagedNode {
  readonly name: string;
  readonly deviceId: string;
  readonly device: DeviceInfo;
}

/** What the controller keeps per device. */
export interface NodeEntry {
  name: string;
  /** Undefined for a node of an earlier run whose device the provider has not reported yet. */
  device: DeviceInfo | undefined;
  /** What of the device's last birth did not reach the node. */
  problems: readonly BirthProblem[];
  /**
   * `owned`: the Node is devicelet's (registered or adopted); `refused`: a Node of that name
   * belongs to someone else; `unknown`: not looked at yet. Pods are routed only when `owned`.
   */
  ownership: "unknown" | "owned" | "refused";
  lease: NodeLease | undefined;
  /** This process has just created the Node: its Lease is not there yet (create it, don't patch). */
  nodeCreated?: boolean;
  /** Stops this node's lease alone (a node found to be someone else's). */
  leaseStop: AbortController | undefined;
  lastStatus: NodeStatus | undefined;
  lastStatusAt: number;
  /** How long after `lastStatusAt` the status is due again (status-writer.ts `STATUS_SPREAD`). */
  statusIntervalMs?: number;
  /**
   * What the last status built was built from, when it was found unchanged (status-writer.ts):
   * heartbeats with the same inputs skip building it again until it is due.
   */
  unchangedFrom?: StatusInputs;
  /**
   * The Node as this process's last write of it was answered (trimmed), kept only until the
   * informer's copy includes that write: what the next reconcile judges by meanwhile.
   */
  written: Node | undefined;
  /**
   * The Node was deleted by someone else and not registered since: the next reconcile decides,
   * from the device's presence then, between retiring the device and registering the Node again.
   */
  nodeDeleted: boolean;
  /** The provider reported the device gone for good: its Node is to be deleted and the entry forgotten. */
  gone: boolean;
  /** The node's own kubelet API port, once assigned (0: none was free); undefined without per-node ports. */
  kubeletPort: number | undefined;
}

/**
 * What a device's node status is built from, but the clock. A status built from these and found
 * unchanged stays unchanged, heartbeat times aside, for as long as they stay the same, unless the
 * DeviceInSync condition can turn with time (status-writer.ts). Compared by identity where the
 * engine replaces what changed (the device at each announcement, the Node at each informer event,
 * the status at each write; the configuration is one object), by value elsewhere.
 */
export interface StatusInputs {
  readonly config: NodeControllerConfig;
  readonly device: DeviceInfo | undefined;
  readonly node: Node;
  readonly previous: NodeStatus | undefined;
  readonly transportConnected: boolean | undefined;
  readonly transportMessage: string | undefined;
  readonly kubeletPort: number;
  readonly version: string;
  readonly sync: DeviceSync | undefined;
  readonly syncGraceMs: number | undefined;
}

/** A device's entry as first seen: no lease, no status written, nothing deleted. */
export function newEntry(o: Pick<NodeEntry, "name" | "device" | "problems" | "ownership">): NodeEntry {
  return {
    ...o,
    lease: undefined,
    leaseStop: undefined,
    lastStatus: undefined,
    lastStatusAt: 0,
    written: undefined,
    nodeDeleted: false,
    gone: false,
    kubeletPort: undefined,
  };
}
