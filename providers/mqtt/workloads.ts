/**
 * Workloads: the pod side of the MQTT provider — workloads from the engine into the devices'
 * desired documents (DesiredStore), and pod statuses back out of what the devices said. It owns
 * the engine's workload hash per pod uid (what this process was given; unknown for pods read back
 * from the broker) and the one-Event-per-address memory for reported addresses refused as pod IPs.
 * Nothing here blocks except `delete`, which waits for the broker to hold the tombstone.
 *
 *   const workloads = new Workloads({ desired, registry, observations, statuses, orphans, ... });
 *   workloads.apply(workload);                      // upsert into the device's document
 *   await workloads.delete(ref, 30);                // tombstone, resolved once retained
 *   workloads.list();                               // ProviderPods, tombstoned ones first
 */
import type { Logger } from "pino";
import type {
  PodRef,
  ProviderContext,
  ProviderEvent,
  ProviderPod,
  Workload,
  WorkloadStatus,
} from "../../src/provider/types.ts";
import type { DesiredStore, PodEntry } from "./desired.ts";
import type { DeviceRegistry } from "./devices.ts";
import type { Observations } from "./observations.ts";
import type { Orphans } from "./orphans.ts";
import { podStatus, type StatusCoalescer } from "./pod-status.ts";
import type { RestartRequests } from "./restart.ts";
import type { SecretGate } from "./secret-gate.ts";
import { withUsablePodIP } from "./status-map.ts";
import { holdBack, toDesiredPod } from "./translate.ts";

export interface WorkloadsOptions {
  readonly desired: DesiredStore;
  readonly registry: DeviceRegistry;
  readonly observations: Observations;
  readonly statuses: Pick<StatusCoalescer, "mark" | "forget">;
  readonly orphans: Pick<Orphans, "claim" | "listed">;
  readonly restarts: Pick<RestartRequests, "observe" | "forget">;
  readonly secrets: SecretGate;
  readonly checkPodAddress: ProviderContext["checkPodAddress"];
  readonly recordEvent: (event: ProviderEvent) => void;
  /** Reports a pod deleted (the provider tells the engine, after the current step). */
  readonly deleted: (ref: PodRef) => void;
  readonly logger: Logger;
}

export class Workloads {
  readonly #o: WorkloadsOptions;
  /** The engine's workload hash per pod uid, as last given (unknown for pods read back). */
  readonly #hashes = new Map<string, string>();
  /** Per device, the reported address last refused as a pod IP (one Event per distinct address). */
  readonly #refusedAddress = new Map<string, string>();

  constructor(options: WorkloadsOptions) {
    this.#o = options;
  }

  /** Whether this process was given the pod by the engine (an orphan otherwise). */
  claimed(uid: string): boolean {
    return this.#hashes.has(uid);
  }

  /** Puts the workload into its device's document (nothing when the engine's hash is unchanged). */
  apply(workload: Workload): void {
    const { deviceId, pod } = workload;
    this.#o.orphans.claim(pod.uid);
    if (this.#hashes.get(pod.uid) !== workload.hash) {
      const ref: PodRef = { namespace: pod.namespace, name: pod.name, uid: pod.uid };
      const desired = toDesiredPod(workload);
      // Judged again even when the content is unchanged: a pod adopted from an earlier run's
      // retained document was never checked under this run's config.
      const blocked = holdBack(workload, desired, { secrets: this.#o.secrets });
      if (this.#o.desired.upsertPod(deviceId, ref, desired, blocked)) this.#o.statuses.mark(deviceId);
      this.#hashes.set(pod.uid, workload.hash);
    }
    this.#o.restarts.observe(workload);
  }

  /**
   * Puts a tombstone in the device's document and resolves once the broker holds it; a pod the
   * device never got is reported deleted at once.
   * @throws ProviderError Transient when the broker does not take the document in time.
   */
  async delete(pod: PodRef, gracePeriodSeconds: number): Promise<void> {
    const deviceId = this.#o.desired.deviceOf(pod.uid);
    this.#o.orphans.claim(pod.uid);
    this.#o.restarts.forget(pod.uid);
    this.#hashes.delete(pod.uid);
    if (deviceId === undefined) {
      this.#o.deleted(pod);
      return;
    }
    const outcome = await this.#o.desired.tombstone(deviceId, pod, gracePeriodSeconds);
    this.#o.statuses.forget(pod.uid);
    if (outcome === "dropped") this.#o.deleted(pod);
  }

  /** Forgets what this holds for a pod of a decommissioned device. */
  forget(ref: PodRef): void {
    this.#o.statuses.forget(ref.uid);
    this.#o.restarts.forget(ref.uid);
    this.#hashes.delete(ref.uid);
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

  /**
   * Pods in the devices' documents; tombstoned ones first (a live pod of the same name wins).
   * `nodeName` is the device id. `hash` is the engine's workload hash when this process was given
   * it; for pods read back from the broker it is the device-facing hash, so the engine calls
   * updatePod once for each, which publishes nothing when the device already has that content.
   */
  list(): ProviderPod[] {
    this.#o.orphans.listed();
    const out: ProviderPod[] = [];
    const devices = [...this.#o.desired.devices()];
    const hash = (uid: string, fallback: string) => this.#hashes.get(uid) ?? fallback;
    for (const d of devices)
      for (const t of d.tombstones.values())
        out.push({
          pod: t.ref,
          nodeName: d.deviceId,
          hash: hash(t.ref.uid, t.hash),
          terminationGracePeriodSeconds: t.tombstone.gracePeriodSeconds,
        });
    for (const d of devices)
      for (const p of d.pods.values())
        out.push({
          pod: p.ref,
          nodeName: d.deviceId,
          hash: hash(p.ref.uid, p.desired.hash),
          // A pod deleted while devicelet was down is stopped with the grace its spec gave it.
          terminationGracePeriodSeconds: p.desired.terminationGracePeriodSeconds,
        });
    return out;
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
      this.#o.logger.warn({ deviceId, reason: refused }, "reported address ignored as pod IP");
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
