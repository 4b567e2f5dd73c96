import pino from "pino";
import { describe, expect, it, vi } from "vitest";
import type { KubeClient, Lease } from "../kube/index.ts";
import { systemClock } from "../base/clock.ts";
import { FakeClock } from "../base/fake-clock.ts";
import { ClientClosedError } from "../kube/transport.ts";
import { LeaseLog, LeaseRecovery, NodeLease } from "./lease.ts";

const alreadyExists = () =>
  Object.assign(new Error("already exists"), {
    code: 409,
    body: JSON.stringify({ reason: "AlreadyExists", code: 409 }),
  });
const notFound = () =>
  Object.assign(new Error("gone"), { code: 404, body: JSON.stringify({ reason: "NotFound", code: 404 }) });

type LeaseKube = Pick<KubeClient, "createLease" | "patchLeaseSpec">;

/** A lease store like the API server's: a patch of a missing lease is a 404, a second create a 409. */
function fakeKube() {
  let stored: Lease | undefined;
  let version = 0;
  const calls: string[] = [];
  const kube: LeaseKube = {
    createLease: async (lease) => {
      calls.push("create");
      if (stored) throw alreadyExists();
      stored = { ...lease, metadata: { ...lease.metadata, resourceVersion: String(++version) } };
      return structuredClone(stored);
    },
    patchLeaseSpec: async (_name, _namespace, spec) => {
      calls.push("patch");
      if (!stored) throw notFound();
      stored = {
        ...stored,
        metadata: { ...stored.metadata, resourceVersion: String(++version) },
        spec: { ...stored.spec, ...spec },
      };
      return structuredClone(stored);
    },
  };
  return {
    kube,
    calls,
    stored: () => stored,
    drop: () => (stored = undefined),
    put: (lease: Lease) => (stored = lease),
  };
}

const lease = (kube: LeaseKube, extra: { missing?: boolean } = {}) =>
  new NodeLease({
    kube,
    nodeName: "dev-1",
    nodeUid: () => "node-uid-1",
    durationSeconds: 40,
    renewIntervalSeconds: 10,
    logger: pino({ level: "silent" }),
    ...extra,
  });

