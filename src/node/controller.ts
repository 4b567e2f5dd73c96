/**
 * NodeController: one virtual node per device, for any number of devices in one process.
 *
 * For each device the provider's inventory reports, it registers a Node (labels, provider taint,
 * providerID, capacity, addresses, daemon endpoint, nodeInfo), keeps its Lease renewed
 * ({@link NodeLease}) and patches node status when it changes and at least every
 * `statusMaxIntervalSeconds`. A node deleted by someone else is registered again, unless its device
 * is away and the provider can retire devices: then the device is decommissioned and its node
 * forgotten (decommission.ts; docs/protocol.md § 5). Reconciles are keyed by device id on a
 * {@link WorkQueue}. Status and taint writes: status-writer.ts; leases: heartbeat.ts.
 *
 * Liveness is devicelet's alone: Ready is True and the Lease renewed for as long as devicelet runs
 * and reaches the API server. Nothing a device or the broker does changes that (a node going
 * NotReady gets its pods evicted five minutes later, and devicelet would then stop their apps for
 * an outage the devices never noticed). Device presence is the `DeviceConnected` condition; the
 * transport (the broker) is the `TransportConnected` condition plus a NoSchedule taint while it is
 * unreachable, so no new pods land and none are evicted.
 *
 * Nodes this devicelet registered in an earlier run (its transport label and extra labels) are
 * heartbeated from the moment it starts, before the provider has reported their devices: a
 * devicelet that starts while its broker is unreachable keeps every node Ready.
 *
 * A device is given nothing that is not its own. Its node name may already belong to a Node that
 * devicelet does not own (a kubeadm node, another virtual kubelet's): only a Node with this
 * device's providerID or devicelet's `type` and transport labels is adopted. Any other is never
 * patched, and the device is refused (an Event on that Node, a log line, a notice to the device)
 * and looked at again every `recheckRefusedMs`, so it registers once that Node is gone. Until its
 * node is known to be its own, {@link NodeController.byNodeName} does not know the device, so no
 * pod bound to that name (nor its Secrets) ever reaches it. The birth itself is checked before
 * any of it reaches the node (birth.ts): labels only under the configured prefix or allow-list,
 * addresses that are IPs (in range) or DNS names, capacity the API server accepts.
 *
 *   const nodes = new NodeController({ kube, inventory, transport: () => provider.health(), ... });
 *   await nodes.start(signal);      // resolves once every known node is heartbeating
 *   nodes.onDeviceChange((nodeName) => pods.resyncNode(nodeName));
 *   nodes.onNodeNames((nodeName, change) => change === "added" && podCache.pickUp(nodeName));
 */
import type { Logger } from "pino";
import { sleepOn, systemClock, type Clock } from "../base/clock.ts";
import { includesWrite, Informer, isPermanentKubeError, toWire, type Node } from "../kube/index.ts";
import type { DeviceInfo } from "../provider/types.ts";
import { WorkQueue, type ReconcileResult } from "../reconcile/queue.ts";
import { addressChecker } from "./addresses.ts";
import { checkBirth, type BirthPolicy } from "./birth.ts";
import { afterNodeDeleted } from "./decommission.ts";
import { buildNode, inSyncLabel, NodeLabel, type NodeStatusOptions, type TransportState } from "./build.ts";
import {
  newEntry,
  type ManagedNode,
  type NodeControllerOptions,
  type NodeEntry,
} from "./controller-types.ts";
import { HeartbeatLoad, startNodeLease } from "./heartbeat.ts";
import { LeaseLog, LeaseRecovery } from "./lease.ts";
import { DEFAULT_DEVICE_LABEL_POLICY } from "./labels.ts";
import { NodeNameRegistry } from "./names.ts";
import { DeviceNotices } from "./notices.ts";
import { registerNode } from "./registration.ts";
import { READY_MESSAGE, statusWritten, writeNodeStatus, writeTransportTaint } from "./status-writer.ts";
import { TransportWatch } from "./transport-watch.ts";
import { trimNode } from "./trim.ts";

