/**
 * runElected against the in-memory API server (real time, the shortest valid timings: lease 3 s,
 * renew deadline 2 s, retry 1 s): a standby never starts its term; on SIGTERM the leader's term
 * stops before the lease is released, and the standby then takes over; a leader whose lease is
 * taken stops its term at once and its `done` rejects with LeadershipLostError.
 */
import pino from "pino";
import { describe, expect, it } from "vitest";
import { mockConfigSchema } from "../../providers/mock/schema.ts";
import { FakeKube } from "../../test/support/fake-kube.ts";
import { eventually } from "../../test/support/eventually.ts";
import { parseConfig } from "../config/index.ts";
import type { KubeClient } from "../kube/index.ts";
import { LeadershipLostError, runElected } from "./run.ts";

const logger = pino({ level: process.env.DEVICELET_TEST_LOG ?? "silent" });
const namespace = "devicelet-system";
const config = (identity: string) =>
  parseConfig(
    [
      "provider: { type: mock }",
      `state: { namespace: ${namespace} }`,
      "health: { serve: false }",
      "metrics: { serve: false }",
      `leaderElection: { enabled: true, identity: ${identity}, leaseDurationSeconds: 3, renewDeadlineSeconds: 2, retryPeriodSeconds: 1 }`,
    ].join("\n"),
    "leader.yaml",
    { providerSchemas: { mock: mockConfigSchema } },
  );

/** The fake, with the state namespace existing (the fake serves no namespaces). */
function apiServer(): { fake: FakeKube; kube: KubeClient } {
  const fake = new FakeKube();
  const kube = new Proxy(fake, {
    get(target, prop) {
      if (prop === "list") {
        return (p: string, ...rest: Parameters<FakeKube["list"]> extends [string, ...infer R] ? R : never) =>
          p === "/api/v1/namespaces"
            ? Promise.resolve({ items: [{ metadata: { name: namespace } }], resourceVersion: "1" })
            : target.list(p, ...rest);
      }
      const value: unknown = Reflect.get(target, prop);
      return typeof value === "function" ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
  return { fake, kube };
}

/** One replica: its term records what happened to it, in order, with the lease holder at the time. */
function replica(kube: KubeClient, fake: FakeKube, identity: string) {
  const events: string[] = [];
  const stop = new AbortController();
  const holder = () => fake.object("leases", `${namespace}/devicelet`)?.spec?.holderIdentity ?? "";
  let finishTerm: () => void = () => undefined;
  let termSignal: AbortSignal | undefined;
  const running = runElected(
    {
      config: config(identity),
      logger,
      kube,
      createKube: () => kube,
      lead: (_term, signal) => {
        termSignal = signal;
        events.push("lead");
        const done = new Promise<void>((resolve) => {
          finishTerm = () => {
            events.push(`term stopped, holder ${holder()}`);
            resolve();
          };
        });
        signal.addEventListener("abort", () => events.push(`signal aborted, holder ${holder()}`));
        return Promise.resolve({ done });
      },
      onLeadingChange: (leading) => events.push(`leading ${leading}`),
    },
    stop.signal,
  );
  running.catch(() => undefined);
  return { events, stop, running, finishTerm: () => finishTerm(), termSignal: () => termSignal };
}

describe("runElected", () => {
  it("stands by, and on SIGTERM the leader stops its term before it releases the lease", async () => {
    const { fake, kube } = apiServer();
    const a = replica(kube, fake, "a");
    const engineA = await a.running;
    const b = replica(kube, fake, "b");
    // b stands by through several of a's renewals.
    const renewed = () => fake.object("leases", `${namespace}/devicelet`)?.spec?.renewTime ?? "";
    const first = renewed();
    await eventually(() => expect(renewed()).not.toBe(first), { timeoutMs: 10_000 });
    expect(b.events).toEqual([]);

    a.stop.abort(new Error("SIGTERM"));
    await eventually(() => expect(a.events).toContain("signal aborted, holder a"));
    // The lease stays a's while its term is still stopping.
    expect(b.events).toEqual([]);
    a.finishTerm();
    await engineA.done;
    expect(a.events).toEqual([
      "leading true",
      "lead",
      "signal aborted, holder a",
      "term stopped, holder a",
      "leading false",
    ]);
    // Released: b takes over at its next retry.
    await eventually(() => expect(b.events).toEqual(["leading true", "lead"]), { timeoutMs: 5_000 });
    b.stop.abort(new Error("SIGTERM"));
    b.finishTerm();
    await (
      await b.running
    ).done;
  }, 30_000);

  it("a leader whose lease is taken stops its term at once, and done rejects with LeadershipLostError", async () => {
    const { fake, kube } = apiServer();
    const a = replica(kube, fake, "a");
    const engineA = await a.running;
    const lease = fake.object("leases", `${namespace}/devicelet`);
    fake.apply("leases", { ...lease, spec: { ...lease?.spec, holderIdentity: "intruder" } });
    await eventually(() => expect(a.termSignal()?.aborted).toBe(true), { timeoutMs: 10_000 });
    a.finishTerm();
    await expect(engineA.done).rejects.toBeInstanceOf(LeadershipLostError);
    expect(a.events).toContain("leading false");
    // It does not campaign again: the intruder keeps the lease.
    expect(fake.object("leases", `${namespace}/devicelet`)?.spec?.holderIdentity).toBe("intruder");
  }, 30_000);

  it("a standby stopped before it leads rejects with the stop's reason and never leads", async () => {
    const { fake, kube } = apiServer();
    const a = replica(kube, fake, "a");
    const engineA = await a.running;
    const b = replica(kube, fake, "b");
    const reason = new Error("SIGTERM");
    b.stop.abort(reason);
    await expect(b.running).rejects.toBe(reason);
    expect(b.events).toEqual([]);
    a.stop.abort(new Error("SIGTERM"));
    a.finishTerm();
    await engineA.done;
  }, 30_000);
});
