import type { V1Pod, V1PodStatus } from "../kube/types.ts";
import { describe, expect, it } from "vitest";
import type { AppStatus, WorkloadStatus } from "../provider/types.ts";
import type { Model, Plain } from "../workload/shape.ts";
import {
  buildFailedStatus,
  buildPodStatus,
  OWN_CONTAINER_ID,
  qosClassOf,
  statusChanged,
  withOwnContainerIds,
  type BuildPodStatusInput,
} from "./status.ts";

const scheduledAt = new Date("2026-11-01T09:59:58Z");
const t0 = new Date("2026-11-01T10:00:00.400Z");
const t1 = new Date("2026-11-01T10:01:00.000Z");
const t2 = new Date("2026-11-01T10:02:00.000Z");

const basePod: Plain<V1Pod> = {
  metadata: { name: "sensor", namespace: "ns", uid: "uid-1" },
  spec: {
    nodeName: "dev-1",
    containers: [
      { name: "app", image: "registry/sensor:1.2" },
      { name: "sidecar", image: "registry/log:3" },
    ],
  },
  status: {
    phase: "Pending",
    qosClass: "BestEffort",
    conditions: [{ type: "PodScheduled", status: "True", lastTransitionTime: scheduledAt }],
  },
};

const app = (name: string, over: Partial<AppStatus> = {}): AppStatus => ({
  name,
  state: { kind: "running", startedAt: t0 },
  ready: true,
  restartCount: 0,
  image: name === "app" ? "registry/sensor:1.2" : "registry/log:3",
  ...over,
});

const workload = (over: Partial<WorkloadStatus> = {}): WorkloadStatus => ({
  pod: { namespace: "ns", name: "sensor", uid: "uid-1" },
  phase: "Running",
  apps: [app("app"), app("sidecar")],
  deviceConnected: true,
  observedAt: t0,
  ...over,
});

const build = (over: Partial<BuildPodStatusInput> = {}) =>
  buildPodStatus({ pod: basePod, podIP: "10.250.0.7", hostIP: "192.0.2.10", now: t0, ...over });

const cond = (status: Plain<V1PodStatus>, type: string) => status.conditions?.find((c) => c.type === type);
const wire = <T>(v: T) => JSON.parse(JSON.stringify(v)) as Model<T>;