export type { ManagedNode, NodeControllerConfig, NodeControllerOptions } from "./controller-types.ts";

/** How a node name changed for {@link NodeController.onNodeNames}. */
export type NodeNameChange = "added" | "removed";

const DEFAULT_RECHECK_REFUSED_MS = 30_000;
/** A device behind its desired state for longer shows `DeviceInSync=False` (`ApplyPending`). */
const DEFAULT_SYNC_PENDING_GRACE_MS = 30_000;

export class NodeController {
  readonly #o: NodeControllerOptions;
  readonly #log: Logger;
  readonly #names: NodeNameRegistry;
  readonly #entries = new Map<string, NodeEntry>();
  /** One wave of `renewSoon` over the fleet when a lease recovers (at most one a second). */
  readonly #recovery: LeaseRecovery;
  /** Every node's lease failures and recoveries, summed up per window (`LeaseLog`). */
  readonly #leaseLog: LeaseLog;
  readonly #byName = new Map<string, string>();
  readonly #queue: WorkQueue;
  readonly #informer: Informer<Node>;
  readonly #deviceListeners = new Set<(nodeName: string, device: DeviceInfo) => void>();
  readonly #nameListeners = new Set<(nodeName: string, change: NodeNameChange) => void>();
  readonly #birthPolicy: BirthPolicy;
  readonly #notices: DeviceNotices;
  readonly #transport: TransportWatch;
  readonly #load: HeartbeatLoad;
  readonly #clock: Clock;
  #signal: AbortSignal | undefined;

