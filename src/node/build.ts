/**
 * A device as a Node: the object to register ({@link buildNode}) and its status
 * ({@link buildNodeStatus}), as pure functions of the device and the clock.
 *
 * Ready is devicelet being alive and reaching the API server, nothing else: the device's presence
 * is the separate `DeviceConnected` condition, and the transport's (the broker's) the separate
 * `TransportConnected` condition plus the {@link TRANSPORT_TAINT_KEY} NoSchedule taint, so neither
 * an offline device nor a broker outage ever gets a node's pods evicted.
 *
 * Addresses: the API server dials a node's kubelet at the first address of the first type in its
 * `--kubelet-preferred-address-types` (default Hostname, InternalDNS, InternalIP, ExternalDNS,
 * ExternalIP) for logs, exec and metrics. That kubelet is devicelet, so `kubeletAddress` comes
 * first (as InternalIP, or Hostname when it is a DNS name), and the device's own addresses follow
 * only with types that cannot outrank it. No `Hostname` = node name entry is added: it would
 * outrank the InternalIP and resolve nowhere.
 */
import type { V1Node, V1NodeCondition, V1NodeStatus } from "../kube/types.ts";
import { isIP } from "node:net";
import type { DeviceInfo, DeviceSync, NodeAddress } from "../provider/types.ts";
import { sameNormalisedField, sha256Hex, toDate } from "../base/canonical.ts";
import type { Model, Plain } from "../workload/shape.ts";
import { DEFAULT_DEVICE_LABEL_POLICY, deviceNodeLabels, type DeviceLabelPolicy } from "./labels.ts";
import { labelValueFor } from "./names.ts";

/** Label and annotation keys devicelet sets on its nodes. */
export const NodeLabel = {
  Type: "type",
  Os: "kubernetes.io/os",
  Arch: "kubernetes.io/arch",
  Hostname: "kubernetes.io/hostname",
  ExcludeFromLoadBalancers: "node.kubernetes.io/exclude-from-external-load-balancers",
  Zone: "topology.kubernetes.io/zone",
  DeviceId: "devicelet.dev/device-id",
  Transport: "devicelet.dev/transport",
  DeviceClass: "devicelet.dev/device-class",
  Gateway: "devicelet.dev/gateway",
  /** `true`/`false` as the `DeviceInSync` condition is True/False; absent while it is Unknown. */
  InSync: "devicelet.dev/in-sync",
  /** With sharding: the shard whose engine serves the node (src/shard/engines.ts). */
  Shard: "devicelet.dev/shard",
} as const;

export const NodeConditionType = {
  Ready: "Ready",
  MemoryPressure: "MemoryPressure",
  DiskPressure: "DiskPressure",
  PIDPressure: "PIDPressure",
  DeviceConnected: "DeviceConnected",
  TransportConnected: "TransportConnected",
  DeviceInSync: "DeviceInSync",
} as const;

/** Reasons of the `DeviceInSync` condition (True / False / False / Unknown). */
export const DeviceSyncReason = {
  InSync: "InSync",
  ApplyPending: "ApplyPending",
  Rejected: "Rejected",
  NeverReported: "NeverReported",
} as const;

/**
 * NoSchedule taint on every node while devicelet cannot reach its devices' transport (the MQTT
 * broker): no new pods land there, and the pods already bound stay (NoSchedule evicts nothing).
 */
export const TRANSPORT_TAINT_KEY = "devicelet.dev/transport-unreachable";

/** The transport's state as the node shows it. */
export interface TransportState {
  readonly connected: boolean;
  readonly message: string;
}

/** The taint value on every device node (`<taintKey>=devicelet:NoSchedule`). */
export const TAINT_VALUE = "devicelet";
/** Pods capacity when the device does not state one: the kubelet's default `maxPods`. */
export const DEFAULT_MAX_PODS = "110";
/** The Kubernetes version device nodes report, with devicelet's after it. */
export const KUBE_VERSION = "v1.36.3";

export interface BuildNodeOptions {
  readonly nodeName: string;
  /** The provider's short name: transport label and providerID. */
  readonly providerName: string;
  readonly taintKey: string;
  /** Added to every node; device labels give way to them, devicelet's own labels win over both. */
  readonly extraLabels: Readonly<Record<string, string>>;
  /** Which device labels go on the node, under which keys (labels.ts); default prefix only. */
  readonly deviceLabels?: DeviceLabelPolicy;
  readonly kubeletPort: number;
  readonly kubeletAddress: string;
  /** devicelet's version, as in package.json. */
  readonly version: string;
  readonly now: Date;
  /** For the initial status; default true (a registering devicelet is healthy). */
  readonly ready?: boolean;
  readonly readyMessage?: string;
  /** For the initial status, as {@link NodeStatusOptions} has them, and the label and taint it implies. */
  readonly transport?: TransportState | undefined;
  readonly sync?: NodeStatusOptions["sync"];
}