describe("buildPodStatus: phase", () => {
  it("is Pending with every container ContainerCreating before any workload status", () => {
    const s = build();
    expect(s.phase).toBe("Pending");
    expect(s.containerStatuses?.map((c) => [c.name, c.state, c.ready, c.restartCount, c.image])).toEqual([
      ["app", { waiting: { reason: "ContainerCreating" } }, false, 0, "registry/sensor:1.2"],
      ["sidecar", { waiting: { reason: "ContainerCreating" } }, false, 0, "registry/log:3"],
    ]);
    expect(cond(s, "Ready")).toMatchObject({ status: "False", reason: "ContainersNotReady" });
    expect(cond(s, "devicelet.dev/DeviceConnected")).toMatchObject({ status: "Unknown" });
  });

  it("shows an unreachable broker as DeviceConnected Unknown, keeping what the device last said", () => {
    const s = build({
      workload: workload(),
      deviceConnected: true,
      transport: { connected: false, message: "disconnected from mqtt://b for 40s" },
    });
    expect(s.phase).toBe("Running");
    expect(cond(s, "devicelet.dev/DeviceConnected")).toMatchObject({
      status: "Unknown",
      reason: "TransportDisconnected",
      message: "device presence unknown: disconnected from mqtt://b for 40s",
    });
    expect(cond(s, "Ready")?.status).toBe("True");
    const back = build({
      workload: workload(),
      deviceConnected: true,
      transport: { connected: true, message: "" },
    });
    expect(cond(back, "devicelet.dev/DeviceConnected")).toMatchObject({
      status: "True",
      reason: "DeviceOnline",
    });
  });

  it("is never Running unless the workload says so", () => {
    const queued = build({
      workload: workload({
        phase: "Pending",
        reason: "Queued",
        message: "device offline",
        apps: [],
        deviceConnected: false,
      }),
    });
    expect(queued.phase).toBe("Pending");
    expect([queued.reason, queued.message]).toEqual(["Queued", "device offline"]);
    expect(queued.containerStatuses?.[0]?.state).toEqual({
      waiting: { reason: "ContainerCreating", message: "device offline" },
    });
    const starting = build({ workload: workload({ phase: "Pending", apps: [app("app")] }) });
    expect(starting.phase).toBe("Pending");
    expect(cond(starting, "Ready")?.status).toBe("False");
  });

  it("is Running and Ready when the device runs every app ready", () => {
    const s = build({ workload: workload() });
    expect(s.phase).toBe("Running");
    expect([s.reason, s.message, s.initContainerStatuses]).toEqual(["", "", []]);
    expect(s.conditions?.map((c) => [c.type, c.status])).toEqual([
      ["Initialized", "True"],
      ["Ready", "True"],
      ["ContainersReady", "True"],
      ["PodScheduled", "True"],
      ["devicelet.dev/DeviceConnected", "True"],
    ]);
    expect(cond(s, "devicelet.dev/DeviceConnected")?.reason).toBe("DeviceOnline");
  });

  it("shows the pending reason on containers without an app", () => {
    const s = build({
      pending: { reason: "CreateContainerConfigError", message: 'configmap "cfg" not found' },
    });
    expect(s.phase).toBe("Pending");
    expect(s.containerStatuses?.[1]?.state).toEqual({
      waiting: { reason: "CreateContainerConfigError", message: 'configmap "cfg" not found' },
    });
  });

  it("ignores a workload status that belongs to an earlier pod of the same name", () => {
    const s = build({ workload: workload({ pod: { namespace: "ns", name: "sensor", uid: "old" } }) });
    expect(s.phase).toBe("Pending");
  });

  it("never leaves a terminal phase", () => {
    const done = { ...basePod, status: { ...basePod.status, phase: "Succeeded" } };
    expect(build({ pod: done, workload: workload({ phase: "Running" }) }).phase).toBe("Succeeded");
  });
});

describe("buildPodStatus: containers", () => {
  it("maps states, exit codes, restart counts and ids", () => {
    const crashed = app("app", {
      state: { kind: "waiting", reason: "CrashLoopBackOff", message: "back-off 20s" },
      lastState: {
        kind: "terminated",
        exitCode: 2,
        reason: "Error",
        startedAt: t0,
        finishedAt: t1,
        message: "boom",
      },
      ready: false,
      restartCount: 3,
    });
    const finished = app("sidecar", {
      state: { kind: "terminated", exitCode: 0, reason: "Completed", finishedAt: t1 },
      ready: true,
    });
    const s = build({ workload: workload({ apps: [crashed, finished] }) });
    expect(s.phase).toBe("Running");
    expect(s.containerStatuses).toEqual([
      {
        name: "app",
        image: "registry/sensor:1.2",
        imageID: "device://registry/sensor:1.2",
        containerID: "device://ns/sensor/app",
        state: { waiting: { reason: "CrashLoopBackOff", message: "back-off 20s" } },
        lastState: {
          terminated: {
            exitCode: 2,
            reason: "Error",
            message: "boom",
            startedAt: t0,
            finishedAt: t1,
            containerID: "device://ns/sensor/app",
          },
        },
        ready: false,
        started: false,
        restartCount: 3,
      },
      {
        name: "sidecar",
        image: "registry/log:3",
        imageID: "device://registry/log:3",
        containerID: "device://ns/sensor/sidecar",
        state: {
          terminated: {
            exitCode: 0,
            reason: "Completed",
            finishedAt: t1,
            containerID: "device://ns/sensor/sidecar",
          },
        },
        lastState: {},
        ready: false,
        started: false,
        restartCount: 0,
      },
    ]);
    expect(cond(s, "ContainersReady")).toMatchObject({
      status: "False",
      reason: "ContainersNotReady",
      message: "containers with unready status: [app sidecar]",
    });
  });

  it("lists containers in spec order even when the device reports them otherwise", () => {
    const s = build({ workload: workload({ apps: [app("sidecar"), app("stray"), app("app")] }) });
    expect(s.containerStatuses?.map((c) => c.name)).toEqual(["app", "sidecar"]);
  });

  it("terminates containers the device lost track of when the pod failed", () => {
    const running = build({ workload: workload() });
    const pod = { ...basePod, status: wire(running) };
    const s = buildPodStatus({
      pod,
      workload: workload({
        phase: "Failed",
        reason: "DeviceWiped",
        apps: [
          app("sidecar", { state: { kind: "terminated", exitCode: 1, reason: "Error", finishedAt: t1 } }),
        ],
      }),
      podIP: "10.250.0.7",
      hostIP: "192.0.2.10",
      now: t1,
    });
    expect(s.phase).toBe("Failed");
    expect(s.reason).toBe("DeviceWiped");
    expect(s.containerStatuses?.[0]?.state).toEqual({
      terminated: {
        exitCode: 137,
        reason: "ContainerStatusUnknown",
        message: "The container could not be located when the pod was terminated",
        startedAt: new Date("2026-11-01T10:00:00.400Z"),
      },
    });
    expect(s.containerStatuses?.[1]?.state?.terminated?.exitCode).toBe(1);
  });

  it("reports init containers as initializing, then done once the pod runs", () => {
    const pod: Plain<V1Pod> = {
      ...basePod,
      spec: {
        ...basePod.spec,
        containers: basePod.spec?.containers ?? [],
        initContainers: [{ name: "init", image: "i" }],
      },
    };
    const before = buildPodStatus({ pod, podIP: "", hostIP: "h", now: t0 });
    expect(before.initContainerStatuses?.[0]?.state).toEqual({ waiting: { reason: "PodInitializing" } });
    expect(cond(before, "Initialized")).toMatchObject({
      status: "False",
      reason: "ContainersNotInitialized",
    });
    const after = buildPodStatus({ pod, workload: workload(), podIP: "", hostIP: "h", now: t0 });
    expect(after.initContainerStatuses?.[0]?.state).toEqual({
      terminated: { exitCode: 0, reason: "Completed" },
    });
    expect(cond(after, "Initialized")?.status).toBe("True");
  });
});

