/**
 * NodeController: one virtual node per device, for any number of devices in one process.
 *
 * For each device the provider's inventory reports (or the config lists), it registers a Node
 * (labels, provider taint, providerID, capacity, addresses, daemon endpoint, nodeInfo), keeps its
 * Lease renewed ({@link NodeLease}) and patches node status when it changes and at least every
 * `statusMaxIntervalSeconds`. Ready reflects devicelet's own health, never the device's presence
 * (DESIGN.md decision 1): presence is the `DeviceConnected` condition. A node deleted by someone
 * else is registered again. Reconciles are keyed by device id on a {@link WorkQueue}.
 *
 *   const nodes = new NodeController({ kube, inventory, ... });
 *   await nodes.start(signal);      // resolves once every known device's node is registered
 *   nodes.onDeviceChange((nodeName) => pods.resyncNode(nodeName));
 */
import type { Logger } from "pino";
import {
  Informer,
  isAlreadyExists,
  toWire,
  type KubeClient,
  type Node,
  type NodeStatus,
} from "../kube/index.ts";
import type { DeviceInfo, DeviceInventory } from "../provider/types.ts";
import { WorkQueue } from "../reconcile/queue.ts";
import { buildNode, buildNodeStatus, nodeStatusChanged } from "./build.ts";
import { NodeLease } from "./lease.ts";
import { NodeNameRegistry } from "./names.ts";

export interface NodeControllerConfig {
  readonly namePrefix: string;
  readonly taintKey: string;
  readonly extraLabels: Readonly<Record<string, string>>;
  readonly leaseDurationSeconds: number;
  readonly leaseRenewIntervalSeconds: number;
  readonly statusMaxIntervalSeconds: number;
  readonly kubeletPort: number;
  readonly kubeletAddress: string;
}

export interface NodeControllerOptions {
  readonly kube: KubeClient;
  readonly inventory: DeviceInventory;
  readonly providerName: string;
  readonly config: NodeControllerConfig;
  readonly version: string;
  readonly logger: Logger;
  /** devicelet's own health; Ready and lease renewal follow it. */
  readonly health: () => { readonly ready: boolean; readonly message: string };
}

/** What the rest of devicelet may know about a managed node. */
export interface ManagedNode {
  readonly name: string;
  readonly deviceId: string;
  readonly device: DeviceInfo;
}

interface NodeEntry {
  name: string;
  device: DeviceInfo;
  lease: NodeLease | undefined;
  lastStatus: NodeStatus | undefined;
  lastStatusAt: number;
}

export class NodeController {
  readonly #o: NodeControllerOptions;
  readonly #log: Logger;
  readonly #names: NodeNameRegistry;
  readonly #entries = new Map<string, NodeEntry>();
  readonly #byName = new Map<string, string>();
  readonly #queue: WorkQueue;
  readonly #informer: Informer<Node>;
  readonly #deviceListeners = new Set<(nodeName: string, device: DeviceInfo) => void>();
  #signal: AbortSignal | undefined;

