/**
 * PodController against an in-memory API (list/watch, status, delete, ConfigMap GETs) and a
 * provider that confirms nothing until told: deletes wait for the device, spec changes to running
 * pods are ignored with one Event, mounted ConfigMaps follow edits while env stays as started,
 * a resync costs no API call, and a refused request is recorded once and not retried.
 */
import pino from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { eventually } from "../../test/support/eventually.ts";
import { KubeApiError } from "../kube/transport.ts";
import type {
  ConfigMap,
  KubeClient,
  KubeObject,
  ListOptions,
  Pod,
  PodStatus,
  WatchEvent,
} from "../kube/index.ts";
import type { EventToRecord } from "../kube/events.ts";
import type {
  PodLifecycleProvider,
  PodRef,
  ProviderPod,
  Workload,
  WorkloadStatus,
} from "../provider/types.ts";
import { PodController } from "./controller.ts";

type Collection = "/api/v1/pods" | "/api/v1/configmaps" | "/api/v1/secrets";

/** Just enough of the API server: three collections, watches, and counted calls. */
class FakeApi {
  readonly objects = new Map<string, Map<string, KubeObject>>();
  readonly #watchers = new Map<string, Set<(e: WatchEvent<KubeObject>) => void>>();
  rv = 1;
  calls = { gets: 0, statusWrites: 0, deletes: [] as { name: string; gracePeriodSeconds: number }[] };
  refuseStatus = false;

  put(path: Collection, object: KubeObject): void {
    const m = object.metadata ?? {};
    m.resourceVersion = String(++this.rv);
    const items = this.#items(path);
    const key = `${m.namespace ?? ""}/${m.name ?? ""}`;
    const type = items.has(key) ? "MODIFIED" : "ADDED";
    items.set(key, structuredClone(object));
    for (const w of this.#watchers.get(path) ?? []) w({ type, object: structuredClone(object) });
  }

  remove(path: Collection, key: string): void {
    const object = this.#items(path).get(key);
    if (!object) return;
    this.#items(path).delete(key);
    for (const w of this.#watchers.get(path) ?? []) w({ type: "DELETED", object });
  }

  pod(name: string): Pod | undefined {
    return this.#items("/api/v1/pods").get(`ns/${name}`);
  }

  readonly client = {
    list: <T extends KubeObject>(path: string, _q: unknown, o?: ListOptions<T>) =>
      Promise.resolve({
        items: [...this.#items(path).values()].flatMap((item) => {
          const copy = structuredClone(item) as T;
          return (o?.each ? o.each(copy) : copy) ?? [];
        }),
        resourceVersion: String(this.rv),
      }),
    watch: <T extends KubeObject>(path: string, _q: unknown, o?: { signal?: AbortSignal }) =>
      this.#watch<T>(path, o?.signal),
    getConfigMap: (namespace: string, name: string) => {
      this.calls.gets++;
      const found = this.#items("/api/v1/configmaps").get(`${namespace}/${name}`);
      return Promise.resolve(found ? (structuredClone(found) as ConfigMap) : undefined);
    },
    getSecret: () => Promise.resolve(undefined),
    patchPodStatus: (p: { name: string; status: PodStatus }) => {
      if (this.refuseStatus)
        return Promise.reject(new KubeApiError(422, "PATCH pods/status: HTTP 422 Invalid", "{}", {}));
      this.calls.statusWrites++;
      const pod = structuredClone(this.pod(p.name)) as Pod;
      pod.status = p.status;
      this.put("/api/v1/pods", pod);
      return Promise.resolve(pod);
    },
    deletePod: (d: { name: string; gracePeriodSeconds: number }) => {
      this.calls.deletes.push({ name: d.name, gracePeriodSeconds: d.gracePeriodSeconds });
      const pod = this.pod(d.name);
      // With finalizers, the object stays (grace 0) until they are removed.
      if (pod?.metadata?.finalizers?.length) {
        pod.metadata.deletionGracePeriodSeconds = 0;
        this.put("/api/v1/pods", pod);
      } else this.remove("/api/v1/pods", `ns/${d.name}`);
      return Promise.resolve(true);
    },
  };

  #items(path: string): Map<string, KubeObject> {
    let items = this.objects.get(path);
    if (!items) this.objects.set(path, (items = new Map<string, KubeObject>()));
    return items;
  }

