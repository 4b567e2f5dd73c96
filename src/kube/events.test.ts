import { ApiException } from "@kubernetes/client-node/dist/gen/apis/exception.js";
import { pino } from "pino";
import { describe, expect, it } from "vitest";
import type { EventInput, EventUpdate } from "./client.ts";
import { EVENT_WRITES_IN_FLIGHT, EventRecorder } from "./events.ts";
import { ClientClosedError } from "./transport.ts";
import { FakeClock } from "../base/fake-clock.ts";
import type { CoreEvent, ObjectReference } from "./types.ts";

const logger = pino({ level: "silent" });
const start = Date.UTC(2026, 10, 2, 10, 0, 0);
const podRef: ObjectReference = { kind: "Pod", apiVersion: "v1", namespace: "ns", name: "p", uid: "uid-p" };
const otherRef: ObjectReference = { kind: "Pod", apiVersion: "v1", namespace: "ns", name: "q", uid: "uid-q" };
const nodeRef: ObjectReference = { kind: "Node", apiVersion: "v1", name: "dev-1", uid: "uid-n" };

/** Records writes; holds Events by name like the API server would. */
class FakeEvents {
  readonly writes: string[] = [];
  readonly events = new Map<string, CoreEvent>();
  fail: Error | undefined;
  /** When set, creates wait here until the test lets them go (an API server slow to answer). */
  held: (() => void)[] | undefined;
  #n = 0;

  createEvent = async (e: EventInput): Promise<CoreEvent> => {
    this.writes.push(`create ${e.reason} count=${e.count ?? 1}`);
    if (this.held) await new Promise<void>((resolve) => this.held?.push(resolve));
    if (this.fail) return Promise.reject(this.fail);
    const name = `${e.involvedObject.name ?? ""}.${++this.#n}`;
    const event: CoreEvent = {
      metadata: { name, namespace: e.involvedObject.namespace ?? "default" },
      involvedObject: e.involvedObject,
      reason: e.reason,
      message: e.message,
      count: e.count,
      firstTimestamp: e.firstTimestamp,
      lastTimestamp: e.lastTimestamp,
    };
    this.events.set(name, event);
    return event;
  };

  patchEvent = (u: EventUpdate): Promise<CoreEvent> => {
    this.writes.push(`patch ${u.name} count=${u.count}`);
    const event = this.events.get(u.name);
    if (!event) return Promise.reject(new ApiException(404, "not found", "{}", {}));
    Object.assign(event, { count: u.count, lastTimestamp: u.lastTimestamp, message: u.message });
    return Promise.resolve(event);
  };
}

function setup(
  options: {
    maxWritesPerMinute?: number;
    qps?: number;
    burst?: number;
    maxInFlight?: number;
    logger?: typeof logger;
  } = {},
) {
  const clock = new FakeClock(start);
  const api = new FakeEvents();
  const recorder = new EventRecorder({ client: api, logger, clock, ...options });
  return { clock, api, recorder };
}

/** Lets every write that can end, end, and the writes they release start. */
async function settle(): Promise<void> {
  for (let i = 0; i < 10; i++) await new Promise((resolve) => setImmediate(resolve));
}

