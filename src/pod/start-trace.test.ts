import { describe, expect, it } from "vitest";
import { MAX_FOLLOWED, PodStartTrace, type PodStartStage } from "./start-trace.ts";

function setup() {
  let now = 1_000;
  const observed: [PodStartStage, number][] = [];
  const trace = new PodStartTrace(
    (stage, seconds) => observed.push([stage, seconds]),
    () => now,
  );
  return { trace, observed, at: (ms: number) => (now = ms) };
}

describe("PodStartTrace", () => {
  it("observes every stage once the Running status is written, then forgets the pod", () => {
    const t = setup();
    t.trace.seen("a", 400);
    t.at(1_020);
    t.trace.creating("a");
    t.at(1_021);
    t.trace.created("a");
    t.at(1_300);
    t.trace.reported("a");
    t.trace.reported("a"); // a second report changes nothing
    t.at(1_400);
    expect(t.trace.written("a")).toEqual({
      boundMs: 400,
      seenMs: 1_000,
      creatingMs: 1_020,
      createdMs: 1_021,
      reportedMs: 1_300,
      writtenMs: 1_400,
    });
    expect(t.trace.written("a")).toBeUndefined(); // observed once
    expect(t.observed).toEqual([
      ["watch", 0.6],
      ["queue", 0.02],
      ["provider", 0.001],
      ["device", 0.28],
      ["status", 0.1],
    ]);
    expect(t.trace.size).toBe(0);
  });

  it("takes a Running pushed before createPod returned as the device's time, overlapping the call", () => {
    const t = setup();
    t.trace.seen("a");
    t.trace.creating("a");
    t.at(1_060);
    t.trace.reported("a"); // the device was faster than the broker's acknowledgement
    t.at(1_100);
    t.trace.created("a");
    t.at(1_150);
    t.trace.written("a");
    expect(t.observed).toEqual([
      ["queue", 0],
      ["provider", 0.1],
      ["device", 0.06],
      ["status", 0.05],
    ]);
  });

  it("keeps the first time of a stage that is retried", () => {
    const t = setup();
    t.trace.seen("a");
    t.at(1_010);
    t.trace.creating("a");
    t.at(1_500); // createPod failed and was retried
    t.trace.creating("a");
    t.trace.created("a");
    t.trace.reported("a");
    t.trace.written("a");
    expect(t.observed.find(([stage]) => stage === "provider")).toEqual(["provider", 0.49]);
  });

  it("observes nothing for a pod it did not see start, or whose Running was not pushed", () => {
    const t = setup();
    t.trace.creating("adopted");
    t.trace.created("adopted");
    t.trace.reported("adopted");
    t.trace.written("adopted");
    t.trace.seen("polled");
    t.trace.creating("polled");
    t.trace.created("polled");
    expect(t.trace.written("polled")).toBeUndefined(); // no pushed report: no device/status split
    expect(t.observed).toEqual([]);
    expect(t.trace.size).toBe(0);
  });

  it("forgets a released pod and follows at most MAX_FOLLOWED at once", () => {
    const t = setup();
    t.trace.seen("gone");
    t.trace.forget("gone");
    t.trace.creating("gone");
    t.trace.created("gone");
    t.trace.reported("gone");
    t.trace.written("gone");
    expect(t.observed).toEqual([]);
    for (let i = 0; i < MAX_FOLLOWED + 10; i++) t.trace.seen(`p${i}`);
    expect(t.trace.size).toBe(MAX_FOLLOWED);
  });
});
