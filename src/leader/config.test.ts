/**
 * The `leaderElection` section: its defaults, and the rules that keep a failover inside the node
 * leases (src/config/rules.ts), each problem listed at once.
 */
import { describe, expect, it } from "vitest";
import { mockConfigSchema } from "../../providers/mock/schema.ts";
import { ConfigError, parseConfig } from "../config/index.ts";
import { leaderIdentity } from "./run.ts";

const problemsOf = (text: string): string[] => {
  try {
    parseConfig(`provider: { type: mock }\n${text}`, "leader.yaml", {
      providerSchemas: { mock: mockConfigSchema },
    });
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems.map((p) => `${p.path}: ${p.message}`);
  }
  return [];
};

describe("leaderElection configuration", () => {
  it("accepts client-go's defaults with the default node lease", () => {
    expect(problemsOf("leaderElection: { enabled: true }")).toEqual([]);
  });

  it("checks nothing while disabled", () => {
    expect(problemsOf("leaderElection: { leaseDurationSeconds: 1, renewDeadlineSeconds: 9 }")).toEqual([]);
  });

  it("lists every broken relation at once", () => {
    expect(
      problemsOf(
        "leaderElection: { enabled: true, leaseDurationSeconds: 30, renewDeadlineSeconds: 30, retryPeriodSeconds: 25 }\n" +
          "lease: { durationSeconds: 40 }",
      ),
    ).toEqual([
      "/leaderElection/renewDeadlineSeconds: must be less than /leaderElection/leaseDurationSeconds (30)",
      "/leaderElection/retryPeriodSeconds: must be less than /leaderElection/renewDeadlineSeconds (30) divided by 1.2 (client-go's jitter factor)",
      "/leaderElection/leaseDurationSeconds: plus /leaderElection/retryPeriodSeconds × 2.2 (85) must be less than /lease/durationSeconds (40), so a standby takes over before any node goes NotReady",
    ]);
  });

  it("refuses a failover that would not fit inside a short node lease", () => {
    expect(
      problemsOf(
        "leaderElection: { enabled: true }\nlease: { durationSeconds: 19, renewIntervalSeconds: 5 }",
      ),
    ).toEqual([
      "/leaderElection/leaseDurationSeconds: plus /leaderElection/retryPeriodSeconds × 2.2 (19.4) must be less than /lease/durationSeconds (19), so a standby takes over before any node goes NotReady",
    ]);
    expect(
      problemsOf(
        "leaderElection: { enabled: true }\nlease: { durationSeconds: 20, renewIntervalSeconds: 5 }",
      ),
    ).toEqual([]);
  });

  it("takes the identity from the config, else $POD_NAME, else the host name and pid", () => {
    expect(leaderIdentity("given", { POD_NAME: "pod-a" }, "host", 7)).toBe("given");
    expect(leaderIdentity("", { POD_NAME: "pod-a" }, "host", 7)).toBe("pod-a");
    expect(leaderIdentity("", {}, "host", 7)).toBe("host_7");
  });
});