describe("EventRecorder", () => {
  it("creates one Event, then patches its count for repeats within the window", async () => {
    const { clock, api, recorder } = setup();
    recorder.warning(podRef, "DeviceOffline", "device went away");
    await recorder.flush();
    clock.advance(30_000);
    recorder.warning(podRef, "DeviceOffline", "device went away again");
    await recorder.flush();
    expect(api.writes).toEqual(["create DeviceOffline count=1", "patch p.1 count=2"]);
    const event = api.events.get("p.1");
    expect(event).toMatchObject({
      count: 2,
      message: "device went away again",
      firstTimestamp: "2026-11-02T10:00:00Z",
      lastTimestamp: "2026-11-02T10:00:30Z",
    });
  });

  it("keeps series apart by object and reason, and starts a new Event after the window", async () => {
    const { clock, api, recorder } = setup();
    recorder.normal(podRef, "Scheduled", "a");
    recorder.normal(podRef, "Started", "b");
    recorder.normal(otherRef, "Scheduled", "c");
    recorder.normal(nodeRef, "Registered", "d");
    await recorder.flush();
    clock.advance(11 * 60_000);
    recorder.normal(podRef, "Scheduled", "again");
    await recorder.flush();
    expect(api.writes).toEqual([
      "create Scheduled count=1",
      "create Started count=1",
      "create Scheduled count=1",
      "create Registered count=1",
      "create Scheduled count=1",
    ]);
  });

  it("lets go of series past their window and of idle objects' budgets, but not of what is still to write", async () => {
    const { clock, api, recorder } = setup({ maxWritesPerMinute: 1 });
    const gone = (i: number): ObjectReference => ({ ...podRef, name: `gone-${i}`, uid: `uid-gone-${i}` });
    for (let i = 0; i < 50; i++) recorder.warning(gone(i), "BackOff", "crashing");
    // The first object's budget is spent: its repeat waits for the budget to refill.
    recorder.warning(gone(0), "BackOff", "crashing again");
    await recorder.flush();
    expect(recorder.held()).toEqual({ series: 50, objects: 50 });
    clock.advance(5 * 60_000); // past the budgets' minute, within the series' window
    recorder.normal(podRef, "Started", "a");
    await recorder.flush();
    expect(recorder.held()).toEqual({ series: 51, objects: 1 });
    clock.advance(6 * 60_000); // past the window of the fifty
    recorder.normal(otherRef, "Started", "b");
    await recorder.flush();
    expect(recorder.held()).toEqual({ series: 2, objects: 1 });
    // The repeat held back was written before its series went: the count is right.
    expect(api.writes.filter((w) => w.startsWith("patch gone-0"))).toEqual(["patch gone-0.1 count=2"]);
  });

  it("keeps series of one reason apart (Started per container), each with its own count", async () => {
    const { api, recorder } = setup();
    recorder.record({
      object: podRef,
      type: "Normal",
      reason: "Started",
      message: "Started container a",
      series: "a",
    });
    recorder.record({
      object: podRef,
      type: "Normal",
      reason: "Started",
      message: "Started container b",
      series: "b",
    });
    await recorder.flush();
    recorder.record({
      object: podRef,
      type: "Normal",
      reason: "Started",
      message: "Started container a",
      series: "a",
    });
    await recorder.flush();
    expect(api.writes).toEqual(["create Started count=1", "create Started count=1", "patch p.1 count=2"]);
    expect([...api.events.values()].map((e) => e.message)).toEqual([
      "Started container a",
      "Started container b",
    ]);
  });

  it("folds records made while a write is in flight into the next write", async () => {
    const { api, recorder } = setup();
    for (let i = 0; i < 5; i++) recorder.warning(podRef, "BadReport", `report ${i}`);
    await recorder.flush();
    expect(api.writes).toEqual(["create BadReport count=1", "patch p.1 count=5"]);
    expect(api.events.get("p.1")?.message).toBe("report 4");
  });

  it("bounds writes per object per minute and writes the held-back count when the budget refills", async () => {
    const { clock, api, recorder } = setup({ maxWritesPerMinute: 2 });
    for (let i = 0; i < 10; i++) {
      recorder.warning(podRef, "BadReport", `report ${i}`);
      await recorder.flush();
    }
    expect(api.writes).toEqual(["create BadReport count=1", "patch p.1 count=2"]);
    // Another object has its own budget.
    recorder.warning(otherRef, "BadReport", "x");
    await recorder.flush();
    expect(api.writes).toHaveLength(3);
    clock.advance(30_000);
    await recorder.flush();
    expect(api.writes.at(-1)).toBe("patch p.1 count=10");
    expect(api.writes).toHaveLength(4);
  });

  it("bounds writes for the fleet: a burst at once, then qps a second, oldest first", async () => {
    const { clock, api, recorder } = setup();
    const pod = (i: number): ObjectReference => ({ ...podRef, name: `p${i}`, uid: `uid-${i}` });
    for (let i = 0; i < 250; i++) recorder.normal(pod(i), "TombstoneConfirmed", `device ${i}`);
    // Repeats of a waiting series go into its one write.
    recorder.normal(pod(200), "TombstoneConfirmed", "again");
    await recorder.flush();
    expect(api.writes).toHaveLength(100);
    clock.advance(1_000);
    await recorder.flush();
    expect(api.writes).toHaveLength(150);
    clock.advance(2_000);
    await recorder.flush();
    expect(api.writes).toHaveLength(250);
    const created = [...api.events.values()];
    expect(created.map((e) => e.involvedObject.name)).toEqual(Array.from({ length: 250 }, (_, i) => `p${i}`));
    expect(created.find((e) => e.involvedObject.name === "p200")?.count).toBe(2);
    // Idle, the budget fills up again to the burst.
    clock.advance(10_000);
    for (let i = 250; i < 400; i++) recorder.normal(pod(i), "TombstoneConfirmed", `device ${i}`);
    await recorder.flush();
    expect(api.writes).toHaveLength(350);
  });

  it("keeps at most 8 writes in flight while the API server is slow; the rest go as writes end, oldest first", async () => {
    const { api, recorder } = setup();
    api.held = [];
    const pod = (i: number): ObjectReference => ({ ...podRef, name: `p${i}`, uid: `uid-${i}` });
    for (let i = 0; i < 20; i++) recorder.normal(pod(i), "Started", `device ${i}`);
    await settle();
    expect(api.writes).toHaveLength(EVENT_WRITES_IN_FLIGHT);
    // A repeat of a waiting series folds into its one write.
    recorder.normal(pod(15), "Started", "again");
    // No timer lets the line go (the fleet has tokens): a write that ends does, one for one.
    api.held.splice(0, 3).forEach((release) => release());
    await settle();
    expect(api.writes).toHaveLength(EVENT_WRITES_IN_FLIGHT + 3);
    expect(api.held).toHaveLength(EVENT_WRITES_IN_FLIGHT);
    while (api.held.length > 0) {
      api.held.splice(0).forEach((release) => release());
      await settle();
    }
    await recorder.flush();
    expect(api.writes).toHaveLength(20);
    const created = [...api.events.values()];
    expect(created.map((e) => e.involvedObject.name)).toEqual(Array.from({ length: 20 }, (_, i) => `p${i}`));
    expect(created.find((e) => e.involvedObject.name === "p15")?.count).toBe(2);
  });

  it("waits for both a token and a place in flight", async () => {
    const { clock, api, recorder } = setup({ qps: 1, burst: 2, maxInFlight: 1 });
    api.held = [];
    recorder.normal(podRef, "Started", "1");
    recorder.normal(otherRef, "Started", "1");
    recorder.normal(nodeRef, "DeviceOnline", "1");
    await settle();
    expect(api.writes).toEqual(["create Started count=1"]);
    // The second has its token, not a place; when the first ends it goes at once.
    api.held.splice(0).forEach((release) => release());
    await settle();
    expect(api.writes).toHaveLength(2);
    // The third has neither: its place comes first, its token a second later.
    api.held.splice(0).forEach((release) => release());
    await settle();
    expect(api.writes).toHaveLength(2);
    clock.advance(1_000);
    await settle();
    expect(api.writes).toEqual([
      "create Started count=1",
      "create Started count=1",
      "create DeviceOnline count=1",
    ]);
    api.held.splice(0).forEach((release) => release());
    await recorder.flush();
    expect(api.events.size).toBe(3);
  });

  it("gives a fleet token back when the object's own budget holds the series", async () => {
    const { clock, api, recorder } = setup({ maxWritesPerMinute: 1, qps: 1, burst: 1 });
    recorder.warning(podRef, "BadReport", "1");
    recorder.warning(otherRef, "BadReport", "1");
    recorder.warning(podRef, "BadReport", "2");
    await recorder.flush();
    expect(api.writes).toEqual(["create BadReport count=1"]);
    clock.advance(1_000);
    await recorder.flush();
    expect(api.writes).toEqual(["create BadReport count=1", "create BadReport count=1"]);
    // p's turn in the fleet's line comes at 2 s, but p has spent its minute: the token goes back.
    clock.advance(1_000);
    await recorder.flush();
    expect(api.writes).toHaveLength(2);
    recorder.warning(nodeRef, "DeviceOffline", "x");
    await recorder.flush();
    expect(api.writes.at(-1)).toBe("create DeviceOffline count=1");
    // p's repeat goes when its object budget refills (and the fleet has a token).
    clock.advance(60_000);
    await recorder.flush();
    expect(api.writes.at(-1)).toBe("patch p.1 count=2");
    expect(api.writes).toHaveLength(4);
  });

  it("writes nothing held in the fleet's line after close", async () => {
    const { clock, api, recorder } = setup({ qps: 1, burst: 1 });
    recorder.warning(podRef, "BadReport", "1");
    recorder.warning(otherRef, "BadReport", "1");
    await recorder.close();
    clock.advance(5_000);
    await recorder.flush();
    expect(api.writes).toEqual(["create BadReport count=1"]);
  });

  it("creates a new Event when the old one expired", async () => {
    const { api, recorder } = setup();
    recorder.warning(podRef, "BadReport", "x");
    await recorder.flush();
    api.events.clear();
    recorder.warning(podRef, "BadReport", "y");
    await recorder.flush();
    expect(api.writes).toEqual(["create BadReport count=1", "patch p.1 count=2", "create BadReport count=2"]);
  });

  it("never throws when the API server fails, and writes again on the next record", async () => {
    const { api, recorder } = setup();
    api.fail = new Error("down");
    recorder.warning(podRef, "BadReport", "x");
    await recorder.flush();
    api.fail = undefined;
    recorder.warning(podRef, "BadReport", "y");
    await recorder.flush();
    expect(api.writes).toEqual(["create BadReport count=1", "create BadReport count=2"]);
  });

  it("warns of a failed write, but not of one the API client's closing cut short (devicelet stopping)", async () => {
    const lines: { level: number; msg: string }[] = [];
    const watching = pino(
      { level: "debug" },
      { write: (line: string) => void lines.push(JSON.parse(line) as { level: number; msg: string }) },
    );
    const { api, recorder } = setup({ logger: watching });
    api.fail = new Error("down");
    recorder.warning(podRef, "BadReport", "x");
    await recorder.flush();
    api.fail = new ClientClosedError("create", "events", new Error("The client is closed"));
    recorder.warning(otherRef, "BadReport", "y");
    await recorder.flush();
    expect(lines.filter((l) => l.level >= 40).map((l) => l.msg)).toEqual(["event write failed"]);
    expect(lines.map((l) => l.msg)).toContain("event not written: devicelet is stopping");
  });

  it("truncates long messages and stops after close", async () => {
    const { clock, api, recorder } = setup({ maxWritesPerMinute: 1 });
    recorder.warning(podRef, "Long", "x".repeat(5000));
    await recorder.flush();
    expect(api.events.get("p.1")?.message).toHaveLength(1024);
    recorder.warning(podRef, "Long", "held back");
    await recorder.close();
    clock.advance(120_000);
    recorder.warning(podRef, "Long", "after close");
    await recorder.flush();
    expect(api.writes).toEqual(["create Long count=1"]);
    expect(clock.pending).toBe(0);
  });
});