describe("buildPodStatus: conditions, IPs and times", () => {
  it("keeps lastTransitionTime while a condition holds and moves it when it flips", () => {
    const first = build({ workload: workload({ phase: "Pending", apps: [] }) });
    expect(cond(first, "PodScheduled")?.lastTransitionTime).toEqual(scheduledAt);
    expect(cond(first, "Ready")?.lastTransitionTime).toEqual(t0);
    const pod = { ...basePod, status: wire(first) };
    const second = buildPodStatus({
      pod,
      workload: workload(),
      podIP: "10.250.0.7",
      hostIP: "192.0.2.10",
      now: t1,
    });
    expect(cond(second, "Ready")?.lastTransitionTime).toEqual(t1);
    expect(cond(second, "Initialized")?.lastTransitionTime).toEqual(new Date("2026-11-01T10:00:00.400Z"));
    expect(cond(second, "PodScheduled")?.lastTransitionTime).toEqual(scheduledAt);
    expect(second.startTime).toEqual(new Date("2026-11-01T10:00:00.400Z"));
    const third = buildPodStatus({
      pod: { ...basePod, status: wire(second) },
      workload: workload({ deviceConnected: false }),
      podIP: "10.250.0.7",
      hostIP: "192.0.2.10",
      now: t2,
    });
    expect(cond(third, "devicelet.dev/DeviceConnected")).toMatchObject({
      status: "False",
      reason: "DeviceOffline",
      lastTransitionTime: t2,
    });
    // An offline device's report may be stale, so the pod stops being Ready; what held stays put.
    expect(cond(third, "Ready")).toMatchObject({
      status: "False",
      reason: "DeviceOffline",
      lastTransitionTime: t2,
    });
    expect(cond(third, "ContainersReady")?.lastTransitionTime).toEqual(t1);
    expect(cond(third, "Initialized")?.lastTransitionTime).toEqual(new Date("2026-11-01T10:00:00.400Z"));
  });

  it("lets the engine's view of presence win", () => {
    const s = build({ workload: workload({ deviceConnected: true }), deviceConnected: false });
    expect(cond(s, "devicelet.dev/DeviceConnected")?.status).toBe("False");
  });

  it("keeps conditions it does not own and honours readiness gates", () => {
    const pod: Plain<V1Pod> = {
      ...basePod,
      spec: {
        ...basePod.spec,
        containers: basePod.spec?.containers ?? [],
        readinessGates: [{ conditionType: "example.com/lb" }],
      },
      status: {
        ...basePod.status,
        conditions: [...(basePod.status?.conditions ?? []), { type: "example.com/lb", status: "False" }],
      },
    };
    const s = buildPodStatus({ pod, workload: workload(), podIP: "ip", hostIP: "h", now: t0 });
    expect(cond(s, "ContainersReady")?.status).toBe("True");
    expect(cond(s, "Ready")).toMatchObject({ status: "False", reason: "ReadinessGatesNotReady" });
    expect(cond(s, "example.com/lb")?.status).toBe("False");
  });

  it("uses the device's address when it reports one", () => {
    expect(build().podIPs).toEqual([{ ip: "10.250.0.7" }]);
    const s = build({ workload: workload({ podIP: "172.16.0.5" }) });
    expect([s.podIP, s.podIPs, s.hostIP, s.hostIPs]).toEqual([
      "172.16.0.5",
      [{ ip: "172.16.0.5" }],
      "192.0.2.10",
      [{ ip: "192.0.2.10" }],
    ]);
  });

  it("keeps or computes the QoS class", () => {
    expect(build().qosClass).toBe("BestEffort");
    const container = (resources: object) => ({ name: "a", image: "a", resources });
    const qos = (resources: object) => qosClassOf({ spec: { containers: [container(resources)] } });
    expect(qos({})).toBe("BestEffort");
    expect(qos({ limits: { cpu: "1", memory: "1Gi" } })).toBe("Guaranteed");
    expect(qos({ requests: { cpu: "1000m", memory: "1Gi" }, limits: { cpu: "1", memory: "1Gi" } })).toBe(
      "Guaranteed",
    );
    expect(qos({ requests: { cpu: "500m" }, limits: { cpu: "1", memory: "1Gi" } })).toBe("Burstable");
  });
});

