import { describe, expect, it } from "vitest";
import {
  hasDeviceInventory,
  hasStatusNotifier,
  type PodRef,
  type ProviderPod,
  type Workload,
  type WorkloadStatus,
} from "../provider/types.ts";
import { CallRecorder } from "./engine-recorder.ts";

const ref = (uid: string): PodRef => ({ namespace: "ns", name: `p-${uid}`, uid });
const workload = (uid: string, hash: string): Workload => ({
  pod: { ...ref(uid), labels: {}, annotations: {} },
  nodeName: "n",
  deviceId: "d",
  restartPolicy: "Always",
  terminationGracePeriodSeconds: 30,
  apps: [],
  hash,
});
const status = (uid: string, running: boolean): WorkloadStatus => ({
  pod: ref(uid),
  phase: "Pending",
  apps: [
    {
      name: "app",
      state: running ? { kind: "running", startedAt: new Date(0) } : { kind: "waiting", reason: "Queued" },
      ready: running,
      restartCount: 0,
      image: "i",
    },
  ],
  deviceConnected: true,
  observedAt: new Date(0),
});

/** A provider with private state, as classes are: the recorder must call it on itself. */
class Toy {
  readonly name = "toy";
  readonly supports = [];
  readonly #held = new Map<string, string>();
  #emit: ((s: WorkloadStatus) => void) | undefined;
  createPod(w: Workload) {
    this.#held.set(w.pod.uid, w.hash);
    return Promise.resolve();
  }
  updatePod(w: Workload) {
    return this.createPod(w);
  }
  deletePod(pod: PodRef, _options: { gracePeriodSeconds: number }) {
    this.#held.delete(pod.uid);
    return Promise.resolve();
  }
  getPodStatus(pod: PodRef) {
    return Promise.resolve(this.#held.has(pod.uid) ? status(pod.uid, true) : undefined);
  }
  listPods(): Promise<readonly ProviderPod[]> {
    return Promise.resolve([...this.#held].map(([uid, hash]) => ({ pod: ref(uid), nodeName: "n", hash })));
  }
  notifyStatus(callback: (s: WorkloadStatus) => void) {
    this.#emit = callback;
  }
  emit(s: WorkloadStatus) {
    this.#emit?.(s);
  }
}

describe("CallRecorder", () => {
  it("records writes and deletes, and passes every call through to the provider", async () => {
    const recorder = new CallRecorder();
    const toy = new Toy();
    const provider = recorder.wrap(toy);
    await provider.createPod(workload("a", "h1"));
    await provider.updatePod(workload("a", "h2"));
    await provider.createPod(workload("b", "h3"));
    await provider.deletePod(ref("b"), { gracePeriodSeconds: 0 });
    expect(recorder.writes.map((w) => [w.method, w.uid, w.hash])).toEqual([
      ["createPod", "a", "h1"],
      ["updatePod", "a", "h2"],
      ["createPod", "b", "h3"],
    ]);
    expect(recorder.deletes).toEqual(["b"]);
    expect(recorder.lastHash("a")).toBe("h2");
    expect(recorder.lastHash("c")).toBeUndefined();
    expect(await provider.listPods()).toEqual([{ pod: ref("a"), nodeName: "n", hash: "h2" }]);
  });

  it("sees running apps in pushed and polled statuses alike", async () => {
    const recorder = new CallRecorder();
    const toy = new Toy();
    const provider = recorder.wrap(toy);
    const pushed: WorkloadStatus[] = [];
    if (!hasStatusNotifier(provider)) throw new Error("capability lost");
    provider.notifyStatus((s) => pushed.push(s));
    toy.emit(status("queued", false));
    toy.emit(status("pushed", true));
    expect(pushed.map((s) => s.pod.uid)).toEqual(["queued", "pushed"]);
    await provider.createPod(workload("polled", "h"));
    await provider.getPodStatus(ref("polled"));
    expect(["queued", "pushed", "polled"].map((uid) => recorder.everRunning(uid))).toEqual([
      false,
      true,
      true,
    ]);
  });

  it("keeps the provider's capabilities as the engine's guards see them", () => {
    const provider = new CallRecorder().wrap(new Toy());
    expect(hasStatusNotifier(provider)).toBe(true);
    expect(hasDeviceInventory(provider)).toBe(false);
    expect(provider.name).toBe("toy");
  });
});