describe("NodeLease", () => {
  it("creates the lease owned by its node, with a 40 s duration and a microsecond renewTime", async () => {
    const fake = fakeKube();
    await lease(fake.kube).renew();
    expect(fake.calls).toEqual(["patch", "create"]);
    const stored = fake.stored();
    expect(stored?.metadata?.ownerReferences).toEqual([
      { apiVersion: "v1", kind: "Node", name: "dev-1", uid: "node-uid-1" },
    ]);
    expect(stored?.spec?.leaseDurationSeconds).toBe(40);
    expect(stored?.spec?.holderIdentity).toBe("dev-1");
    expect(stored?.spec?.renewTime).toMatch(/\.\d{6}Z$/);
  });

  it("creates first when told the Lease is missing (a Node just created), and patches one that was there", async () => {
    const fake = fakeKube();
    const missing = (kube: LeaseKube) => lease(kube, { missing: true });
    const first = missing(fake.kube);
    await first.renew();
    await first.renew();
    expect(fake.calls).toEqual(["create", "patch"]);
    // A Lease left by an earlier Node of the same name, not yet collected: a 409, then patches.
    fake.calls.length = 0;
    await missing(fake.kube).renew();
    expect(fake.calls).toEqual(["create", "patch"]);
  });

  it("renews with one patch, also after a write that timed out but landed, and takes its lease back", async () => {
    const fake = fakeKube();
    const l = lease(fake.kube);
    await l.renew(); // patch (404), create
    // A renewal the server applied while devicelet gave up waiting: the lease moved on meanwhile,
    // which a replace with the old resourceVersion would meet as a conflict (re-read, write again).
    const timedOut = fake.kube.patchLeaseSpec;
    await expect(
      lease({
        ...fake.kube,
        patchLeaseSpec: async (...args) => {
          await timedOut(...args);
          throw new Error("patch leases: no answer from the API server in time");
        },
      }).renew(),
    ).rejects.toThrow("in time");
    const stored = fake.stored();
    if (stored) fake.put({ ...stored, spec: { ...stored.spec, holderIdentity: "someone-else" } });
    fake.calls.length = 0;
    await l.renew();
    expect(fake.calls).toEqual(["patch"]);
    expect(fake.stored()?.spec?.holderIdentity).toBe("dev-1");
    expect(l.renewals).toBe(2);
  });

  it("creates the lease again when it vanished (its node was deleted and collected), and patches one that appeared", async () => {
    const fake = fakeKube();
    const l = lease(fake.kube);
    await l.renew();
    fake.drop();
    fake.calls.length = 0;
    await l.renew();
    expect(fake.calls).toEqual(["patch", "create"]);
    expect(fake.stored()).toBeDefined();
    // Gone, then back (another replica of a sharded fleet created it): create meets 409, then patch.
    fake.drop();
    fake.calls.length = 0;
    const racing = lease({
      ...fake.kube,
      createLease: async (...args) => {
        fake.put({ metadata: { name: "dev-1", resourceVersion: "99" }, spec: { holderIdentity: "dev-1" } });
        return fake.kube.createLease(...args);
      },
    });
    await racing.renew();
    expect(fake.calls).toEqual(["patch", "create", "patch"]);
    expect(racing.renewals).toBe(1);
  });

  it("gives up one renewal after a bounded number of switches between patch and create", async () => {
    const calls: string[] = [];
    const l = lease({
      patchLeaseSpec: () => (calls.push("patch"), Promise.reject(notFound())),
      createLease: () => (calls.push("create"), Promise.reject(alreadyExists())),
    });
    await expect(l.renew()).rejects.toThrow();
    expect(calls).toEqual(["patch", "create", "patch", "create"]);
  });

  /**
   * A started lease whose writes fail while `failure()` returns an error; the caller aborts
   * the returned controller.
   */
  function startFlaky(
    fake: ReturnType<typeof fakeKube>,
    failure: () => Error | undefined,
    logger = pino({ level: "silent" }),
  ) {
    const controller = new AbortController();
    const lease = new NodeLease({
      kube: {
        ...fake.kube,
        patchLeaseSpec: async (...args: Parameters<typeof fake.kube.patchLeaseSpec>) => {
          const err = failure();
          if (err) throw err;
          return fake.kube.patchLeaseSpec(...args);
        },
      },
      nodeName: "dev-1",
      nodeUid: () => "node-uid-1",
      durationSeconds: 40,
      renewIntervalSeconds: 10,
      logger,
      firstDelayMs: 0,
    });
    lease.start(controller.signal);
    return { lease, controller };
  }

  it("keeps heartbeating when its first renewals fail, retrying within seconds", async () => {
    vi.useFakeTimers();
    try {
      const fake = fakeKube();
      let failures = 3;
      const unavailable = Object.assign(new Error("unavailable"), {
        code: 503,
        body: JSON.stringify({ reason: "ServiceUnavailable", code: 503 }),
      });
      const { lease: l, controller } = startFlaky(fake, () => (failures-- > 0 ? unavailable : undefined));
      // Three failures back off 0.5, 1 and 2 s (±20 %): well inside one interval.
      await vi.advanceTimersByTimeAsync(6_000);
      expect(l.renewals).toBe(1);
      expect(fake.stored()).toBeDefined();
      // And it goes on renewing every interval afterwards.
      await vi.advanceTimersByTimeAsync(25_000);
      expect(l.renewals).toBeGreaterThanOrEqual(3);
      controller.abort();
    } finally {
      vi.useRealTimers();
    }
  });

  it("takes a renewal cut short by the API client closing (devicelet stopping) for no failure", async () => {
    vi.useFakeTimers();
    try {
      const lines: string[] = [];
      const logger = pino({ level: "debug" }, { write: (line: string) => void lines.push(line) });
      const closed = new ClientClosedError("patch", "leases", new Error("The client is closed"));
      const { lease: l, controller } = startFlaky(fakeKube(), () => closed, logger);
      await vi.advanceTimersByTimeAsync(0);
      controller.abort();
      expect(l.renewals).toBe(0);
      expect(l.failing).toBe(false);
      expect(lines).toEqual([]);
    } finally {
      vi.useRealTimers();
    }
  });

  it("waits as long as a 429's Retry-After asks, but never past the renew interval", async () => {
    vi.useFakeTimers();
    try {
      let throttled = 1;
      const slowDown = Object.assign(new Error("slow down"), {
        code: 429,
        body: JSON.stringify({ reason: "TooManyRequests", code: 429, details: { retryAfterSeconds: 4 } }),
      });
      const { lease: l, controller } = startFlaky(fakeKube(), () => (throttled-- > 0 ? slowDown : undefined));
      await vi.advanceTimersByTimeAsync(3_500);
      expect(l.renewals).toBe(0);
      await vi.advanceTimersByTimeAsync(1_000);
      expect(l.renewals).toBe(1);
      controller.abort();
    } finally {
      vi.useRealTimers();
    }
  });

  it("renews every failing lease at once when one gets through again", async () => {
    vi.useFakeTimers();
    try {
      let down = true;
      const refused = () => Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" });
      const fakes = [fakeKube(), fakeKube()];
      const controller = new AbortController();
      const leases: NodeLease[] = [];
      for (const [i, fake] of fakes.entries()) {
        leases.push(
          new NodeLease({
            kube: {
              ...fake.kube,
              patchLeaseSpec: async (...args: Parameters<typeof fake.kube.patchLeaseSpec>) => {
                if (down) throw refused();
                return fake.kube.patchLeaseSpec(...args);
              },
            },
            nodeName: `dev-${i}`,
            nodeUid: () => `uid-${i}`,
            durationSeconds: 40,
            renewIntervalSeconds: 10,
            logger: pino({ level: "silent" }),
            firstDelayMs: i * 3_000,
            onRecovered: () => leases.forEach((l) => l.renewSoon()),
          }),
        );
      }
      for (const l of leases) l.start(controller.signal);
      // A minute of outage: both back off to their cap (5 s), and keep trying.
      await vi.advanceTimersByTimeAsync(60_000);
      expect(leases.map((l) => [l.failing, l.renewals])).toEqual([
        [true, 0],
        [true, 0],
      ]);
      down = false;
      // The first to try again gets through, and pulls the other along within a quarter second.
      const first = await new Promise<number>((resolve) => {
        const step = async (waited: number): Promise<void> => {
          await vi.advanceTimersByTimeAsync(50);
          if (leases.some((l) => l.renewals > 0)) resolve(waited);
          else await step(waited + 50);
        };
        void step(50);
      });
      expect(first).toBeLessThanOrEqual(6_000);
      await vi.advanceTimersByTimeAsync(300);
      expect(leases.map((l) => l.renewals)).toEqual([1, 1]);
      controller.abort();
    } finally {
      vi.useRealTimers();
    }
  });
});