  async *#watch<T>(path: string, signal: AbortSignal | undefined): AsyncGenerator<WatchEvent<T>> {
    const queue: WatchEvent<KubeObject>[] = [];
    let wake: (() => void) | undefined;
    const push = (e: WatchEvent<KubeObject>) => {
      queue.push(e);
      wake?.();
    };
    let set = this.#watchers.get(path);
    if (!set) this.#watchers.set(path, (set = new Set()));
    set.add(push);
    signal?.addEventListener("abort", () => wake?.());
    try {
      while (!signal?.aborted) {
        const next = queue.shift();
        if (next) yield next as WatchEvent<T>;
        else await new Promise<void>((resolve) => (wake = resolve));
      }
    } finally {
      set.delete(push);
    }
  }
}

/** A provider whose device confirms a delete only when the test says so. */
class FakeProvider implements PodLifecycleProvider {
  readonly name = "fake";
  readonly supports = ["spec.volumes[].configMap", "spec.containers[].volumeMounts"] as const;
  readonly workloads = new Map<string, Workload>();
  /** The status last pushed per uid: what getPodStatus answers, as the contract asks. */
  readonly #statuses = new Map<string, WorkloadStatus>();
  readonly deletes: { name: string; gracePeriodSeconds: number }[] = [];
  adopted: ProviderPod[] = [];
  #onStatus: ((s: WorkloadStatus) => void) | undefined;
  #onDeleted: ((p: PodRef) => void) | undefined;

  createPod(w: Workload) {
    this.workloads.set(w.pod.uid, w);
    this.#report(w.pod);
    return Promise.resolve();
  }
  updatePod(w: Workload) {
    return this.createPod(w);
  }
  deletePod(pod: PodRef, o: { gracePeriodSeconds: number }) {
    this.deletes.push({ name: pod.name, gracePeriodSeconds: o.gracePeriodSeconds });
    return Promise.resolve();
  }
  getPodStatus(pod: PodRef) {
    return Promise.resolve(this.#statuses.get(pod.uid));
  }
  listPods() {
    return Promise.resolve(this.adopted);
  }
  notifyStatus(cb: (s: WorkloadStatus) => void) {
    this.#onStatus = cb;
  }
  notifyDeleted(cb: (p: PodRef) => void) {
    this.#onDeleted = cb;
  }
  confirmDeleted(pod: PodRef) {
    this.workloads.delete(pod.uid);
    this.#statuses.delete(pod.uid);
    this.#onDeleted?.(pod);
  }
  #report(pod: PodRef) {
    const app = { name: "app", image: "app:1", ready: true, restartCount: 0 };
    const state = { kind: "running", startedAt: new Date() } as const;
    const status: WorkloadStatus = {
      pod: { namespace: pod.namespace, name: pod.name, uid: pod.uid },
      phase: "Running",
      apps: [{ ...app, state }],
      deviceConnected: true,
      observedAt: new Date(),
    };
    this.#statuses.set(pod.uid, status);
    this.#onStatus?.(status);
  }
}

const podSpec = (name: string, extra: Partial<Pod["spec"]> = {}): Pod => ({
  metadata: { namespace: "ns", name, uid: `uid-${name}` },
  spec: {
    nodeName: "node-1",
    terminationGracePeriodSeconds: 20,
    containers: [
      {
        name: "app",
        image: "app:1",
        env: [{ name: "MODE", valueFrom: { configMapKeyRef: { name: "cfg", key: "mode" } } }],
        volumeMounts: [{ name: "conf", mountPath: "/etc/app" }],
      },
    ],
    volumes: [{ name: "conf", configMap: { name: "cfg" } }],
    ...extra,
  },
});

const configMap = (data: Record<string, string>): ConfigMap => ({
  metadata: { namespace: "ns", name: "cfg" },
  data,
});

let stop = new AbortController();
afterEach(() => stop.abort());