describe("buildFailedStatus", () => {
  it("fails the pod with the reason and message, containers waiting or terminated", () => {
    const running = build({ workload: workload({ apps: [app("app")] }) });
    const pod = { ...basePod, status: wire(running) };
    const s = buildFailedStatus(pod, {
      reason: "Unsupported",
      message: "spec.hostNetwork is not supported by provider mock",
      now: t1,
    });
    expect([s.phase, s.reason, s.message]).toEqual([
      "Failed",
      "Unsupported",
      "spec.hostNetwork is not supported by provider mock",
    ]);
    expect(s.containerStatuses?.[0]?.state?.terminated?.reason).toBe("ContainerStatusUnknown");
    expect(s.containerStatuses?.[1]?.state).toEqual({
      waiting: { reason: "Unsupported", message: "spec.hostNetwork is not supported by provider mock" },
    });
    expect(cond(s, "Ready")).toMatchObject({ status: "False", reason: "PodFailed" });
    expect(s.podIP).toBe("10.250.0.7");
    expect(cond(s, "devicelet.dev/DeviceConnected")?.status).toBe("True");
  });
});

describe("statusChanged", () => {
  it("is true without a current status and false for the same status read back", () => {
    const s = build({ workload: workload() });
    expect(statusChanged(undefined, s, basePod)).toBe(true);
    expect(statusChanged(s, s, basePod)).toBe(false);
    // Read back: strings at whole seconds, empty values present, foreign fields added.
    const back = {
      ...wire(s),
      nominatedNodeName: "x",
      containerStatuses: wire(s).containerStatuses?.map((c) => ({ ...c, lastState: {}, imageID: c.imageID })),
    };
    for (const c of back.conditions ?? [])
      c.lastTransitionTime = String(c.lastTransitionTime).replace(/\.\d+Z$/, "Z");
    expect(statusChanged(back, s, basePod)).toBe(false);
    const rebuilt = buildPodStatus({
      pod: { ...basePod, status: back },
      workload: workload(),
      podIP: "10.250.0.7",
      hostIP: "192.0.2.10",
      now: t2,
    });
    expect(statusChanged(back, rebuilt, basePod)).toBe(false);
  });

  it("sees what matters change", () => {
    const s = build({ workload: workload() });
    const restarted = build({
      workload: workload({ apps: [app("app", { restartCount: 1 }), app("sidecar")] }),
    });
    expect(statusChanged(s, restarted, basePod)).toBe(true);
    expect(
      statusChanged(s, build({ workload: workload({ phase: "Pending", reason: "Queued" }) }), basePod),
    ).toBe(true);
    expect(statusChanged(s, { ...s, podIP: "10.0.0.1" }, basePod)).toBe(true);
    expect(statusChanged(s, { ...s, startTime: t2 }, basePod)).toBe(true);
  });

  it("takes a cached status's own-ID marker for the pod's own container ID, and nothing else", () => {
    const s = build({ workload: workload() });
    const ids = wire(s).containerStatuses?.map((c) => c.containerID);
    expect(ids).toStrictEqual(["device://ns/sensor/app", "device://ns/sensor/sidecar"]);
    /** The status read back, each container's ID replaced by `id` (the cache's marker: OWN_CONTAINER_ID). */
    const cached = (id: string | undefined, of = wire(s)) => ({
      ...of,
      containerStatuses: of.containerStatuses?.map((c) => ({ ...c, containerID: id })),
    });
    expect(statusChanged(cached(OWN_CONTAINER_ID), s, basePod)).toBe(false);
    // The marker stands for this pod's IDs: beside another pod's status it is a change.
    const other = { ...basePod, metadata: { ...basePod.metadata, name: "other" } };
    expect(statusChanged(cached(OWN_CONTAINER_ID), s, other)).toBe(true);
    // What else changed is still a change; so is an ID that is gone, or another writer's.
    const restarted = build({
      workload: workload({ apps: [app("app", { restartCount: 1 }), app("sidecar")] }),
    });
    expect(statusChanged(cached(OWN_CONTAINER_ID), restarted, basePod)).toBe(true);
    const gone = build({ workload: undefined });
    expect(gone.containerStatuses?.[0]?.containerID).toBeUndefined();
    expect(statusChanged(cached(OWN_CONTAINER_ID), gone, basePod)).toBe(true);
    expect(statusChanged(cached("containerd://abc"), s, basePod)).toBe(true);
    expect(statusChanged(cached(undefined), s, basePod)).toBe(true);
    // One container marked, the other not: each compared as it is.
    const mixed = wire(s);
    const first = mixed.containerStatuses?.[0];
    if (first) first.containerID = OWN_CONTAINER_ID;
    expect(statusChanged(mixed, s, basePod)).toBe(false);
    const second = mixed.containerStatuses?.[1];
    if (second) second.containerID = "device://ns/sensor/other";
    expect(statusChanged(mixed, s, basePod)).toBe(true);
  });
});