describe("LeaseRecovery", () => {
  it("runs one renewSoon wave over the fleet per second, however many leases recover", () => {
    let now = 0;
    const clock = { ...systemClock, now: () => now };
    const calls = new Array<number>(5_000).fill(0);
    const leases = calls.map((_, i) => ({ renewSoon: () => void (calls[i] = (calls[i] ?? 0) + 1) }));
    const recovery = new LeaseRecovery(() => leases, clock);
    // A fleet back from an outage: every lease recovers within the same second.
    for (let i = 0; i < leases.length; i++) {
      now = i / 10;
      recovery.recovered();
    }
    expect(calls.every((c) => c === 1)).toBe(true);
    now = 1_000;
    recovery.recovered();
    expect(calls.every((c) => c === 2)).toBe(true);
  });
});

describe("LeaseLog", () => {
  function recorded() {
    interface Line {
      level: number;
      msg: string;
      node?: string;
      failures?: number;
      nodes?: number;
      some?: string[];
      lastError?: string;
    }
    const lines: Line[] = [];
    const logger = pino({ level: "info" }, { write: (line: string) => lines.push(JSON.parse(line) as Line) });
    return { lines, logger };
  }

  it("logs the first few failures of a window one by one and the rest of the fleet's in one line", () => {
    const { lines, logger } = recorded();
    const clock = new FakeClock();
    const log = new LeaseLog(logger, clock, { windowMs: 30_000, detailed: 5 });
    for (let i = 0; i < 1000; i++) log.failed(`n${i}`, 1, new Error("HTTP 503"));
    expect(lines.map((l) => l.node)).toEqual(["n0", "n1", "n2", "n3", "n4"]);
    clock.advance(30_000);
    expect(lines).toHaveLength(6);
    expect(lines[5]).toMatchObject({ level: 40, failures: 995, nodes: 995, lastError: "HTTP 503" });
    expect(lines[5]?.some).toEqual(["n5", "n6", "n7", "n8", "n9"]);
    // A new window has its own few lines; nothing is summed up when nothing was held back.
    log.failed("n0", 2, new Error("HTTP 503"));
    clock.advance(30_000);
    expect(lines).toHaveLength(7);
    expect(lines[6]).toMatchObject({ node: "n0", failures: 2 });
  });

  it("writes the open window's summary when flushed, once", () => {
    const { lines, logger } = recorded();
    const clock = new FakeClock();
    const log = new LeaseLog(logger, clock, { windowMs: 30_000, detailed: 1 });
    for (let i = 0; i < 4; i++) log.failed(`n${i}`, 1, new Error("HTTP 503"));
    log.recovered("n9", 2);
    log.recovered("n8", 2);
    log.flush();
    expect(lines.map((l) => [l.level, l.node ?? l.nodes])).toEqual([
      [40, "n0"],
      [30, "n9"],
      [40, 3],
      [30, 1],
    ]);
    // The window's timer was cleared with it: nothing is written twice.
    clock.advance(30_000);
    log.flush();
    expect(lines).toHaveLength(4);
  });

  it("counts only a node's first three failures in a row and every tenth after", () => {
    const { lines, logger } = recorded();
    const clock = new FakeClock();
    const log = new LeaseLog(logger, clock, { windowMs: 1_000_000, detailed: 100 });
    for (let failures = 1; failures <= 25; failures++) log.failed("n0", failures, new Error("timeout"));
    expect(lines.map((l) => l.failures)).toEqual([1, 2, 3, 10, 20]);
  });

  it("sums up recoveries past the first few, and a fleet of leases shares it", async () => {
    const { lines, logger } = recorded();
    const clock = new FakeClock();
    const log = new LeaseLog(logger, clock, { windowMs: 30_000, detailed: 2 });
    for (let i = 0; i < 10; i++) log.recovered(`n${i}`, 4);
    clock.advance(30_000);
    expect(lines.map((l) => [l.level, l.node ?? l.nodes])).toEqual([
      [30, "n0"],
      [30, "n1"],
      [30, 8],
    ]);
    // Leases given the log report to it, not to their own logger.
    lines.length = 0;
    const failing: LeaseKube = {
      createLease: () => Promise.reject(new Error("refused")),
      patchLeaseSpec: () => Promise.reject(new Error("refused")),
    };
    const stop = new AbortController();
    for (let i = 0; i < 10; i++) {
      new NodeLease({
        kube: failing,
        nodeName: `m${i}`,
        nodeUid: () => undefined,
        durationSeconds: 40,
        renewIntervalSeconds: 10,
        logger: pino({ level: "silent" }),
        log,
        firstDelayMs: 0,
        clock,
      }).start(stop.signal);
    }
    await clock.advanceAsync(1);
    await clock.settle();
    stop.abort();
    clock.advance(30_000);
    expect(lines.filter((l) => l.node !== undefined).map((l) => l.node)).toEqual(["m0", "m1"]);
    expect(lines.at(-1)).toMatchObject({ level: 40, failures: 8, nodes: 8, lastError: "refused" });
  });
});