export interface NodeStatusOptions {
  /** devicelet is alive and reaches the API server (so: true whenever it writes), not the device's presence. */
  readonly ready: boolean;
  readonly readyMessage: string;
  /** The transport's state; no `TransportConnected` condition when the provider reports none. */
  readonly transport?: TransportState | undefined;
  readonly now: Date;
  /** The status last written or read, to keep `lastTransitionTime`s and foreign conditions. */
  readonly previous?: Model<V1NodeStatus> | undefined;
  readonly kubeletPort: number;
  readonly kubeletAddress: string;
  readonly version: string;
  /**
   * The device's sync state when the provider reports one (DeviceSyncReporter): adds the
   * `DeviceInSync` condition. A device behind for less than `pendingGraceMs` still shows True, so
   * a change applied within seconds costs no status write.
   */
  readonly sync?: { readonly state: DeviceSync | undefined; readonly pendingGraceMs: number } | undefined;
}

/** `devicelet://<provider>/<url-encoded device id>`: the `spec.providerID` of a device's node. */
export const providerIdFor = (providerName: string, deviceId: string): string =>
  `devicelet://${providerName}/${encodeURIComponent(deviceId)}`;

/**
 * The inverse of {@link providerIdFor}: the device id in a node's `spec.providerID` when it is
 * exactly what devicelet writes for some device of `providerName`. `undefined` for anything else:
 * no providerID, another provider's or scheme, an empty id, an encoding that does not decode, or one
 * devicelet would not have written (`%41` for `A`), since registration matches providerIDs exactly.
 */
export function deviceIdFromProviderId(
  providerName: string,
  providerID: string | undefined,
): string | undefined {
  const prefix = providerIdFor(providerName, "");
  if (providerID === undefined || !providerID.startsWith(prefix) || providerID.length === prefix.length)
    return undefined;
  let deviceId: string;
  try {
    deviceId = decodeURIComponent(providerID.slice(prefix.length));
  } catch {
    return undefined; // a malformed escape: URIError
  }
  return providerIdFor(providerName, deviceId) === providerID ? deviceId : undefined;
}

/**
 * Whether `node` is one devicelet may adopt for `deviceId`: it carries this device's providerID,
 * or devicelet's `type` and transport labels. Any other Node of that name (a kubeadm node, another
 * virtual kubelet's) belongs to someone else and is never patched.
 */
export function isDeviceletNode(
  node: { spec?: { providerID?: string }; metadata?: { labels?: Readonly<Record<string, string>> } },
  o: { providerName: string; deviceId: string },
): boolean {
  if (node.spec?.providerID === providerIdFor(o.providerName, o.deviceId)) return true;
  const labels = node.metadata?.labels ?? {};
  return labels[NodeLabel.Type] === "virtual-kubelet" && labels[NodeLabel.Transport] === o.providerName;
}

/**
 * The Node to register for a device: labels, annotations (`devicelet.dev/device-id` holds the raw
 * id, the label a label-safe form), the NoSchedule taint, `spec.providerID` =
 * {@link providerIdFor}, and an initial status. The device's own labels go on only as the
 * `deviceLabels` policy allows (labels.ts). Returns a new object.
 */