  constructor(options: NodeControllerOptions) {
    this.#o = options;
    this.#log = options.logger.child({ component: "node" });
    this.#names = new NodeNameRegistry(options.config.namePrefix);
    this.#queue = new WorkQueue({
      name: "node",
      concurrency: 8,
      reconcile: (deviceId) => this.#reconcile(deviceId),
      logger: this.#log,
      maxRetries: 20,
      baseDelayMs: 500,
      maxDelayMs: 30_000,
    });
    this.#informer = new Informer<Node>({
      client: options.kube,
      logger: this.#log,
      path: "/api/v1/nodes",
      labelSelector: `type=virtual-kubelet,devicelet.dev/transport=${options.providerName}`,
    });
  }

  /** Registers every device's node and starts heartbeats; resolves when all are registered once. */
  async start(signal: AbortSignal): Promise<void> {
    this.#signal = signal;
    this.#queue.start(signal);
    void this.#informer.start(signal);
    await this.#informer.ready;
    this.#informer.onDelete((node) => {
      const deviceId = node.metadata?.name ? this.#byName.get(node.metadata.name) : undefined;
      if (deviceId === undefined) return;
      this.#log.warn({ node: node.metadata?.name }, "node deleted by someone else; registering it again");
      const entry = this.#entries.get(deviceId);
      if (entry) entry.lastStatus = undefined;
      this.#queue.add(deviceId);
    });
    this.#o.inventory.watchDevices((device) => this.#upsertDevice(device));
    for (const device of await this.#o.inventory.listDevices()) this.#upsertDevice(device);
    await this.#queue.idle();
  }

  /** Called with the node name whenever a device's info or presence changes. */
  onDeviceChange(listener: (nodeName: string, device: DeviceInfo) => void): () => void {
    this.#deviceListeners.add(listener);
    return () => this.#deviceListeners.delete(listener);
  }

  byNodeName(nodeName: string): ManagedNode | undefined {
    const deviceId = this.#byName.get(nodeName);
    const entry = deviceId === undefined ? undefined : this.#entries.get(deviceId);
    return entry && deviceId !== undefined ? { name: entry.name, deviceId, device: entry.device } : undefined;
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

  #upsertDevice(device: DeviceInfo): void {
    let entry = this.#entries.get(device.id);
    if (!entry) {
      let name: string;
      try {
        name = this.#names.claim(device.id);
      } catch (err) {
        this.#log.error(
          { err, deviceId: device.id },
          "refusing device: its node name collides with another device's",
        );
        return;
      }
      entry = { name, device, lease: undefined, lastStatus: undefined, lastStatusAt: 0 };
      this.#entries.set(device.id, entry);
      this.#byName.set(name, device.id);
    } else {
      entry.device = device;
    }
    this.#queue.add(device.id);
    for (const listener of this.#deviceListeners) listener(entry.name, device);
  }

  async #reconcile(deviceId: string): Promise<undefined> {
    const entry = this.#entries.get(deviceId);
    if (!entry || !this.#signal) return undefined;
    const { kube, config, providerName, version } = this.#o;
    const now = new Date();
    let node = this.#informer.get(entry.name);
    if (!node) {
      const desired = toWire(
        buildNode(entry.device, {
          nodeName: entry.name,
          providerName,
          taintKey: config.taintKey,
          extraLabels: config.extraLabels,
          kubeletPort: config.kubeletPort,
          kubeletAddress: config.kubeletAddress,
          version,
          now,
        }),
      );
      try {
        node = await kube.createNode(desired);
        this.#log.info({ node: entry.name, deviceId }, "registered node");
      } catch (err) {
        if (!isAlreadyExists(err)) throw err;
        // Someone else's object, or ours from before the informer saw it: take it over.
        node = await kube.patchNode(entry.name, {
          metadata: { labels: desired.metadata?.labels, annotations: desired.metadata?.annotations },
          spec: { taints: desired.spec?.taints, providerID: desired.spec?.providerID },
        });
      }
      entry.lastStatus = undefined;
    }
    const health = this.#o.health();
    const status = toWire(
      buildNodeStatus(entry.device, {
        ready: health.ready,
        readyMessage: health.message,
        now,
        previous: entry.lastStatus ?? node.status,
        kubeletPort: config.kubeletPort,
        kubeletAddress: config.kubeletAddress,
        version,
      }),
    );
    const due = Date.now() - entry.lastStatusAt >= config.statusMaxIntervalSeconds * 1000;
    if (!entry.lastStatus || due || nodeStatusChanged(entry.lastStatus, status)) {
      await kube.patchNodeStatus(entry.name, status);
      entry.lastStatus = status;
      entry.lastStatusAt = Date.now();
    }
    if (!entry.lease) {
      const nodeUid = node.metadata?.uid;
      entry.lease = new NodeLease({
        kube,
        nodeName: entry.name,
        nodeUid: () => this.#informer.get(entry.name)?.metadata?.uid ?? nodeUid,
        durationSeconds: config.leaseDurationSeconds,
        renewIntervalSeconds: config.leaseRenewIntervalSeconds,
        logger: this.#log,
        healthy: () => this.#o.health().ready,
        // Each heartbeat also checks whether node status is due (changed or a minute old).
        onTick: () => this.#queue.add(deviceId),
      });
      await entry.lease.renew();
      entry.lease.start(this.#signal);
    }
    return undefined;
  }
}