async function setUp(
  options: { adopted?: ProviderPod[]; connected?: boolean; resyncIntervalMs?: number } = {},
) {
  stop = new AbortController();
  const api = new FakeApi();
  const provider = new FakeProvider();
  provider.adopted = options.adopted ?? [];
  const events: EventToRecord[] = [];
  const device = { id: "dev-1", connected: options.connected ?? true, addresses: [] };
  const controller = new PodController({
    kube: api.client as unknown as KubeClient,
    provider,
    nodes: {
      byNodeName: (n) => (n === "node-1" ? ({ name: n, deviceId: "dev-1", device } as never) : undefined),
      hasNodeName: (n) => n === "node-1",
      onNodeNames: () => () => undefined,
      onDeviceChange: () => () => undefined,
      transport: () => ({ connected: true, message: "" }),
    },
    events: { record: (e) => events.push(e) },
    logger: pino({ level: "silent" }),
    config: {
      baseRetryDelayMs: 10,
      maxRetryDelayMs: 50,
      statusDebounceMs: 0,
      ipRange: "10.250.0.0/16",
      kubeletAddress: "127.0.0.1",
      resyncIntervalMs: options.resyncIntervalMs ?? 0,
    },
  });
  api.put("/api/v1/configmaps", configMap({ mode: "a", "app.conf": "one" }));
  await controller.start(stop.signal);
  return { api, provider, events, controller, device };
}

/** Marks the pod deleted as the API server does: deletionTimestamp = now + grace. */
function terminate(api: FakeApi, name: string, o: { secondsAgo: number; grace: number }) {
  const pod = structuredClone(api.pod(name)) as Pod;
  const at = new Date(Date.now() - o.secondsAgo * 1000).toISOString();
  pod.metadata = { ...pod.metadata, deletionTimestamp: at, deletionGracePeriodSeconds: o.grace };
  api.put("/api/v1/pods", pod);
}

const running = (api: FakeApi, name: string) => expect(api.pod(name)?.status?.phase).toBe("Running");

describe("PodController deletes like a kubelet", () => {
  it("keeps a deleted pod Terminating until the device confirms, then removes it", async () => {
    const { api, provider, device } = await setUp();
    api.put("/api/v1/pods", podSpec("a"));
    await eventually(() => running(api, "a"));
    device.connected = false;
    // Deleted with a grace period already over: a kubelet still waits for its containers.
    terminate(api, "a", { secondsAgo: 1, grace: 5 });
    await eventually(() => {
      const c = api.pod("a")?.status?.conditions?.find((x) => x.type === "devicelet.dev/StopConfirmed");
      expect(c).toMatchObject({ status: "False", reason: "WaitingForDevice" });
      expect(c?.message).toContain("dev-1");
    });
    expect(provider.deletes).toEqual([{ name: "a", gracePeriodSeconds: 5 }]);
    expect(api.calls.deletes).toEqual([]);

    // A later delete with a shorter grace period is forwarded.
    terminate(api, "a", { secondsAgo: 1, grace: 2 });
    await eventually(() => expect(provider.deletes.at(-1)).toEqual({ name: "a", gracePeriodSeconds: 2 }));
    expect(api.pod("a")).toBeDefined();

    provider.confirmDeleted({ namespace: "ns", name: "a", uid: "uid-a" });
    await eventually(() => expect(api.pod("a")).toBeUndefined());
    expect(api.calls.deletes).toEqual([{ name: "a", gracePeriodSeconds: 0 }]);
    expect(provider.deletes).toHaveLength(2);
  });

  it("deletes a pod with finalizers once, then leaves it to them without re-creating it", async () => {
    const { api, provider, controller } = await setUp();
    api.put("/api/v1/pods", { ...podSpec("b"), metadata: { ...podSpec("b").metadata, finalizers: ["x/y"] } });
    await eventually(() => running(api, "b"));
    terminate(api, "b", { secondsAgo: -20, grace: 20 });
    await eventually(() => expect(provider.deletes).toEqual([{ name: "b", gracePeriodSeconds: 20 }]));
    provider.confirmDeleted({ namespace: "ns", name: "b", uid: "uid-b" });
    await eventually(() => expect(api.pod("b")?.metadata?.deletionGracePeriodSeconds).toBe(0));
    const processed = controller.stats().queue.processed;
    api.put("/api/v1/pods", api.pod("b") as Pod); // the object changes while its finalizers run
    await eventually(() => expect(controller.stats().queue.processed).toBeGreaterThan(processed));
    expect(api.calls.deletes).toEqual([{ name: "b", gracePeriodSeconds: 0 }]);
    expect(provider.workloads.has("uid-b")).toBe(false);
    expect(controller.stats()).toMatchObject({ held: 0, written: 0 });
  });

  it("tombstones work whose pod was force-deleted while devicelet was down with the spec's grace period", async () => {
    const adopted = [
      {
        pod: { namespace: "ns", name: "gone", uid: "uid-gone" },
        nodeName: "node-1",
        hash: "h",
        terminationGracePeriodSeconds: 45,
      },
    ];
    const { provider, controller } = await setUp({ adopted });
    await eventually(() => expect(provider.deletes).toEqual([{ name: "gone", gracePeriodSeconds: 45 }]));
    expect(controller.stats().held).toBe(0);
  });
});