describe("withOwnContainerIds", () => {
  it("puts the pod's own IDs back in place of the cache's marker, leaving the cached pod alone", () => {
    const s = wire(build({ workload: workload() }));
    const statuses = s.containerStatuses ?? [];
    const marked = {
      ...basePod,
      status: {
        ...s,
        containerStatuses: statuses.map((c, i) => (i === 0 ? { ...c, containerID: OWN_CONTAINER_ID } : c)),
        // An init container's status, as the cache keeps it: the marker in place of its ID.
        initContainerStatuses: statuses
          .slice(0, 1)
          .map((c) => ({ ...c, name: "init", containerID: OWN_CONTAINER_ID })),
      },
    };
    const copy = structuredClone(marked);
    const restored = withOwnContainerIds(marked);
    expect(restored.status.containerStatuses.map((c) => c.containerID)).toStrictEqual([
      "device://ns/sensor/app",
      "device://ns/sensor/sidecar",
    ]);
    expect(restored.status.initContainerStatuses[0]?.containerID).toBe("device://ns/sensor/init");
    expect({
      ...restored,
      status: { ...restored.status, containerStatuses: [], initContainerStatuses: [] },
    }).toStrictEqual({
      ...copy,
      status: { ...copy.status, containerStatuses: [], initContainerStatuses: [] },
    });
    expect(marked).toStrictEqual(copy);
    // Nothing marked: the same object.
    const plain = { ...basePod, status: s };
    expect(withOwnContainerIds(plain)).toBe(plain);
  });
});
