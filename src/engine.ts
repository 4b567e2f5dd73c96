/**
 * The devicelet engine: one process, one provider, many device nodes. Wires the Kubernetes client,
 * the node and pod controllers and the provider together and runs them until the signal aborts.
 *
 *   const engine = await startEngine({ config, provider, logger, signal });
 *   await engine.ready;       // every device node registered, pods adopted
 *   controller.abort();       // leases stop being renewed; nodes are left in place
 *   await engine.done;
 *
 * Stopping never deletes nodes: a node whose lease lapses goes Ready=Unknown, which is the truth
 * about a stopped devicelet, and its pods stay bound for when devicelet returns.
 */
import type { Logger } from "pino";
import type { DeviceletConfig } from "./config/index.ts";
import { createKubeClient, EventRecorder, type KubeClient } from "./kube/index.ts";
import { NodeController } from "./node/controller.ts";
import { PodController } from "./pod/controller.ts";
import {
  hasDeviceInventory,
  isStartable,
  type DeviceInfo,
  type DeviceInventory,
  type PodLifecycleProvider,
} from "./provider/types.ts";

export interface EngineOptions {
  readonly config: DeviceletConfig;
  readonly provider: PodLifecycleProvider;
  readonly logger: Logger;
  readonly version: string;
  /** Use this client instead of building one from the config (tests wrap it to count calls). */
  readonly kube?: KubeClient;
}

export interface Engine {
  readonly kube: KubeClient;
  readonly nodes: NodeController;
  readonly pods: PodController;
}

/** A provider without an inventory gets one static device per node it is asked about: none. */
const emptyInventory: DeviceInventory = {
  listDevices: () => Promise.resolve([] as DeviceInfo[]),
  watchDevices: () => undefined,
};

export async function runEngine(options: EngineOptions, signal: AbortSignal): Promise<Engine> {
  const { config, provider, logger, version } = options;
  const kube =
    options.kube ??
    createKubeClient({
      kubeconfigPath: config.kubeconfig,
      qps: config.api.qps,
      burst: config.api.burst,
      logger: logger.child({ component: "kube" }),
      userAgent: `devicelet/${version}`,
    });
  if (isStartable(provider)) await provider.start(signal);
  const nodes = new NodeController({
    kube,
    inventory: hasDeviceInventory(provider) ? provider : emptyInventory,
    providerName: provider.name,
    version,
    logger,
    health: () => ({ ready: true, message: "devicelet is running" }),
    config: {
      namePrefix: config.nodes.namePrefix,
      taintKey: config.nodes.taintKey,
      extraLabels: config.nodes.extraLabels,
      leaseDurationSeconds: config.lease.durationSeconds,
      leaseRenewIntervalSeconds: config.lease.renewIntervalSeconds,
      statusMaxIntervalSeconds: config.nodeStatus.maxIntervalSeconds,
      kubeletPort: config.kubelet.port,
      kubeletAddress: config.kubelet.address,
    },
  });
  const events = new EventRecorder({ client: kube, logger: logger.child({ component: "events" }) });
  const pods = new PodController({
    kube,
    provider,
    nodes,
    events,
    logger,
    config: { ...config.pods, kubeletAddress: config.kubelet.address },
  });
  await nodes.start(signal);
  await pods.start(signal);
  return { kube, nodes, pods };
}
