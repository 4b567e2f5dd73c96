import { chmod, mkdtemp, readFile, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { isInvalidInput } from "../../src/provider/errors.ts";
import { createMockProvider } from "./index.ts";
import { REMOVED_CREATES_KEPT } from "./provider.ts";
import type { PersistedState } from "./state-file.ts";
import { record, refOf, silentLogger, workload } from "./testing.ts";

let file: string;
beforeEach(async () => {
  file = join(await mkdtemp(join(tmpdir(), "devicelet-mock-")), "state.json");
  vi.useFakeTimers({ now: new Date("2026-01-01T00:00:00Z") });
});
afterEach(() => {
  vi.useRealTimers();
});

const readState = async () => JSON.parse(await readFile(file, "utf8")) as PersistedState;

describe("mock state file", () => {
  it("lets a restarted provider adopt its pods without creating anything twice", async () => {
    const first = createMockProvider({ devices: { count: 2 }, stateFile: file }, { logger: silentLogger });
    await first.start(new AbortController().signal);
    const [w1, w2, w3] = [workload("one", "mock-0"), workload("two", "mock-1"), workload("three", "mock-1")];
    await first.createPod(w1);
    await first.createPod(w2);
    await vi.advanceTimersByTimeAsync(200);
    first.setConnected("mock-1", false);
    await first.createPod(w3); // queued
    await first.deletePod(w2.pod, { gracePeriodSeconds: 30 }); // tombstone, written before it resolves
    expect((await readState()).pods.find((p) => p.workload.pod.name === "two")?.tombstone).toEqual({
      gracePeriodSeconds: 30,
    });
    await first.createPod(workload("four", "mock-0"));
    // The debounced write happens by itself; no stop() — as after a SIGKILL.
    await vi.advanceTimersByTimeAsync(50);
    await vi.waitFor(
      async () => {
        expect((await readState()).pods).toHaveLength(4);
      },
      { timeout: 10_000 },
    );
    vi.clearAllTimers(); // the first process is gone

    const second = createMockProvider({ devices: { count: 2 }, stateFile: file }, { logger: silentLogger });
    const rec = record(second);
    await second.start(new AbortController().signal);
    expect((await second.listPods()).map((p) => p.pod.name).sort()).toEqual(["four", "one", "three", "two"]);
    // Still running, since its original start: nothing was re-applied.
    expect(await second.getPodStatus(w1.pod)).toMatchObject({
      phase: "Running",
      apps: [
        expect.objectContaining({
          state: { kind: "running", startedAt: new Date("2026-01-01T00:00:00.200Z") },
        }),
      ],
    });
    await second.createPod(w1);
    await second.createPod(w3);
    // The queued pod reaches its (now online) device once; the tombstone is carried out.
    await vi.advanceTimersByTimeAsync(200);
    expect(rec.last("three")).toMatchObject({ phase: "Running" });
    expect(rec.deleted).toEqual([refOf(w2)]);
    expect(second.stats()).toMatchObject({
      creates: 4,
      createsByUid: { "uid-one": 1, "uid-two": 1, "uid-three": 1, "uid-four": 1 },
      applied: 4, // one, two, four by the first process; three by the second
      noops: 2,
      pods: 3,
    });
    await second.stop();
    const state = await readState();
    expect(state.pods.map((p) => p.workload.pod.name).sort()).toEqual(["four", "one", "three"]);
    expect(state.pods.every((p) => p.running?.hash === p.workload.hash)).toBe(true);
  });

  it("reads a file that kept every removed pod's count, and writes back only the last ones", async () => {
    const held = workload("held", "mock-0");
    const removed = Object.fromEntries(
      Array.from({ length: REMOVED_CREATES_KEPT + 10 }, (_, i) => [`uid-gone-${i}`, 1]),
    );
    const old = {
      version: 1,
      pods: [{ workload: held }],
      createsByUid: { ...removed, "uid-held": 2 },
      counters: { applied: 0, updates: 0, deletes: 0 }, // no total of creates yet
    };
    await writeFile(file, JSON.stringify(old));
    const provider = createMockProvider({ stateFile: file }, { logger: silentLogger });
    await provider.start(new AbortController().signal);
    const { creates, createsByUid } = provider.stats();
    expect(creates).toBe(REMOVED_CREATES_KEPT + 12); // every count the file had
    expect(createsByUid["uid-held"]).toBe(2); // kept on the held pod
    expect(createsByUid).not.toHaveProperty("uid-gone-9");
    expect(createsByUid).toHaveProperty("uid-gone-10");
    await provider.stop();
    const state = await readState();
    expect(Object.keys(state.createsByUid)).toHaveLength(REMOVED_CREATES_KEPT + 1);
    expect(state.counters.creates).toBe(REMOVED_CREATES_KEPT + 12);
  });

  it("refuses a state file it cannot understand rather than starting empty", async () => {
    await writeFile(file, "{ not json");
    const provider = createMockProvider({ stateFile: file }, { logger: silentLogger });
    await expect(provider.start(new AbortController().signal)).rejects.toSatisfy(isInvalidInput);
    await writeFile(file, JSON.stringify({ version: 9 }));
    await expect(provider.start(new AbortController().signal)).rejects.toThrow(/unknown format/);
  });

  it("writes the state file (it holds Secret values) owner-only, even over a leftover temporary file", async () => {
    const leftover = `${file}.${process.pid}.tmp`;
    await writeFile(leftover, "{}");
    await chmod(leftover, 0o666);
    const provider = createMockProvider({ stateFile: file }, { logger: silentLogger });
    const abort = new AbortController();
    await provider.start(abort.signal);
    await provider.createPod(workload("x", "mock-0"));
    abort.abort();
    await provider.stop();
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect((await readState()).createsByUid).toEqual({ "uid-x": 1 });
  });

  it("flushes on abort", async () => {
    const provider = createMockProvider({ stateFile: file }, { logger: silentLogger });
    const abort = new AbortController();
    await provider.start(abort.signal);
    await provider.createPod(workload("x", "mock-0"));
    abort.abort();
    await provider.stop(); // the same promise the abort started
    expect((await readState()).createsByUid).toEqual({ "uid-x": 1 });
  });
});
