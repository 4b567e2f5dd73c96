import type { NodeControllerConfig } from "../../src/node/controller-types.ts";

/** A node controller's configuration for unit tests of node writes: the kubelet's timings. */
export const testNodeConfig: NodeControllerConfig = {
  namePrefix: "",
  taintKey: "virtual-kubelet.io/provider",
  extraLabels: {},
  leaseDurationSeconds: 40,
  leaseRenewIntervalSeconds: 10,
  statusMaxIntervalSeconds: 60,
  kubeletPort: 10250,
  kubeletAddress: "192.0.2.10",
  heartbeatQps: 50,
};
