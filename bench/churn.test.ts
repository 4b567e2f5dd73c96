/** The churn bench's growth per round: a least-squares slope, so one high reading does not decide it. */
import { describe, expect, it } from "vitest";
import { podRequests, slope, snapshotBytes } from "./churn.ts";

describe("slope", () => {
  it("is the growth per step of a steady climb, and 0 when level or too short to tell", () => {
    expect(slope([100, 101, 102, 103])).toBeCloseTo(1);
    expect(slope([100, 100, 100])).toBe(0);
    expect(slope([100])).toBe(0);
    expect(slope([])).toBe(0);
  });

  it("weighs every round: one high reading in the middle moves it less than a last one would", () => {
    expect(slope([100, 110, 100, 100, 100])).toBeCloseTo(-1);
    expect(slope([100, 100, 100, 100, 110])).toBeCloseTo(2);
  });
});

describe("snapshotBytes", () => {
  it("adds up every object's own size, whatever the order of the node fields", () => {
    const meta = {
      node_fields: ["type", "name", "id", "self_size", "edge_count"],
      node_types: [["object"]] as [string[]],
      edge_fields: ["type", "name_or_index", "to_node"],
      edge_types: [["property"]] as [string[]],
    };
    const nodes = [0, 0, 1, 100, 0, 0, 0, 2, 24, 0, 0, 0, 3, 1_000, 0];
    expect(snapshotBytes({ snapshot: { meta }, nodes, edges: [], strings: [] })).toBe(1_124);
  });
});

describe("podRequests", () => {
  it("keeps the requests on pods and their subresources, and leaves out Leases, nodes and Events", () => {
    const byRequest = {
      "delete pods": 2_000,
      "patch pods/status": 1_990,
      "get pods": 3,
      "patch leases": 50,
      "patch nodes/status": 4,
      "create events": 7,
      "list podtemplates": 1,
    };
    expect(podRequests({ total: 0, byVerb: {}, byRequest, throttled: 0 })).toEqual({
      "delete pods": 2_000,
      "patch pods/status": 1_990,
      "get pods": 3,
    });
  });
});