export function buildNode(device: DeviceInfo, o: BuildNodeOptions): Plain<V1Node> {
  const labels: Record<string, string> = {};
  const own = deviceNodeLabels(device.labels, o.deviceLabels ?? DEFAULT_DEVICE_LABEL_POLICY).labels;
  for (const [k, v] of Object.entries(own)) labels[k] = labelValueFor(v);
  Object.assign(labels, o.extraLabels, {
    [NodeLabel.Type]: "virtual-kubelet",
    [NodeLabel.Os]: labelValueFor(device.os),
    [NodeLabel.Arch]: labelValueFor(device.arch),
    [NodeLabel.Hostname]: o.nodeName,
    [NodeLabel.ExcludeFromLoadBalancers]: "true",
    [NodeLabel.DeviceId]: labelValueFor(device.id),
    [NodeLabel.Transport]: o.providerName,
    [NodeLabel.DeviceClass]: labelValueFor(device.deviceClass),
  });
  const annotations: Record<string, string> = {
    [NodeLabel.DeviceId]: device.id,
    "node.alpha.kubernetes.io/ttl": "0",
  };
  if (device.gateway !== undefined && device.gateway !== "") {
    labels[NodeLabel.Gateway] = labelValueFor(device.gateway);
    annotations[NodeLabel.Gateway] = device.gateway;
  }
  if (device.zone !== undefined && device.zone !== "") labels[NodeLabel.Zone] = labelValueFor(device.zone);
  const status = buildNodeStatus(device, {
    ready: o.ready ?? true,
    readyMessage: o.readyMessage ?? "",
    now: o.now,
    kubeletPort: o.kubeletPort,
    kubeletAddress: o.kubeletAddress,
    version: o.version,
    transport: o.transport,
    sync: o.sync,
  });
  // What the status implies, as a heartbeat writing it would set: the in-sync label and the
  // unreachable transport's taint.
  const inSync = o.sync ? inSyncLabel(status) : undefined;
  if (inSync !== undefined) labels[NodeLabel.InSync] = inSync;
  const taints = [{ key: o.taintKey, value: TAINT_VALUE, effect: "NoSchedule" }];
  return {
    apiVersion: "v1",
    kind: "Node",
    metadata: { name: o.nodeName, labels, annotations },
    spec: {
      providerID: providerIdFor(o.providerName, device.id),
      taints: transportTaints(taints, o.transport?.connected === false) ?? taints,
    },
    status,
  };
}

