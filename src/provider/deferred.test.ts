import pino from "pino";
import { describe, expect, it } from "vitest";
import { deferCallbacks, engineView } from "./deferred.ts";
import { isTransient } from "./errors.ts";
import type { DeviceInfo, DeviceWatcher, PodRef, WorkloadStatus } from "./types.ts";

const ref: PodRef = { namespace: "ns", name: "p", uid: "u1" };

/** A provider (a class with private fields) that calls back from inside its own calls. */
class Eager {
  readonly name = "eager";
  readonly supports = [];
  #status?: (s: WorkloadStatus) => void;
  #watcher?: DeviceWatcher;
  #inside = false;
  readonly reentered: string[] = [];
  notifyStatus(cb: (s: WorkloadStatus) => void) {
    this.#status = cb;
  }
  watchDevices(watcher: DeviceWatcher) {
    this.#watcher = watcher;
  }
  async createPod(): Promise<void> {
    this.#inside = true;
    this.#status?.({ pod: ref, phase: "Pending", apps: [], deviceConnected: true, observedAt: new Date() });
    this.#watcher?.changed({ id: "d1" } as DeviceInfo);
    this.#watcher?.gone("d2");
    this.#inside = false;
    return Promise.resolve();
  }
  updatePod() {
    return this.#track("updatePod");
  }
  deletePod() {
    return this.#track("deletePod");
  }
  getPodStatus(pod: PodRef) {
    return this.#track(`getPodStatus ${pod.name}`).then(() => undefined);
  }
  listPods() {
    return Promise.resolve([]);
  }
  #track(call: string): Promise<void> {
    if (this.#inside) this.reentered.push(call);
    return Promise.resolve();
  }
}

describe("deferCallbacks", () => {
  it("runs the engine's handlers only after the provider's own call returned, in order", async () => {
    const eager = new Eager();
    const provider = deferCallbacks(eager, pino({ level: "silent" }));
    const seen: string[] = [];
    provider.notifyStatus((s) => {
      seen.push(`status ${s.phase}`);
      // What a controller does on a status: ask the provider again. Synchronously, this would
      // land inside createPod.
      void provider.getPodStatus(s.pod);
    });
    provider.watchDevices({
      changed: (d) => seen.push(`changed ${d.id}`),
      gone: (id) => seen.push(`gone ${id}`),
    });
    const call = provider.createPod();
    expect(seen).toEqual([]);
    await call;
    expect(seen).toEqual(["status Pending", "changed d1", "gone d2"]);
    expect(eager.reentered).toEqual([]);
  });

  it("keeps the provider's identity for everything else", () => {
    const eager = new Eager();
    const provider = deferCallbacks(eager, pino({ level: "silent" }));
    expect(provider).toBeInstanceOf(Eager);
    expect(provider.name).toBe("eager");
    expect(provider.reentered).toBe(eager.reentered);
  });

  it("logs a handler that throws instead of failing the provider's call", async () => {
    const lines: string[] = [];
    const logger = pino({ level: "error" }, { write: (line: string) => lines.push(line) });
    const provider = deferCallbacks(new Eager(), logger);
    provider.notifyStatus(() => {
      throw new Error("handler bug");
    });
    await provider.createPod();
    await Promise.resolve();
    expect(lines.join("")).toContain("handler bug");
  });
});

describe("engineView", () => {
  it("lets the calls in flight finish before close resolves, and refuses new ones", async () => {
    let finish: (() => void) | undefined;
    const calls: string[] = [];
    const slow = Object.assign(new Eager(), {
      deletePod: (pod: PodRef) => {
        calls.push(`delete ${pod.name}`);
        return new Promise<void>((resolve) => (finish = resolve));
      },
    });
    const view = engineView(slow, pino({ level: "silent" }));
    const inFlight = view.provider.deletePod(ref);
    let closed = false;
    const closing = view.close(60_000).then(() => (closed = true));
    await new Promise<void>((resolve) => setImmediate(resolve));
    expect(closed).toBe(false);
    await expect(view.provider.getPodStatus(ref)).rejects.toSatisfy(isTransient);
    finish?.();
    await inFlight;
    await closing;
    expect(calls).toEqual(["delete p"]);
  });

  it("does not wait for ever for a call that hangs", async () => {
    const hung = Object.assign(new Eager(), { listPods: () => new Promise<never>(() => undefined) });
    const view = engineView(hung, pino({ level: "silent" }));
    void view.provider.listPods();
    await view.close(20);
    await expect(view.provider.listPods()).rejects.toThrow(/devicelet is stopping/);
  });
});
