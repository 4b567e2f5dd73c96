/**
 * What devicelet has observed of each device's handling of its desired documents: the latest
 * accepted report and the highest generation acknowledged per stage, for the epoch devicelet
 * publishes in. `deliveryOf` turns that into the delivery stage of one pod (or tombstone) from the
 * first generation that carried it as it is now (`since`).
 *
 *   obs.ack(ack, publishedEpoch);              // false when the ack is for another epoch
 *   deliveryOf(since, obs.get("gw-1"));        // { delivery: "applied" }
 */
import type { AckMessage, ReportedDocument } from "../../src/protocol/types.ts";
import type { Since } from "./desired.ts";

export type DesiredAck = Extract<AckMessage, { kind: "ack" }>;

export interface DeviceObservation {
  report: ReportedDocument | undefined;
  acks:
    | {
        epoch: string;
        received: number;
        applied: number;
        rejected: { generation: number; reason: string; message: string } | undefined;
      }
    | undefined;
}

export type Delivery = "queued" | "received" | "applied" | "rejected";

export class Observations {
  readonly #devices = new Map<string, DeviceObservation>();

  get(deviceId: string): DeviceObservation | undefined {
    return this.#devices.get(deviceId);
  }

  #entry(deviceId: string): DeviceObservation {
    let o = this.#devices.get(deviceId);
    if (!o) {
      o = { report: undefined, acks: undefined };
      this.#devices.set(deviceId, o);
    }
    return o;
  }

  report(report: ReportedDocument): void {
    this.#entry(report.deviceId).report = report;
  }

  /**
   * Records a desired-document ack. Acks of an epoch other than the one devicelet publishes in
   * (`epoch`) are stale: returns false for them.
   */
  ack(ack: DesiredAck, epoch: string | undefined): boolean {
    if (epoch === undefined || ack.epoch !== epoch) return false;
    const o = this.#entry(ack.deviceId);
    if (o.acks?.epoch !== epoch) o.acks = { epoch, received: 0, applied: 0, rejected: undefined };
    const a = o.acks;
    a.received = Math.max(a.received, ack.generation);
    if (ack.stage === "applied") a.applied = Math.max(a.applied, ack.generation);
    if (ack.stage === "rejected" && ack.generation >= (a.rejected?.generation ?? 0)) {
      a.rejected = {
        generation: ack.generation,
        reason: ack.reason ?? "Rejected",
        message: ack.message ?? "the device rejected the desired document",
      };
    }
    return true;
  }
}

/** Stage of the document that first carried an entry as it is now; "queued" until it went out. */
export function deliveryOf(
  since: Since | undefined,
  o: DeviceObservation | undefined,
): { delivery: Delivery; rejection?: { reason: string; message: string } } {
  if (!since || !o) return { delivery: "queued" };
  const acks = o.acks?.epoch === since.epoch ? o.acks : undefined;
  const report = o.report?.epoch === since.epoch ? o.report : undefined;
  const applied = Math.max(acks?.applied ?? 0, report?.appliedGeneration ?? 0);
  const received = Math.max(acks?.received ?? 0, report?.observedGeneration ?? 0, applied);
  if (applied >= since.generation) return { delivery: "applied" };
  const rejected = acks?.rejected;
  if (rejected && rejected.generation >= since.generation && rejected.generation >= received)
    return { delivery: "rejected", rejection: { reason: rejected.reason, message: rejected.message } };
  if (received >= since.generation) return { delivery: "received" };
  return { delivery: "queued" };
}

/** Whether the device's report confirms a tombstone: applied at or after it, and the pod gone. */
export const tombstoneConfirmed = (
  since: Since | undefined,
  uid: string,
  report: ReportedDocument | undefined,
) =>
  since !== undefined &&
  report !== undefined &&
  report.epoch === since.epoch &&
  report.appliedGeneration >= since.generation &&
  !report.pods.some((p) => p.uid === uid);
