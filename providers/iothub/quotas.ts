/**
 * IoT Hub's operation throttles per tier and unit count, and devicelet's share of them: the rates its
 * client-side budgets (budget.ts) hold it to, so it stays inside the quota instead of meeting 429s.
 *
 * The hub's throttles (Microsoft's "IoT Hub quotas and throttling" page), per hub:
 *
 * | operation         | S1                 | S2                          | S3             |
 * | ----------------- | ------------------ | --------------------------- | -------------- |
 * | queries           | 20/min/unit        | 20/min/unit                 | 1,000/min/unit |
 * | twin reads        | 100/s              | higher of 100/s, 10/s/unit  | 500/s/unit     |
 * | twin updates      | 50/s               | higher of 50/s, 5/s/unit    | 250/s/unit     |
 * | direct methods    | 160 KB/s/unit      | 480 KB/s/unit               | 24 MB/s/unit   |
 *
 * Twin reads and updates count the devices' own twin traffic too (each connect reads the twin and
 * writes its will, birth, report and heartbeat), and direct methods are metered in 4 KB steps
 * (a command is well under 4 KB, so 160 KB/s is 40 calls/s). devicelet takes 80 % of the queries
 * (a person's or a tool's query still fits), half the twin reads and methods, and 40 % of the twin
 * updates: the devices' heartbeats and reports need the rest (1,000 devices heartbeating every
 * 60 s alone make 17 updates a second).
 *
 *   budgetRates({ tier: "S1", units: 1 });   // { queriesPerMinute: 16, twinReadsPerSecond: 50, ... }
 */
import type { IotHubTier } from "./schema.ts";

/** Allowed rates: queries per minute, the other classes per second. */
export interface OperationRates {
  readonly queriesPerMinute: number;
  readonly twinReadsPerSecond: number;
  readonly twinUpdatesPerSecond: number;
  readonly methodsPerSecond: number;
}

/** The hub's own throttles for a tier and unit count. */
export function hubThrottles(tier: IotHubTier, units: number): OperationRates {
  const u = Math.max(1, Math.floor(units));
  switch (tier) {
    case "S1":
      return {
        queriesPerMinute: 20 * u,
        twinReadsPerSecond: 100,
        twinUpdatesPerSecond: 50,
        methodsPerSecond: 40 * u,
      };
    case "S2":
      return {
        queriesPerMinute: 20 * u,
        twinReadsPerSecond: Math.max(100, 10 * u),
        twinUpdatesPerSecond: Math.max(50, 5 * u),
        methodsPerSecond: 120 * u,
      };
    case "S3":
      return {
        queriesPerMinute: 1000 * u,
        twinReadsPerSecond: 500 * u,
        twinUpdatesPerSecond: 250 * u,
        methodsPerSecond: 6000 * u,
      };
  }
}

/** devicelet's share of the hub's throttles; `overrides` (hub.budget) win where given. */
export function budgetRates(o: {
  readonly tier: IotHubTier;
  readonly units: number;
  readonly overrides?: Partial<OperationRates>;
}): OperationRates {
  const hub = hubThrottles(o.tier, o.units);
  const share = (value: number, fraction: number) => Math.max(1, Math.floor(value * fraction));
  return {
    queriesPerMinute: o.overrides?.queriesPerMinute ?? share(hub.queriesPerMinute, 0.8),
    twinReadsPerSecond: o.overrides?.twinReadsPerSecond ?? share(hub.twinReadsPerSecond, 0.5),
    twinUpdatesPerSecond: o.overrides?.twinUpdatesPerSecond ?? share(hub.twinUpdatesPerSecond, 0.4),
    methodsPerSecond: o.overrides?.methodsPerSecond ?? share(hub.methodsPerSecond, 0.5),
  };
}
