import { describe, expect, it } from "vitest";
import type { ReportedDocument } from "../../src/protocol/types.ts";
import { TestMetrics } from "../../src/testing/context.ts";
import { Observations, type DesiredAck } from "./observations.ts";
import { MqttMetrics } from "./metrics.ts";
import { DesiredLatency } from "./provider-metrics.ts";

const ack = (generation: number, stage: DesiredAck["stage"], epoch = "e1"): DesiredAck => ({
  protocol: 1,
  kind: "ack",
  deviceId: "gw-1",
  bootId: "b1",
  seq: generation * 10 + (stage === "applied" ? 1 : 0),
  epoch,
  generation,
  stage,
  ...(stage === "rejected" ? { reason: "Bad", message: "bad" } : {}),
});

const report = (observed: number, applied: number): ReportedDocument => ({
  protocol: 1,
  kind: "reported",
  deviceId: "gw-1",
  bootId: "b1",
  seq: 100 + observed,
  observedAt: new Date(0).toISOString(),
  epoch: "e1",
  observedGeneration: observed,
  appliedGeneration: applied,
  pods: [],
});

describe("DesiredLatency", () => {
  it("times each document from issue to received and to applied, once each", () => {
    const seen = new TestMetrics();
    let now = 0;
    const latency = new DesiredLatency(seen, () => now);
    const observations = new Observations((id, o) => latency.observed(id, o));
    latency.published("gw-1", "e1", 1, 0);
    now = 200;
    observations.ack(ack(1, "received"), "e1");
    observations.ack(ack(1, "received"), "e1"); // repeated: counted once
    now = 1500;
    observations.ack(ack(1, "applied"), "e1");
    observations.report(report(1, 1)); // the same again by report: already counted
    expect(seen.delivered).toEqual([0.2]);
    expect(seen.applied).toEqual([1.5]);
  });

  it("times a document's issue from the first change it carries, and not when that is unknown", () => {
    const seen = new TestMetrics();
    const latency = new DesiredLatency(seen, () => 0);
    latency.published("gw-1", "e1", 1, 1_030, 1_000);
    latency.published("gw-1", "e1", 2, 2_000);
    expect(seen.issued).toEqual([0.03]);
  });

  it("counts a superseded document as applied with the newer one, and drops a rejected one", () => {
    const seen = new TestMetrics();
    let now = 0;
    const latency = new DesiredLatency(seen, () => now);
    const observations = new Observations((id, o) => latency.observed(id, o));
    latency.published("gw-1", "e1", 1, 0);
    latency.published("gw-1", "e1", 2, 1000);
    now = 3000;
    // The device skipped generation 1 and applied 2 (docs/protocol.md § 4), said by its report.
    observations.report(report(2, 2));
    expect(seen.applied.sort((a, b) => a - b)).toEqual([2, 3]);
    expect(seen.delivered.sort((a, b) => a - b)).toEqual([2, 3]);

    latency.published("gw-1", "e1", 3, 3000);
    now = 3500;
    observations.ack(ack(3, "rejected"), "e1");
    latency.published("gw-1", "e1", 4, 4000);
    now = 5000;
    observations.ack(ack(4, "applied"), "e1");
    // Generation 3 was delivered (and rejected), never applied: only 4 counts as applied.
    expect(seen.applied.sort((a, b) => a - b)).toEqual([1, 2, 3]);
    expect(seen.delivered.sort((a, b) => a - b)).toEqual([0.5, 1, 2, 3]);
  });

  it("forgets documents of an earlier epoch, and keeps nothing without a sink", () => {
    const seen = new TestMetrics();
    const latency = new DesiredLatency(seen, () => 10_000);
    const observations = new Observations((id, o) => latency.observed(id, o));
    latency.published("gw-1", "e0", 5, 0);
    latency.published("gw-1", "e1", 1, 9000);
    observations.ack(ack(5, "applied", "e0"), "e0");
    expect(seen.applied).toEqual([]);
    observations.ack(ack(1, "applied"), "e1");
    expect(seen.applied).toEqual([1]);

    const silent = new DesiredLatency(undefined);
    silent.published("gw-1", "e1", 1, 0);
    expect(() => silent.observed("gw-1", observations.get("gw-1"))).not.toThrow();
  });
});

describe("MqttMetrics", () => {
  it("tells devicelet's metrics of rejected messages and expired commands, and of nothing else", () => {
    const sink = new TestMetrics();
    const metrics = new MqttMetrics(sink);
    metrics.reject("schema");
    metrics.reject("not-json");
    metrics.inc("commandsExpired");
    metrics.inc("commandsSent");
    metrics.inc("received", 5);
    expect(sink.rejected).toEqual(["schema", "not-json"]);
    expect(sink.expired).toBe(1);
    expect(metrics.snapshot().rejected.schema).toBe(1);
  });
});