/** A UUID-shaped id from a SHA-256 in hex (for `systemUUID`). */
function uuidFrom(h: string): string {
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

const ADDRESS_RANK = ["Hostname", "InternalDNS", "InternalIP", "ExternalDNS", "ExternalIP"];

function addresses(device: DeviceInfo, kubeletAddress: string): { type: string; address: string }[] {
  if (kubeletAddress === "") return device.addresses.map((a) => ({ type: a.type, address: a.address }));
  const own: NodeAddress = {
    type: isIP(kubeletAddress) ? "InternalIP" : "Hostname",
    address: kubeletAddress,
  };
  const rank = ADDRESS_RANK.indexOf(own.type);
  const seen = new Set<string>();
  return [own, ...device.addresses.filter((a) => ADDRESS_RANK.indexOf(a.type) >= rank)].flatMap((a) => {
    const key = `${a.type}/${a.address}`;
    if (seen.has(key)) return [];
    seen.add(key);
    return [{ type: a.type, address: a.address }];
  });
}

function condition(
  type: string,
  status: "True" | "False" | "Unknown",
  reason: string,
  message: string,
  o: Pick<NodeStatusOptions, "previous" | "now">,
): Plain<V1NodeCondition> {
  const prev = o.previous?.conditions?.find((c) => c.type === type);
  const since = prev?.status === status ? toDate(prev.lastTransitionTime) : undefined;
  return { type, status, reason, message, lastHeartbeatTime: o.now, lastTransitionTime: since ?? o.now };
}

/**
 * The node status for a device now: capacity and allocatable as the device states them (`pods`
 * defaulting to 110; resources in `previous` the device no longer states become "0"), addresses (see the module doc), the kubelet endpoint, nodeInfo, and
 * conditions MemoryPressure/DiskPressure/PIDPressure (False), Ready (devicelet's health) and
 * DeviceConnected (DeviceOnline/DeviceSleeping/DeviceOffline; the last two name the last-seen time). Every
 * `lastHeartbeatTime` is `now`; a `lastTransitionTime` is kept from `previous` while the status
 * is unchanged. Conditions of other types in `previous` are kept after these. Times are `Date`s.
 */
export function buildNodeStatus(device: DeviceInfo, o: NodeStatusOptions): Plain<V1NodeStatus> {
  // A resource the device no longer states drops to "0" (as the kubelet does for a departed device
  // plugin's resource) instead of vanishing, which a merge patch would not carry to the server.
  const capacity: Record<string, string> = {};
  for (const key of Object.keys(o.previous?.capacity ?? {})) capacity[key] = "0";
  Object.assign(capacity, { pods: DEFAULT_MAX_PODS }, device.capacity);
  const lastSeen = device.lastSeen && !Number.isNaN(device.lastSeen.getTime()) ? device.lastSeen : undefined;
  const seen = lastSeen
    ? `last seen ${new Date(Math.floor(lastSeen.getTime() / 1000) * 1000).toISOString()}`
    : "never seen";
  const own: Plain<V1NodeCondition>[] = [
    condition(
      "MemoryPressure",
      "False",
      "KubeletHasSufficientMemory",
      "kubelet has sufficient memory available",
      o,
    ),
    condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure", o),
    condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available", o),
    readyCondition(o),
    deviceCondition(device, seen, o),
    ...transportConditions(o),
    ...(o.sync ? [syncCondition(o.sync.state, o.sync.pendingGraceMs, o)] : []),
  ];
  const info = device.nodeInfo ?? {};
  // machineID and systemUUID both derive from the device id: one hash for the two.
  const idHash = sha256Hex(`devicelet:${device.id}`);
  return {
    capacity,
    allocatable: { ...capacity },
    addresses: addresses(device, o.kubeletAddress),
    daemonEndpoints: { kubeletEndpoint: { Port: o.kubeletPort } },
    nodeInfo: {
      architecture: device.arch,
      operatingSystem: device.os,
      osImage: info.osImage ?? "",
      kernelVersion: info.kernelVersion ?? "",
      kubeletVersion: `${KUBE_VERSION}-devicelet-${o.version}`,
      kubeProxyVersion: "",
      containerRuntimeVersion: `devicelet://${o.version}`,
      machineID: info.machineID ?? idHash.slice(0, 32),
      systemUUID: uuidFrom(idHash),
      bootID: info.bootID ?? "",
    },
    conditions: [...own, ...foreignConditions(o.previous, own)],
  };
}

/**
 * `DeviceConnected`: True `DeviceOnline`; False `DeviceSleeping` for a device that said it sleeps
 * (with its wake time when it gave one), else False `DeviceOffline`. Both name the last-seen time.
 */
function deviceCondition(device: DeviceInfo, seen: string, o: NodeStatusOptions): Plain<V1NodeCondition> {
  if (device.connected) return condition("DeviceConnected", "True", "DeviceOnline", "device is connected", o);
  if (device.sleep) {
    const wakeAt = device.sleep.wakeAt;
    const until =
      wakeAt && !Number.isNaN(wakeAt.getTime())
        ? `until ${new Date(Math.floor(wakeAt.getTime() / 1000) * 1000).toISOString()}`
        : "with no wake time given";
    return condition("DeviceConnected", "False", "DeviceSleeping", `device is sleeping ${until}; ${seen}`, o);
  }
  return condition("DeviceConnected", "False", "DeviceOffline", `device is offline; ${seen}`, o);
}

const isoSeconds = (d: Date) => new Date(Math.floor(d.getTime() / 1000) * 1000).toISOString();

/**
 * `DeviceInSync`: True `InSync` when the device applied the desired generation (or is behind for
 * less than `graceMs`); False `Rejected` when it refused the newest generation it saw, False
 * `ApplyPending` when behind for longer; Unknown `NeverReported`. While False, lastTransitionTime
 * is when the device fell behind. Messages name the applied and desired generations.
 */
function syncCondition(
  sync: DeviceSync | undefined,
  graceMs: number,
  o: NodeStatusOptions,
): Plain<V1NodeCondition> {
  const type = NodeConditionType.DeviceInSync;
  if (!sync) {
    const message = "the device has not reported which generation of its desired state it applied";
    return condition(type, "Unknown", DeviceSyncReason.NeverReported, message, o);
  }
  const { desiredGeneration: desired, appliedGeneration: applied, behindSince } = sync;
  const since = behindSince && !Number.isNaN(behindSince.getTime()) ? behindSince : undefined;
  const behind = `applied generation ${applied} of ${desired}; behind since ${isoSeconds(since ?? o.now)}`;
  const falseSince = (c: Plain<V1NodeCondition>) =>
    // Fell behind now: the transition is when it fell behind, not when that was noticed.
    c.lastTransitionTime === o.now && since ? { ...c, lastTransitionTime: since } : c;
  if (sync.rejected) {
    const r = sync.rejected;
    const message = `the device rejected generation ${r.generation}: ${r.reason}: ${r.message}; ${behind}`;
    return falseSince(condition(type, "False", DeviceSyncReason.Rejected, message.slice(0, 1024), o));
  }
  if (applied < desired && since && o.now.getTime() - since.getTime() >= graceMs) {
    return falseSince(condition(type, "False", DeviceSyncReason.ApplyPending, `the device ${behind}`, o));
  }
  const message =
    applied < desired
      ? `the device applied generation ${applied}; generation ${desired} is on its way`
      : `the device applied generation ${applied}, the desired one`;
  return condition(type, "True", DeviceSyncReason.InSync, message, o);
}

/** The `devicelet.dev/in-sync` label value for a status: from its DeviceInSync condition. */
export function inSyncLabel(status: Model<V1NodeStatus> | undefined): "true" | "false" | undefined {
  const c = status?.conditions?.find((x) => x.type === NodeConditionType.DeviceInSync);
  return c?.status === "True" ? "true" : c?.status === "False" ? "false" : undefined;
}

function readyCondition(o: NodeStatusOptions): Plain<V1NodeCondition> {
  return o.ready
    ? condition("Ready", "True", "KubeletReady", o.readyMessage || "kubelet is posting ready status", o)
    : condition("Ready", "False", "KubeletNotReady", o.readyMessage || "devicelet is not ready", o);
}

function transportConditions(o: NodeStatusOptions): Plain<V1NodeCondition>[] {
  if (!o.transport) return [];
  const { connected, message } = o.transport;
  return [
    connected
      ? condition("TransportConnected", "True", "TransportConnected", message, o)
      : condition("TransportConnected", "False", "TransportDisconnected", message, o),
  ];
}

/** Conditions in `previous` of types not in `own`, kept as they are (times as Dates). */
function foreignConditions(
  previous: Model<V1NodeStatus> | undefined,
  own: readonly Plain<V1NodeCondition>[],
): Plain<V1NodeCondition>[] {
  const ownTypes = new Set(own.map((c) => c.type));
  return (previous?.conditions ?? [])
    .filter((c) => !ownTypes.has(c.type))
    .map((c) => ({
      ...c,
      lastHeartbeatTime: toDate(c.lastHeartbeatTime),
      lastTransitionTime: toDate(c.lastTransitionTime),
    }));
}

/**
 * For a node devicelet owns but whose device the provider has not reported yet (devicelet just
 * started and its broker is not reachable): only Ready and TransportConnected are written, on
 * top of the conditions the node already has; everything else stays as the last run left it.
 */
export function heartbeatConditions(o: NodeStatusOptions): Plain<V1NodeCondition>[] {
  const own = [readyCondition(o), ...transportConditions(o)];
  return [...foreignConditions(o.previous, own), ...own];
}

/**
 * The node's taints with the {@link TRANSPORT_TAINT_KEY} NoSchedule taint added (transport
 * unreachable) or removed (reachable); every other taint is kept. `undefined` when nothing changes.
 */
export function transportTaints(
  taints: readonly { key: string; value?: string; effect: string; timeAdded?: unknown }[] | undefined,
  unreachable: boolean,
): { key: string; value?: string; effect: string }[] | undefined {
  const current = taints ?? [];
  const has = current.some((t) => t.key === TRANSPORT_TAINT_KEY && t.effect === "NoSchedule");
  if (has === unreachable) return undefined;
  const others = current
    .filter((t) => t.key !== TRANSPORT_TAINT_KEY)
    .map(({ key, value, effect, timeAdded }) => ({
      key,
      ...(value === undefined ? {} : { value }),
      effect,
      ...(timeAdded === undefined ? {} : { timeAdded }),
    }));
  return unreachable ? [...others, { key: TRANSPORT_TAINT_KEY, effect: "NoSchedule" }] : others;
}

const NODE_STATUS_FIELDS = [
  "capacity",
  "allocatable",
  "addresses",
  "daemonEndpoints",
  "nodeInfo",
  "conditions",
] as const;
const HEARTBEAT = new Set(["lastHeartbeatTime"]);

/**
 * Whether writing `next` would change what matters in `prev`: the fields {@link buildNodeStatus}
 * owns, compared with times at whole seconds (Date and RFC 3339 strings alike), empty values equal
 * to absent ones, and every `lastHeartbeatTime` ignored. True when `prev` is undefined.
 */
export function nodeStatusChanged(prev: Model<V1NodeStatus> | undefined, next: Model<V1NodeStatus>): boolean {
  if (prev === undefined) return true;
  const [a, b] = [withoutSyncMessage(prev), withoutSyncMessage(next)];
  return NODE_STATUS_FIELDS.some((f) => !sameNormalisedField(f, a[f], b[f], HEARTBEAT));
}

/**
 * The `DeviceInSync` message (its generations) alone is no reason to write: it goes out with the
 * next write that happens anyway (a change, or `statusMaxIntervalSeconds`); status and reason are.
 */
function withoutSyncMessage(status: Model<V1NodeStatus>): Model<V1NodeStatus> {
  if (!status.conditions?.some((c) => c.type === NodeConditionType.DeviceInSync)) return status;
  return {
    ...status,
    conditions: status.conditions.map((c) =>
      c.type === NodeConditionType.DeviceInSync ? { ...c, message: "" } : c,
    ),
  };
}
