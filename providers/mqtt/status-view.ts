/**
 * PodStatusView: the MQTT provider's pod statuses, read from what it holds — the devices' desired
 * documents (DesiredStore), their presence (DeviceRegistry) and their reports (Observations). It
 * only reads them; its one memory is the reported address last refused as a pod IP per device,
 * so that a refused address is recorded as one Event, not one per status read. Never blocks.
 *
 * Its own part (not a method of Workloads) so the StatusCoalescer, which pushes these statuses,
 * can be built from it without depending on the part that writes the documents.
 *
 *   const view = new PodStatusView({ desired, registry, observations, checkPodAddress, ... });
 *   view.status(ref);                 // one pod, undefined when no device's document has it
 *   view.statusesOf("gw-1");          // every pod in the device's document
 */
import type { Logger } from "pino";
import type { PodRef, ProviderContext, ProviderEvent, WorkloadStatus } from "../../src/provider/types.ts";
import type { DesiredStore, PodEntry } from "./desired.ts";
import type { DeviceRegistry } from "./devices.ts";
import type { Observations } from "./observations.ts";
import { podStatus } from "./pod-status.ts";
import { withUsablePodIP } from "./status-map.ts";

export interface PodStatusViewOptions {
  readonly desired: Pick<DesiredStore, "device" | "deviceOf">;
  readonly registry: Pick<DeviceRegistry, "get" | "effectivePresence">;
  readonly observations: Pick<Observations, "get">;
  readonly checkPodAddress: ProviderContext["checkPodAddress"];
  readonly recordEvent: (event: ProviderEvent) => void;
  readonly logger: Logger;
}

export class PodStatusView {
  readonly #o: PodStatusViewOptions;
  /** Per device, the reported address last refused as a pod IP (one Event per distinct address). */
  readonly #refusedAddress = new Map<string, string>();

  constructor(options: PodStatusViewOptions) {
    this.#o = options;
  }

  status(pod: PodRef): WorkloadStatus | undefined {
    const deviceId = this.#o.desired.deviceOf(pod.uid);
    const entry = deviceId === undefined ? undefined : this.#o.desired.device(deviceId)?.pods.get(pod.uid);
    return deviceId === undefined || !entry ? undefined : this.#status(deviceId, entry);
  }

  /** The statuses of every pod in the device's document (for the StatusCoalescer). */
  statusesOf(deviceId: string): WorkloadStatus[] {
    const d = this.#o.desired.device(deviceId);
    return d ? [...d.pods.values()].map((entry) => this.#status(deviceId, entry)) : [];
  }

  #status(deviceId: string, entry: PodEntry): WorkloadStatus {
    const { registry, observations } = this.#o;
    const device = registry.get(deviceId);
    const { status, refused } = withUsablePodIP(
      podStatus({
        entry,
        device: this.#o.desired.device(deviceId),
        presence: registry.effectivePresence(deviceId),
        wakeAt: device?.wakeAt,
        observation: observations.get(deviceId),
        now: new Date(),
      }),
      this.#o.checkPodAddress,
    );
    const address = observations.get(deviceId)?.report?.address;
    if (refused !== undefined && address !== undefined && this.#refusedAddress.get(deviceId) !== address) {
      this.#refusedAddress.set(deviceId, address);
      this.#o.logger.warn({ device: deviceId, reason: refused }, "reported address ignored as pod IP");
      this.#o.recordEvent({
        involved: { kind: "Device", deviceId },
        type: "Warning",
        reason: "InvalidAddress",
        message: `reported address ignored: ${refused}; its pods get an address from pods.ipRange`,
      });
    }
    return status;
  }
}