describe("PodController spec and config changes", () => {
  it("ignores an ephemeral container added to a running pod with one Warning Event", async () => {
    const { api, events, controller } = await setUp();
    api.put("/api/v1/pods", podSpec("dbg"));
    await eventually(() => running(api, "dbg"));
    const pod = api.pod("dbg") as Pod;
    pod.spec = {
      ...pod.spec,
      containers: pod.spec?.containers ?? [],
      ephemeralContainers: [{ name: "debugger", image: "busybox" }],
    };
    api.put("/api/v1/pods", pod);
    await eventually(() =>
      expect(events.filter((e) => e.reason === "UnsupportedFieldIgnored")).toHaveLength(1),
    );
    const processed = controller.stats().queue.processed;
    api.put("/api/v1/pods", api.pod("dbg") as Pod); // another change of the pod: no second Event
    await eventually(() => expect(controller.stats().queue.processed).toBeGreaterThan(processed));
    running(api, "dbg");
    expect(events.filter((e) => e.reason === "UnsupportedFieldIgnored")).toHaveLength(1);
  });

  it("sends edits of a mounted ConfigMap to the device and keeps env as it was at start", async () => {
    const { api, provider } = await setUp();
    api.put("/api/v1/pods", podSpec("cfg"));
    await eventually(() => running(api, "cfg"));
    api.put("/api/v1/configmaps", configMap({ mode: "b", "app.conf": "two" }));
    await eventually(() => {
      const app = provider.workloads.get("uid-cfg")?.apps[0];
      expect(app?.files.find((f) => f.path === "/etc/app/app.conf")?.content).toBe("two");
      expect(app?.env).toEqual({ MODE: "a" });
    });
  });

  it("reads a referenced ConfigMap once per version, and a resync writes and reads nothing", async () => {
    const { api, controller } = await setUp({ resyncIntervalMs: 50 });
    api.put("/api/v1/pods", podSpec("steady"));
    await eventually(() => running(api, "steady"));
    const before = { ...api.calls, processed: controller.stats().queue.processed };
    await eventually(() => expect(controller.stats().queue.processed).toBeGreaterThan(before.processed + 5));
    expect(api.calls.gets).toBe(before.gets);
    expect(api.calls.statusWrites).toBe(before.statusWrites);
    expect(before.gets).toBe(1);
  });
});

describe("PodController refused requests", () => {
  it("records one Warning Event and does not retry a request the API server refuses for good", async () => {
    const { api, events, controller } = await setUp();
    api.refuseStatus = true;
    api.put("/api/v1/pods", podSpec("bad"));
    await eventually(() => expect(events.filter((e) => e.reason === "RequestRefused")).toHaveLength(1));
    await eventually(() =>
      expect(controller.stats().queue).toMatchObject({ active: 0, pending: 0, delayed: 0 }),
    );
    // Retried, it would fail every few milliseconds (backoff 10–50 ms); refused, once per trigger.
    expect(controller.stats().queue.failed).toBeLessThanOrEqual(3);
    expect(events.find((e) => e.reason === "RequestRefused")?.message).toContain("422");
  });
});
