/**
 * What devicelet has observed of each device's handling of its desired documents: the latest
 * accepted report and the highest generation acknowledged per stage, for the epoch devicelet
 * publishes in. `deliveryOf` turns that into the delivery stage of one pod (or tombstone) from the
 * first generation that carried it as it is now (`since`).
 *
 * A report's generations are both of its `epoch` (docs/protocol.md § 4): `appliedGeneration` is 0
 * after an epoch change until a document of the new epoch is applied. A report whose
 * `appliedGeneration` is above its `observedGeneration` carries an earlier epoch's over, and is
 * read as "nothing of this epoch applied" ({@link appliedOf}). A rejection is known from the ack
 * or, level-triggered and so also after a devicelet restart, from the report's `rejection`.
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
  readonly #onChange: ((deviceId: string, o: DeviceObservation) => void) | undefined;

  /** `onChange`: told after every report and every ack recorded (delivery latency metrics). */
  constructor(onChange?: (deviceId: string, o: DeviceObservation) => void) {
    this.#onChange = onChange;
  }

  get(deviceId: string): DeviceObservation | undefined {
    return this.#devices.get(deviceId);
  }

  /** Drops what was seen of a device (it was decommissioned). */
  forget(deviceId: string): void {
    this.#devices.delete(deviceId);
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
    const o = this.#entry(report.deviceId);
    o.report = report;
    this.#onChange?.(report.deviceId, o);
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
    this.#onChange?.(ack.deviceId, o);
    return true;
  }
}

/**
 * The generation of `report.epoch` the device has fully applied: its `appliedGeneration`, or 0 when
 * that is above `observedGeneration` (then it belongs to an earlier epoch).
 */
export const appliedOf = (report: ReportedDocument): number =>
  report.appliedGeneration > report.observedGeneration ? 0 : report.appliedGeneration;

/**
 * Whether the device acked a generation of `epoch` applied that its latest report does not show
 * yet. A device reports after every apply, so this lasts only as long as the report is on its way
 * (or the broker dropped it: reread.ts).
 */
export function reportBehindAck(o: DeviceObservation | undefined, epoch: string | undefined): boolean {
  const acks = o?.acks;
  if (epoch === undefined || acks?.epoch !== epoch || acks.applied === 0) return false;
  const report = o?.report?.epoch === epoch ? o.report : undefined;
  return (report ? appliedOf(report) : 0) < acks.applied;
}

/** The report's rejection, when it is of the newest document the device has seen. */
const reportedRejection = (report: ReportedDocument | undefined) =>
  report?.rejection?.generation === report?.observedGeneration ? report?.rejection : undefined;

/** Stage of the document that first carried an entry as it is now; "queued" until it went out. */
export function deliveryOf(
  since: Since | undefined,
  o: DeviceObservation | undefined,
): { delivery: Delivery; rejection?: { reason: string; message: string } } {
  if (!since || !o) return { delivery: "queued" };
  const acks = o.acks?.epoch === since.epoch ? o.acks : undefined;
  const report = o.report?.epoch === since.epoch ? o.report : undefined;
  const applied = Math.max(acks?.applied ?? 0, report ? appliedOf(report) : 0);
  const received = Math.max(acks?.received ?? 0, report?.observedGeneration ?? 0, applied);
  if (applied >= since.generation) return { delivery: "applied" };
  const fromReport = reportedRejection(report);
  const rejected =
    fromReport && fromReport.generation >= (acks?.rejected?.generation ?? 0) ? fromReport : acks?.rejected;
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
  appliedOf(report) >= since.generation &&
  !report.pods.some((p) => p.uid === uid);
