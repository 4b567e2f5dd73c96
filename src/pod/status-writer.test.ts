/**
 * StatusWriter: a status is written only when it changed, compared with what this process last
 * wrote until the cached pod shows that write, and with the cache from then on; a write is held
 * only until the cache shows it.
 */
import pino from "pino";
import { describe, expect, it } from "vitest";
import type { Pod, PodStatus, PodStatusPatch } from "../kube/index.ts";
import { StatusWriter } from "./status-writer.ts";
import { OWN_CONTAINER_ID, waitingForDeviceStatus } from "./status.ts";

const ref = { namespace: "ns", name: "p", uid: "uid-1" };

/** A pod as the cache has it at `resourceVersion`, with `status`. */
const cached = (resourceVersion: string, status?: PodStatus): Pod => ({
  metadata: { namespace: "ns", name: "p", uid: "uid-1", resourceVersion },
  spec: { nodeName: "dev-1", containers: [{ name: "app", image: "app:1" }] },
  ...(status ? { status } : {}),
});

const running = (message: string): PodStatus => ({
  phase: "Running",
  reason: "",
  message,
  conditions: [{ type: "Ready", status: "True", lastTransitionTime: "2026-03-01T12:00:00Z" }],
});

/** A writer over a fake API server that answers each status patch with the next resourceVersion. */
function writer(options: { resourceVersions: () => string }) {
  const patches: PodStatusPatch[] = [];
  const counters = { statusWrites: 0 };
  const w = new StatusWriter({
    kube: {
      patchPodStatus: (patch) => {
        patches.push(patch);
        return Promise.resolve({ metadata: { resourceVersion: options.resourceVersions() } });
      },
    },
    logger: pino({ level: "silent" }),
    counters,
  });
  return { w, patches, counters };
}

describe("StatusWriter", () => {
  it("sends the pod's own container IDs where a status made from the cached one holds the cache's marker", async () => {
    const { w, patches } = writer({ resourceVersions: () => "12" });
    // A Terminating pod's status keeps its containers as the cache has them: the marker for the ID.
    const app = {
      name: "app",
      image: "app:1",
      imageID: "device://app:1",
      containerID: OWN_CONTAINER_ID,
      ready: true,
      restartCount: 0,
      state: { running: { startedAt: "2026-03-01T12:00:00Z" } },
    };
    const pod = cached("11", { ...running("up"), containerStatuses: [app] });
    const built = waitingForDeviceStatus(pod, { message: "waiting", now: new Date("2026-03-01T12:01:00Z") });
    await w.write(w.latest(pod), ref, built);
    expect(patches).toHaveLength(1);
    expect(patches[0]?.status.containerStatuses?.[0]?.containerID).toBe("device://ns/p/app");
    expect(JSON.stringify(patches[0])).not.toContain(OWN_CONTAINER_ID);
    // The cached pod is left as it was.
    expect(pod.status?.containerStatuses?.[0]?.containerID).toBe(OWN_CONTAINER_ID);
  });

  it("never writes an unchanged status twice, whether or not the watch has caught up", async () => {
    let rv = 10;
    const { w, patches } = writer({ resourceVersions: () => String(++rv) });
    const stale = cached("10", { phase: "Pending", reason: "", message: "" });

    await w.write(w.latest(stale), ref, running("up"));
    expect(patches).toHaveLength(1);
    expect(w.size).toBe(1);
    // The watch has not delivered the write (rv 11): the pod is seen with the status written.
    expect(w.latest(stale).status).toEqual(running("up"));
    await w.write(w.latest(stale), ref, running("up"));
    expect(patches).toHaveLength(1);

    // The watch delivers it: the write is forgotten and the cache is the reference.
    const caughtUp = cached("11", running("up"));
    expect(w.latest(caughtUp)).toBe(caughtUp);
    expect(w.size).toBe(0);
    await w.write(w.latest(caughtUp), ref, running("up"));
    expect(patches).toHaveLength(1);

    await w.write(w.latest(caughtUp), ref, running("still up"));
    expect(patches).toHaveLength(2);
    expect(patches[1]?.status.message).toBe("still up");
    expect(w.size).toBe(1);
  });

  it("keeps a write while the cache is older, and forgets it on a newer version too", async () => {
    const { w, patches } = writer({ resourceVersions: () => "20" });
    await w.write(cached("10"), ref, running("up"));
    expect(w.latest(cached("19")).status).toEqual(running("up"));
    expect(w.size).toBe(1);
    // Another writer's change came after ours (rv 25): the cache has everything.
    const newer = cached("25", running("changed by someone else"));
    expect(w.latest(newer)).toBe(newer);
    expect(w.size).toBe(0);
    expect(patches).toHaveLength(1);
  });

  it("with resourceVersions that are not integers, only the same version counts as caught up", async () => {
    const { w } = writer({ resourceVersions: () => "b" });
    await w.write(cached("a"), ref, running("up"));
    expect(w.latest(cached("c")).status).toEqual(running("up"));
    expect(w.size).toBe(1);
    expect(w.latest(cached("b", running("up"))).status).toEqual(running("up"));
    expect(w.size).toBe(0);
  });

  it("release forgets a pod's write", async () => {
    const { w } = writer({ resourceVersions: () => "11" });
    await w.write(cached("10"), ref, running("up"));
    w.release("uid-1");
    expect(w.size).toBe(0);
    expect(w.latest(cached("10")).status).toBeUndefined();
  });
});
