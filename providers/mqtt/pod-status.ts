/**
 * Pod status for the MQTT provider: {@link podStatus} puts together what status-map.ts needs for
 * one pod (presence, delivery stage, the device's report) and adds what only this provider knows
 * (a pod held back, a document too large for the device); {@link StatusCoalescer} pushes statuses
 * to the engine when they may have changed — per device, coalesced over a few milliseconds, and
 * only those that differ from what was last pushed.
 */
import type { WorkloadStatus } from "../../src/provider/types.ts";
import type { DeviceDesired, PodEntry } from "./desired.ts";
import type { Presence } from "./devices.ts";
import { deliveryOf, type DeviceObservation } from "./observations.ts";
import { workloadStatusFor } from "./status-map.ts";

export interface PodStatusInput {
  readonly entry: PodEntry;
  readonly device: DeviceDesired | undefined;
  readonly presence: Presence;
  readonly wakeAt: string | undefined;
  readonly observation: DeviceObservation | undefined;
  readonly now: Date;
}

/** The status of one pod the provider holds. Never Running before the device reports it so. */
export function podStatus(input: PodStatusInput): WorkloadStatus {
  const { entry, observation } = input;
  const apps = entry.desired.apps;
  const { delivery, rejection } = deliveryOf(entry.since, observation);
  const report = observation?.report;
  const status = workloadStatusFor({
    pod: entry.ref,
    desiredHash: entry.desired.hash,
    appNames: apps.map((a) => a.name),
    images: Object.fromEntries(apps.map((a) => [a.name, a.image])),
    presence: input.presence,
    ...(input.wakeAt === undefined ? {} : { wakeAt: input.wakeAt }),
    delivery,
    ...(rejection === undefined ? {} : { rejection }),
    ...(report ? { reported: report.pods.find((p) => p.uid === entry.ref.uid) } : {}),
    ...(report?.address === undefined ? {} : { address: report.address }),
    now: input.now,
  });
  // Held back or unsendable: the device will not get this version, say why (unless it runs it).
  const why =
    entry.blocked ?? entry.deferred ?? (entry.since === undefined ? input.device?.unsendable : undefined);
  if (why && status.phase !== "Running") {
    return {
      ...status,
      phase: "Pending",
      reason: why.reason,
      message: why.message,
      apps: status.apps.map((a) =>
        a.state.kind === "waiting"
          ? { ...a, state: { kind: "waiting", reason: why.reason, message: why.message } }
          : a,
      ),
    };
  }
  return status;
}

/** Everything of a status the engine shows, without the observation time. */
export const statusSignature = (s: WorkloadStatus): string =>
  JSON.stringify([s.phase, s.reason, s.message, s.deviceConnected, s.podIP, s.apps]);

export interface StatusCoalescerOptions {
  readonly delayMs: number;
  /** Current statuses of a device's pods. */
  readonly statusesOf: (deviceId: string) => readonly WorkloadStatus[];
  /** Pushes a status; false when nobody listens yet (it is then pushed again later). */
  readonly emit: (status: WorkloadStatus) => boolean;
  /** Looks at the device's stages before its statuses are read (stages.ts); default nothing. */
  readonly observe?: (deviceId: string) => void;
}

export class StatusCoalescer {
  readonly #o: StatusCoalescerOptions;
  readonly #dirty = new Set<string>();
  readonly #last = new Map<string, string>();
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;

  constructor(options: StatusCoalescerOptions) {
    this.#o = options;
  }

  /** A device's pods may have changed status. */
  mark(deviceId: string): void {
    if (this.#stopped) return;
    this.#dirty.add(deviceId);
    this.#timer ??= setTimeout(() => {
      this.#timer = undefined;
      this.flush();
    }, this.#o.delayMs);
  }

  /** Pushes what changed now. */
  flush(): void {
    const devices = [...this.#dirty];
    this.#dirty.clear();
    for (const deviceId of devices) {
      this.#o.observe?.(deviceId);
      for (const status of this.#o.statusesOf(deviceId)) {
        const signature = statusSignature(status);
        if (this.#last.get(status.pod.uid) === signature) continue;
        if (this.#o.emit(status)) this.#last.set(status.pod.uid, signature);
      }
    }
  }

  forget(uid: string): void {
    this.#last.delete(uid);
  }

  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
  }
}
