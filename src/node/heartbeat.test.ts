import type { Logger } from "pino";
import { describe, expect, it, vi } from "vitest";
import { HeartbeatLoad } from "./heartbeat.ts";
import { STATUS_MEAN_INTERVAL_SHARE } from "./status-writer.ts";

describe("HeartbeatLoad", () => {
  const config = { leaseRenewIntervalSeconds: 10, statusMaxIntervalSeconds: 300, heartbeatQps: 200 };

  it("counts each node's Lease renewals and its status rewrites at their mean interval", () => {
    const load = new HeartbeatLoad({ config, logger: { warn: vi.fn() } as unknown as Logger });
    // 1,000 nodes: 100 renewals a second, and 1,000 rewrites in 262.5 s (seven eighths of 300).
    expect(STATUS_MEAN_INTERVAL_SHARE).toBe(0.875);
    expect(load.load(1_000)).toBeCloseTo((100 + 1_000 / 262.5) / 200, 6);
  });

  it("warns once above 80 % of the lane's QPS, and again only after it fell below", () => {
    const warn = vi.fn();
    const load = new HeartbeatLoad({ config, logger: { warn } as unknown as Logger });
    load.check(1_500); // 0.78
    expect(warn).not.toHaveBeenCalled();
    load.check(1_600); // 0.83
    load.check(1_700);
    expect(warn).toHaveBeenCalledTimes(1);
    expect(warn.mock.calls[0]?.[0]).toMatchObject({ nodes: 1_600, heartbeatLoad: 0.83, qps: 200 });
    load.check(1_000);
    load.check(1_600);
    expect(warn).toHaveBeenCalledTimes(2);
  });
});
