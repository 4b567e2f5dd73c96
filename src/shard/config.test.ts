/**
 * The `sharding` section: its defaults, exclusive with leader election, and leader election's
 * timing rules applied to the shard Leases.
 */
import { describe, expect, it } from "vitest";
import { mockConfigSchema } from "../../providers/mock/schema.ts";
import { ConfigError, parseConfig, type DeviceletConfig } from "../config/index.ts";

const parse = (text: string): DeviceletConfig =>
  parseConfig(`provider: { type: mock }\n${text}`, "shard.yaml", {
    providerSchemas: { mock: mockConfigSchema },
  });

const problemsOf = (text: string): string[] => {
  try {
    parse(text);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems.map((p) => `${p.path}: ${p.message}`);
  }
  return [];
};

describe("sharding configuration", () => {
  it("is off by default, with 64 shards on Leases prefixed devicelet", () => {
    expect(parse("").sharding).toEqual({ enabled: false, shards: 64, leasePrefix: "devicelet" });
    expect(parse("sharding: { enabled: true, shards: 8 }").sharding).toEqual({
      enabled: true,
      shards: 8,
      leasePrefix: "devicelet",
    });
  });

  it("refuses sharding together with leader election", () => {
    expect(problemsOf("sharding: { enabled: true }\nleaderElection: { enabled: true }")).toEqual([
      "/sharding/enabled: cannot be true with /leaderElection/enabled: sharding runs its own membership (set leaderElection.enabled to false)",
    ]);
  });

  it("checks leader election's timings when sharding uses them", () => {
    const timings = "leaderElection: { leaseDurationSeconds: 30, renewDeadlineSeconds: 30 }";
    expect(problemsOf(timings)).toEqual([]);
    expect(problemsOf(`sharding: { enabled: true }\n${timings}`)).toContain(
      "/leaderElection/renewDeadlineSeconds: must be less than /leaderElection/leaseDurationSeconds (30)",
    );
  });

  it("refuses a shard count out of range and a prefix that is not a DNS label", () => {
    expect(problemsOf("sharding: { shards: 0 }")).toHaveLength(1);
    expect(problemsOf("sharding: { leasePrefix: Dev_let }")).toHaveLength(1);
  });
});
