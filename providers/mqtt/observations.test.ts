/**
 * Delivery stages from acks and reports (docs/protocol.md § 4): both generations of a report are
 * of its epoch, and a rejection holds until the device sees a later generation.
 */
import { describe, expect, it } from "vitest";
import type { ReportedDocument } from "../../src/protocol/types.ts";
import { deliveryOf, Observations, tombstoneConfirmed, type DesiredAck } from "./observations.ts";

const report = (
  epoch: string,
  observedGeneration: number,
  appliedGeneration: number,
  extra: Partial<ReportedDocument> = {},
): ReportedDocument => ({
  protocol: 1,
  kind: "reported",
  deviceId: "gw-1",
  bootId: "b",
  seq: 1,
  observedAt: "2026-03-01T12:00:00Z",
  epoch,
  observedGeneration,
  appliedGeneration,
  pods: [],
  ...extra,
});

const ack = (generation: number, stage: DesiredAck["stage"]): DesiredAck => ({
  protocol: 1,
  kind: "ack",
  deviceId: "gw-1",
  bootId: "b",
  seq: 1,
  epoch: "e2",
  generation,
  stage,
  ...(stage === "rejected" ? { reason: "InsufficientMemory", message: "512Mi needed" } : {}),
});

const observed = (r: ReportedDocument) => {
  const o = new Observations();
  o.report(r);
  return o.get("gw-1");
};

describe("delivery across an epoch change", () => {
  const since = { epoch: "e2", generation: 3 };

  it("does not take an earlier epoch's applied generation for one of the new epoch", () => {
    // The device saw e2/3 but still runs what it applied of e1 (generation 700).
    const o = observed(report("e2", 3, 700));
    expect(deliveryOf(since, o).delivery).toBe("received");
    expect(tombstoneConfirmed(since, "gone", o?.report)).toBe(false);
  });

  it("counts the new epoch's applied generation once the device reports it", () => {
    const o = observed(report("e2", 3, 3));
    expect(deliveryOf(since, o).delivery).toBe("applied");
    expect(tombstoneConfirmed(since, "gone", o?.report)).toBe(true);
  });

  it("reads applied 0 of the new epoch as nothing applied yet", () => {
    expect(deliveryOf(since, observed(report("e2", 3, 0))).delivery).toBe("received");
  });
});

describe("rejected documents", () => {
  const since = { epoch: "e2", generation: 3 };
  const rejection = { generation: 3, reason: "InsufficientMemory", message: "512Mi needed" };

  it("shows a rejection the device reports, without an ack (e.g. after a devicelet restart)", () => {
    const o = observed(report("e2", 3, 2, { rejection }));
    expect(deliveryOf(since, o)).toEqual({
      delivery: "rejected",
      rejection: { reason: "InsufficientMemory", message: "512Mi needed" },
    });
  });

  it("ends the rejection once the device has seen a later generation", () => {
    const o = observed(report("e2", 4, 2));
    const acks = new Observations();
    acks.ack(ack(3, "rejected"), "e2");
    acks.report(report("e2", 4, 2));
    expect(deliveryOf(since, o).delivery).toBe("received");
    expect(deliveryOf(since, acks.get("gw-1")).delivery).toBe("received");
  });

  it("ignores a reported rejection of a generation other than the newest seen", () => {
    const o = observed(report("e2", 4, 2, { rejection }));
    expect(deliveryOf(since, o).delivery).toBe("received");
  });

  it("shows a redelivered rejected generation, acked again, as still rejected", () => {
    const o = new Observations();
    o.ack(ack(3, "received"), "e2");
    o.ack(ack(3, "rejected"), "e2");
    o.report(report("e2", 3, 2, { rejection }));
    o.ack(ack(3, "rejected"), "e2"); // the retained copy after a reconnect: the same answer
    expect(deliveryOf(since, o.get("gw-1")).delivery).toBe("rejected");
  });
});