  constructor(options: NodeControllerOptions) {
    this.#o = options;
    this.#clock = options.clock ?? systemClock;
    const clock = this.#clock;
    const entries = this.#entries;
    this.#recovery = new LeaseRecovery(function* () {
      for (const entry of entries.values()) yield entry.lease;
    }, clock);
    this.#log = options.logger.child({ component: "node" });
    this.#leaseLog = new LeaseLog(this.#log, clock);
    this.#names = new NodeNameRegistry(options.config.namePrefix);
    this.#birthPolicy = {
      labels: options.config.deviceLabels ?? DEFAULT_DEVICE_LABEL_POLICY,
      addresses: addressChecker(options.config.addressRanges ?? []),
    };
    this.#notices = new DeviceNotices({
      events: options.events,
      notifier: options.notifier,
      logger: this.#log,
    });
    this.#queue = new WorkQueue({
      name: "node",
      keyField: "device",
      // Each reconcile waits on the API server (a registration is several requests, a status
      // write one): at 8 at a time, a server answering in 400 ms registered 20 nodes a second, and
      // 5,000 devices took four minutes to get their nodes. The request budgets bound the rate.
      concurrency: 32,
      reconcile: (deviceId) => this.#reconcile(deviceId),
      logger: this.#log,
      baseDelayMs: 500,
      maxDelayMs: 30_000,
      clock,
      // A request the API server refuses for what it is (a 422 for a node) is not retried until
      // the device is born again or the node's heartbeat looks at it: no loop outlives the birth.
      isTerminal: isPermanentKubeError,
      onTerminal: (deviceId, err) => {
        const entry = this.#entries.get(deviceId);
        if (!entry?.device) return;
        const why = err instanceof Error ? err.message : String(err);
        this.#notices.registrationRefused(
          deviceId,
          { name: entry.name },
          `the API server refused a write of the node: ${why}`,
        );
      },
    });
    const own = {
      [NodeLabel.Type]: "virtual-kubelet",
      [NodeLabel.Transport]: options.providerName,
      ...options.config.extraLabels,
    };
    this.#informer = new Informer<Node>({
      client: options.kube,
      logger: this.#log,
      path: "/api/v1/nodes",
      now: () => clock.now(),
      sleep: (ms, signal) => sleepOn(clock, ms, signal),
      trim: trimNode,
      labelSelector: Object.entries(own)
        .map(([k, v]) => `${k}=${v}`)
        .join(","),
    });
    this.#transport = new TransportWatch({
      health: options.transport,
      pollMs: options.transportPollMs,
      logger: this.#log,
      clock,
    });
    this.#load = new HeartbeatLoad({ config: options.config, logger: this.#log });
  }

  /**
   * Heartbeats the nodes an earlier run left, registers every device's node, and resolves once
   * each has been reconciled once. Does not wait for the provider: devices it reports later get
   * their nodes then.
   */
  async start(signal: AbortSignal): Promise<void> {
    this.#signal = signal;
    // The last window's summary of lease failures is written as the fleet stops, not lost.
    signal.addEventListener("abort", () => this.#leaseLog.flush(), { once: true });
    this.#queue.start(signal);
    void this.#informer.start(signal);
    await this.#informer.ready;
    this.#informer.onDelete((node) => {
      const deviceId = node.metadata?.name ? this.#byName.get(node.metadata.name) : undefined;
      if (deviceId === undefined) return;
      const entry = this.#entries.get(deviceId);
      if (!entry?.device) return;
      // The reconcile decides, from the device's presence then: retire it, or register again.
      entry.nodeDeleted = true;
      entry.lastStatus = undefined;
      entry.written = undefined;
      this.#enqueue(deviceId);
    });
    for (const node of this.#informer.list()) this.#adopt(node);
    // A node that comes to carry devicelet's labels later (a shard's nodes labelled after this
    // engine started, src/shard/relabel.ts) is adopted then; the nodes this controller registers
    // are known already, which makes this a no-op for them.
    this.#informer.onAdd((node) => this.#adopt(node));
    this.#o.inventory.watchDevices({
      changed: (device) => this.#upsertDevice(device),
      gone: (deviceId) => this.#deviceGone(deviceId),
    });
    // A sync change is looked at by the next reconcile, which writes only what status would anyway.
    this.#o.sync?.notifyDeviceSync((deviceId) => {
      if (this.#entries.has(deviceId)) this.#enqueue(deviceId);
    });
    await this.syncInventory();
    // A change re-reconciles every node (its condition and taint) and, through the listeners, its pods.
    this.#transport.start(signal, () => {
      for (const [deviceId, entry] of this.#entries) {
        this.#enqueue(deviceId);
        if (entry.device) for (const listener of this.#deviceListeners) listener(entry.name, entry.device);
      }
    });
    await this.#queue.idle();
  }

  /** Reads the provider's device list again (after the provider started) and reconciles every device. */
  async syncInventory(): Promise<void> {
    for (const device of await this.#o.inventory.listDevices()) this.#upsertDevice(device);
    this.#load.check(this.#entries.size);
  }

  /** Called with the node name whenever a device's info or presence, or the transport, changes. */
  onDeviceChange(listener: (nodeName: string, device: DeviceInfo) => void): () => void {
    this.#deviceListeners.add(listener);
    return () => this.#deviceListeners.delete(listener);
  }

  /**
   * Whether a device of this devicelet has this node name, in any state: a node of an earlier run
   * whose device is not reported yet, one not checked yet, owned, or refused. The pod cache holds
   * the pods bound to these names (a superset of {@link byNodeName}'s, so a device whose node is
   * being registered again keeps its pods cached). Synchronous; stable for a device's lifetime.
   */
  hasNodeName(nodeName: string): boolean {
    return this.#byName.has(nodeName);
  }

  /**
   * Called when a name starts being one of {@link hasNodeName}'s (`added`: a new device, or a node
   * of an earlier run adopted) and when it stops (`removed`: the device is gone or retired).
   * Returns an unsubscribe.
   */
  onNodeNames(listener: (nodeName: string, change: NodeNameChange) => void): () => void {
    this.#nameListeners.add(listener);
    return () => this.#nameListeners.delete(listener);
  }

  /** Whether devicelet reaches the devices' transport now (true when the provider has none). */
  transport(): TransportState {
    return this.#transport.state ?? { connected: true, message: "" };
  }

  /**
   * The device whose node this is, once the Node is known to be devicelet's own; undefined for a
   * name devicelet does not serve, and for a device refused or not yet checked (so nothing bound
   * to someone else's Node is ever handed to the provider).
   */
  byNodeName(nodeName: string): ManagedNode | undefined {
    const deviceId = this.#byName.get(nodeName);
    const entry = deviceId === undefined ? undefined : this.#entries.get(deviceId);
    return entry?.device && entry.ownership === "owned" && deviceId !== undefined
      ? { name: entry.name, deviceId, device: entry.device }
      : undefined;
  }

  /** Whether the device is refused now because its node name belongs to a Node devicelet does not own. */
  isRefused(deviceId: string): boolean {
    return this.#entries.get(deviceId)?.ownership === "refused";
  }

  /** The node name of a device, once it has been seen. */
  nodeNameOf(deviceId: string): string | undefined {
    return this.#entries.get(deviceId)?.name;
  }

  nodeNames(): string[] {
    return [...this.#byName.keys()];
  }

  /** Lease renewals so far, per node; for tests and metrics. */
  leaseRenewals(): Map<string, number> {
    return new Map([...this.#entries.values()].map((e) => [e.name, e.lease?.renewals ?? 0]));
  }

  /** The Nodes this devicelet serves, as the API server has them (the watch cache); for metrics. */
  servedNodes(): Node[] {
    return this.nodeNames().flatMap((name) => this.#informer.get(name) ?? []);
  }

  /**
   * Nodes whose `DeviceInSync` condition, as last written, is False (`ApplyPending` or
   * `Rejected`): the devices out of sync. 0 when the provider reports no sync state.
   */
  outOfSyncCount(): number {
    let count = 0;
    for (const entry of this.#entries.values()) {
      if (entry.ownership === "owned" && inSyncLabel(entry.lastStatus) === "false") count++;
    }
    return count;
  }

  /** What the fleet's heartbeats ask of the heartbeat lane, as a share of its QPS (heartbeat.ts). */
  heartbeatLoad(): number {
    return this.#load.load(this.#entries.size);
  }

  /** A node of ours from an earlier run: heartbeat it until the provider says what its device is. */
  #adopt(node: Node): void {
    const name = node.metadata?.name;
    const deviceId = node.metadata?.annotations?.[NodeLabel.DeviceId];
    if (name === undefined || deviceId === undefined || this.#entries.has(deviceId)) return;
    let claimed: string;
    try {
      claimed = this.#names.claim(deviceId);
    } catch {
      return;
    }
    if (claimed !== name) {
      this.#names.release(deviceId);
      return;
    }
    // The informer lists only nodes with devicelet's labels: this one is ours.
    this.#entries.set(deviceId, newEntry({ name, device: undefined, problems: [], ownership: "owned" }));
    this.#nameAdded(name, deviceId);
    this.#enqueue(deviceId);
  }

  /**
   * Queues the device's reconcile; ahead of the routine ones when its node has no heartbeat yet
   * (not registered, or its registration failed). The Lease renewals of a large fleet re-queue
   * every node each interval; with 5,000 devices on two busy cores, four nodes whose create timed
   * out got their Lease ten minutes later, NotReady all along, most likely from waiting their turn
   * behind those.
   */
  #enqueue(deviceId: string): void {
    this.#queue.add(deviceId, { first: this.#entries.get(deviceId)?.lease === undefined });
  }

  #upsertDevice(announced: DeviceInfo): void {
    const { device, problems } = checkBirth(announced, this.#birthPolicy);
    let entry = this.#entries.get(device.id);
    if (!entry) {
      let name: string;
      try {
        name = this.#names.claim(device.id);
      } catch (err) {
        this.#log.error(
          { err, device: device.id },
          "refusing device: its node name collides with another device's",
        );
        return;
      }
      entry = newEntry({ name, device, problems, ownership: "unknown" });
      this.#entries.set(device.id, entry);
      this.#nameAdded(name, device.id);
      this.#load.check(this.#entries.size);
    } else {
      entry.device = device;
      entry.problems = problems;
      entry.gone = false;
    }
    this.#enqueue(device.id);
    for (const listener of this.#deviceListeners) listener(entry.name, device);
  }

  /** The provider forgot the device for good: its Node goes (see {@link #removeGone}). */
  #deviceGone(deviceId: string): void {
    const entry = this.#entries.get(deviceId);
    if (!entry) return;
    entry.gone = true;
    this.#enqueue(deviceId);
  }

  /**
   * Stops the lease and deletes the device's Node, if it is devicelet's own (by UID: a Node
   * registered again meanwhile is not touched); the Lease, owned by the Node, goes with it, and
   * the pod garbage collector removes the pods bound to it. The name is then free for another device.
   */
  async #removeGone(entry: NodeEntry, deviceId: string): Promise<void> {
    this.#stopLease(entry);
    const node = entry.ownership === "owned" ? this.#informer.get(entry.name) : undefined;
    const uid = node?.metadata?.uid;
    if (uid !== undefined && (await this.#o.kube.deleteNode(entry.name, uid))) {
      this.#log.info({ node: entry.name, device: deviceId }, "device gone: deleted its node");
    }
    this.#entries.delete(deviceId);
    this.#nameRemoved(entry.name);
    this.#names.release(deviceId);
    this.#notices.forget(deviceId);
    await this.#releasePort(entry);
  }

  async #reconcile(deviceId: string): Promise<ReconcileResult> {
    const entry = this.#entries.get(deviceId);
    if (!entry || !this.#signal) return undefined;
    if (entry.gone) {
      await this.#removeGone(entry, deviceId);
      return undefined;
    }
    if (entry.nodeDeleted && (await this.#afterNodeDeleted(entry, deviceId)) === "retired") return undefined;
    await this.#assignPort(entry);
    const { kube, config, version } = this.#o;
    const transport = this.#transport.state;
    const clock = this.#clock;
    const { sync } = this.#o;
    const syncState = sync && {
      state: sync.deviceSync(deviceId),
      pendingGraceMs: this.#o.syncPendingGraceMs ?? DEFAULT_SYNC_PENDING_GRACE_MS,
    };
    let node = entry.device
      ? await this.#register(entry, deviceId, transport, syncState)
      : this.#informer.get(entry.name);
    if (entry.ownership === "refused") {
      return { requeueAfterMs: this.#o.recheckRefusedMs ?? DEFAULT_RECHECK_REFUSED_MS };
    }
    if (!node) return undefined; // an adopted node that is gone: nothing to heartbeat
    node = latestNode(entry, node);
    this.#notices.birth(deviceId, { name: entry.name, uid: node.metadata?.uid }, entry.problems);
    const written = await writeNodeStatus({
      kube,
      config,
      version,
      transport,
      entry,
      node,
      clock,
      ...(syncState ? { sync: syncState, inSyncLabel: true } : {}),
    });
    if (written) node = rememberWrite(entry, written);
    // The in-sync label follows the condition as written: set with the status when it was written,
    // else (a lagging cache, a label someone else changed) in the same patch as the taint.
    const inSync = sync && entry.device ? { value: inSyncLabel(entry.lastStatus) } : undefined;
    const patched = await writeTransportTaint({
      kube,
      name: entry.name,
      node,
      transport,
      ...(inSync ? { inSync } : {}),
    });
    if (patched) node = rememberWrite(entry, patched);
    if (!entry.lease) {
      const nodeUid = node.metadata?.uid;
      startNodeLease({
        entry,
        kube,
        config,
        // A new Node's Lease is created at once; patching it first would cost a 404 per node.
        leaseMissing: entry.nodeCreated === true,
        logger: this.#log,
        leaseLog: this.#leaseLog,
        signal: this.#signal,
        clock,
        nodeUid: () => this.#informer.get(entry.name)?.metadata?.uid ?? nodeUid,
        // Each heartbeat also checks whether node status is due (changed or a minute old).
        onTick: () => this.#queue.add(deviceId),
        // The API server answers again: every lease still failing tries now, not after its backoff.
        onRecovered: () => this.#recovery.recovered(),
        onRenewed: this.#o.onLeaseRenewed,
      });
    }
    return undefined;
  }

  /**
   * The device's Node as the API server has it, registering it first when it is missing.
   * Undefined, with the entry `refused`, when a Node of that name belongs to someone else.
   *
   * A new Node is created as the heartbeat that follows would leave it: with the status it would
   * write (the API server keeps a Node's status on create, as the kubelet's registration relies
   * on), the in-sync label of that status and the transport's taint. So registering a node costs
   * its create and its Lease's, not a status patch and a label patch besides: a third of the
   * requests of registering a fleet, which the heartbeat lane's budget paces.
   */
  async #register(
    entry: NodeEntry,
    deviceId: string,
    transport: TransportState | undefined,
    sync: NodeStatusOptions["sync"],
  ): Promise<Node | undefined> {
    const node = this.#informer.get(entry.name);
    if (node) {
      // Listed by the informer, so it carries devicelet's labels.
      this.#own(entry, deviceId);
      return node;
    }
    if (!entry.device) return undefined;
    const { kube, config, providerName, version } = this.#o;
    const desired = toWire(
      buildNode(entry.device, {
        nodeName: entry.name,
        providerName,
        taintKey: config.taintKey,
        extraLabels: config.extraLabels,
        deviceLabels: this.#birthPolicy.labels,
        kubeletPort: entry.kubeletPort ?? config.kubeletPort,
        kubeletAddress: config.kubeletAddress,
        version,
        now: new Date(this.#clock.now()),
        readyMessage: READY_MESSAGE,
        transport,
        sync,
      }),
    );
    entry.lastStatus = undefined;
    entry.written = undefined;
    const registered = await registerNode({ kube, desired, deviceId, providerName });
    if (registered.outcome === "foreign") {
      this.#refuse(entry, deviceId, registered.node);
      return undefined;
    }
    if (registered.outcome === "created") {
      this.#log.info({ node: entry.name, device: deviceId }, "registered node");
      entry.nodeCreated = true;
      if (desired.status) statusWritten(entry, desired.status, { config, clock: this.#clock });
    }
    this.#own(entry, deviceId);
    return registered.node;
  }

  /**
   * The entry's Node was deleted by someone else. Until it is registered again nothing is
   * heartbeated (a renewal would write a Lease for a Node that is gone) and no pod bound to its
   * name reaches the device. A device that is away is retired and forgotten with its name; one
   * that is online gets its Node registered again. A failed retirement throws, and the queue tries
   * again with backoff (the Node stays deleted meanwhile).
   */
  async #afterNodeDeleted(entry: NodeEntry, deviceId: string): Promise<"retired" | "register"> {
    this.#stopLease(entry);
    entry.ownership = "unknown";
    if (!entry.device) return "register";
    const outcome = await afterNodeDeleted({
      retirement: this.#o.retirement,
      deviceId,
      device: entry.device,
      node: entry.name,
      logger: this.#log,
    });
    entry.nodeDeleted = false;
    // A live birth that came while the provider retired it (#upsertDevice replaced the entry's
    // device meanwhile) has put it back in service already: it keeps its node.
    const bornAgain = this.#entries.get(deviceId)?.device?.connected === true;
    if (outcome === "register" || bornAgain) return "register";
    this.#entries.delete(deviceId);
    this.#nameRemoved(entry.name);
    this.#names.release(deviceId);
    this.#notices.forget(deviceId);
    await this.#releasePort(entry);
    return "retired";
  }

  /**
   * Gives the node its kubelet API port before it is registered or heartbeated: the one its Node
   * advertises when that is free (a restart keeps ports), else the lowest free one. A node that got
   * none (0: the range is used up) asks again at each reconcile, and its heartbeat reconciles it.
   */
  async #assignPort(entry: NodeEntry): Promise<void> {
    const ports = this.#o.kubeletPorts;
    if (!ports || entry.ownership === "refused" || entry.kubeletPort) return;
    const advertised = this.#informer.get(entry.name)?.status?.daemonEndpoints?.kubeletEndpoint?.Port;
    entry.kubeletPort = await ports.assign(entry.name, advertised);
  }

  async #releasePort(entry: NodeEntry): Promise<void> {
    if (entry.kubeletPort === undefined) return;
    entry.kubeletPort = undefined;
    await this.#o.kubeletPorts?.release(entry.name);
  }

  #nameAdded(name: string, deviceId: string): void {
    this.#byName.set(name, deviceId);
    for (const listener of this.#nameListeners) listener(name, "added");
  }

  #nameRemoved(name: string): void {
    this.#byName.delete(name);
    for (const listener of this.#nameListeners) listener(name, "removed");
  }

  #stopLease(entry: NodeEntry): void {
    entry.leaseStop?.abort();
    entry.lease = undefined;
    entry.leaseStop = undefined;
  }

  /** The entry's Node is devicelet's: pods bound to it may now reach the device. */
  #own(entry: NodeEntry, deviceId: string): void {
    if (entry.ownership === "owned") return;
    if (entry.ownership === "refused") {
      this.#log.info({ node: entry.name, device: deviceId }, "node name is free again; device accepted");
    }
    entry.ownership = "owned";
    this.#notices.accepted(deviceId);
    if (entry.device) for (const listener of this.#deviceListeners) listener(entry.name, entry.device);
  }

  /** A Node devicelet does not own has the device's name: never touch it; tell, and look again later. */
  #refuse(entry: NodeEntry, deviceId: string, node: Node): void {
    entry.ownership = "refused";
    entry.lastStatus = undefined;
    entry.written = undefined;
    this.#stopLease(entry);
    void this.#releasePort(entry);
    const providerID = node.spec?.providerID ? ` (providerID ${node.spec.providerID})` : "";
    this.#notices.refused(
      deviceId,
      { name: entry.name, uid: node.metadata?.uid },
      `device ${deviceId} refused: node ${entry.name} already exists and is not devicelet's${providerID}; ` +
        "it is left untouched and no pod bound to it is sent to the device",
    );
  }
}

/**
 * The Node as this process last knows it: the cached one, or what its own last write of the Node
 * was answered with while the cache has not caught up with that write. Under a burst the node
 * watch lags by seconds; judged from the cache alone, a label just patched looked missing and was
 * patched again at every look meanwhile (a third of the node writes of a 5,000-pod burst), and a
 * taint list replaced against an old resourceVersion would meet a conflict.
 */
function latestNode(entry: NodeEntry, cached: Node): Node {
  const written = entry.written;
  if (!written) return cached;
  if (!includesWrite(cached.metadata?.resourceVersion ?? "", written.metadata?.resourceVersion ?? ""))
    return written;
  entry.written = undefined;
  return cached;
}

/** Keeps what a write of the Node answered (trimmed as the cache keeps it) until the cache shows it. */
function rememberWrite(entry: NodeEntry, answered: Node): Node {
  entry.written = trimNode(answered);
  return entry.written;
}
