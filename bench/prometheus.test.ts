import { describe, expect, it } from "vitest";
import { histograms, quantile, since, summarize } from "./prometheus.ts";

const text = [
  "# HELP devicelet_pod_start_stage_seconds x",
  "# TYPE devicelet_pod_start_stage_seconds histogram",
  'devicelet_pod_start_stage_seconds_bucket{le="0.01",stage="queue"} 50',
  'devicelet_pod_start_stage_seconds_bucket{le="0.1",stage="queue"} 100',
  'devicelet_pod_start_stage_seconds_bucket{le="+Inf",stage="queue"} 100',
  'devicelet_pod_start_stage_seconds_sum{stage="queue"} 2',
  'devicelet_pod_start_stage_seconds_count{stage="queue"} 100',
  'devicelet_pod_start_stage_seconds_bucket{le="0.01",stage="device"} 0',
  'devicelet_pod_start_stage_seconds_bucket{le="0.1",stage="device"} 1',
  'devicelet_pod_start_stage_seconds_bucket{le="+Inf",stage="device"} 2',
  'devicelet_pod_start_stage_seconds_sum{stage="device"} 3',
  'devicelet_pod_start_stage_seconds_count{stage="device"} 2',
  'devicelet_pod_start_seconds_bucket{le="+Inf"} 7',
  "devicelet_pod_start_seconds_count 7",
].join("\n");

describe("histograms", () => {
  it("reads each labelled histogram and none of a longer name", () => {
    const stages = histograms(text, "devicelet_pod_start_stage_seconds", "stage");
    expect([...stages.keys()]).toEqual(["queue", "device"]);
    expect(stages.get("queue")).toEqual({
      count: 100,
      sum: 2,
      buckets: [
        { le: 0.01, count: 50 },
        { le: 0.1, count: 100 },
        { le: Number.POSITIVE_INFINITY, count: 100 },
      ],
    });
    expect(histograms(text, "devicelet_pod_start_seconds").get("")?.count).toBe(7);
  });

  it("interpolates quantiles inside a bucket and stops at the highest finite bound", () => {
    const stages = histograms(text, "devicelet_pod_start_stage_seconds", "stage");
    const queue = stages.get("queue");
    if (!queue) throw new Error("no queue stage");
    expect(quantile(queue, 0.5)).toBeCloseTo(0.01);
    expect(quantile(queue, 0.75)).toBeCloseTo(0.055);
    expect(summarize(stages.get("device"))).toEqual({ count: 2, meanMs: 1500, p50Ms: 100, p99Ms: 100 });
    expect(summarize(undefined).count).toBe(0);
  });
});

describe("since", () => {
  it("subtracts an earlier scrape, bucket by bucket, and counts a new series from zero", () => {
    const before = histograms(
      [
        'devicelet_pod_start_stage_seconds_bucket{le="0.01",stage="queue"} 40',
        'devicelet_pod_start_stage_seconds_bucket{le="0.1",stage="queue"} 60',
        'devicelet_pod_start_stage_seconds_bucket{le="+Inf",stage="queue"} 60',
        'devicelet_pod_start_stage_seconds_sum{stage="queue"} 0.5',
        'devicelet_pod_start_stage_seconds_count{stage="queue"} 60',
      ].join("\n"),
      "devicelet_pod_start_stage_seconds",
      "stage",
    );
    const after = histograms(text, "devicelet_pod_start_stage_seconds", "stage");
    const delta = since(after, before);
    expect(delta.get("queue")).toEqual({
      count: 40,
      sum: 1.5,
      buckets: [
        { le: 0.01, count: 10 },
        { le: 0.1, count: 40 },
        { le: Number.POSITIVE_INFINITY, count: 40 },
      ],
    });
    expect(delta.get("device")).toEqual(after.get("device"));
    // All 40 new observations are above 0.01 s, 30 of them in (0.01, 0.1]: p50 inside that bucket.
    expect(summarize(delta.get("queue")).p50Ms).toBeGreaterThan(10);
  });
});
