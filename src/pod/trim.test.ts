/**
 * trimPod: what the pod cache drops, and that nothing devicelet computes from a pod changes when
 * it reads the trimmed pod instead of the pod as the informer cached it before (managedFields and
 * kubectl's last-applied annotation dropped, nothing else): feature checks, translation and its
 * hash, referenced objects, pod status.
 */
import { describe, expect, it } from "vitest";
import { dropManagedFields, type Pod } from "../kube/index.ts";
import { PodFeature } from "../provider/types.ts";
import { checkSupported, referencedObjects, translatePod } from "../workload/index.ts";
import { b64 } from "../workload/test-fixtures.ts";
import { StringTable } from "../base/intern.ts";
import { buildFailedStatus, buildPodStatus, OWN_CONTAINER_ID, withOwnContainerIds } from "./status.ts";
import { podStringTable, podTrimmer, podValueTable, trimPod } from "./trim.ts";

const now = new Date("2026-03-01T12:00:00Z");
const resources = { requests: { cpu: "100m", memory: "32Mi" }, limits: { cpu: "500m", memory: "64Mi" } };

/** A pod using every field devicelet reads, plus what the API server and scheduler add. */
function richPod(): Pod {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: {
      name: "sensor",
      generateName: "sensor-",
      namespace: "ns",
      uid: "uid-1",
      resourceVersion: "42",
      generation: 3,
      creationTimestamp: "2026-03-01T11:00:00Z",
      labels: { app: "sensor", tier: "edge" },
      annotations: {
        note: 'say "hi"',
        "kubectl.kubernetes.io/last-applied-configuration": '{"big":"copy"}',
      },
      ownerReferences: [{ apiVersion: "apps/v1", kind: "ReplicaSet", name: "sensor-1", uid: "rs-1" }],
      finalizers: ["example.com/keep"],
      managedFields: [{ manager: "kubectl", operation: "Apply", fieldsV1: { "f:spec": {} } }],
    },
    spec: {
      nodeName: "dev-1",
      serviceAccountName: "default",
      serviceAccount: "default",
      restartPolicy: "OnFailure",
      terminationGracePeriodSeconds: 12,
      hostNetwork: true,
      securityContext: { runAsUser: 1000, fsGroup: 2000 },
      readinessGates: [{ conditionType: "example.com/Warm" }],
      initContainers: [
        {
          name: "init",
          image: "registry/init:1",
          command: ["prep", "$(MODE)"],
          env: [{ name: "MODE", value: "x" }],
        },
      ],
      containers: [
        {
          name: "app",
          image: "registry/sensor:1.2",
          command: ["run"],
          args: ["--mode=$(MODE)", "--node=$(NODE)"],
          env: [
            { name: "MODE", valueFrom: { configMapKeyRef: { name: "cfg", key: "mode" } } },
            { name: "TOKEN", valueFrom: { secretKeyRef: { name: "creds", key: "token" } } },
            { name: "NODE", valueFrom: { fieldRef: { fieldPath: "spec.nodeName" } } },
            { name: "NOTE", valueFrom: { fieldRef: { fieldPath: "metadata.annotations['note']" } } },
            { name: "SA", valueFrom: { fieldRef: { fieldPath: "spec.serviceAccountName" } } },
            { name: "CPU", valueFrom: { resourceFieldRef: { resource: "limits.cpu", divisor: "1m" } } },
          ],
          envFrom: [{ configMapRef: { name: "cfg" }, prefix: "CFG_" }, { secretRef: { name: "creds" } }],
          ports: [{ containerPort: 8080, name: "http" }],
          livenessProbe: { httpGet: { path: "/healthz", port: 8080 }, periodSeconds: 5 },
          readinessProbe: { exec: { command: ["ready"] } },
          lifecycle: { preStop: { exec: { command: ["drain"] } } },
          resources,
          securityContext: { readOnlyRootFilesystem: true, capabilities: { drop: ["ALL"] } },
          volumeMounts: [
            { name: "conf", mountPath: "/etc/app" },
            { name: "tls", mountPath: "/etc/tls" },
            { name: "info", mountPath: "/etc/info" },
            { name: "all", mountPath: "/etc/all" },
            { name: "scratch", mountPath: "/tmp" },
          ],
          imagePullPolicy: "IfNotPresent",
          terminationMessagePath: "/dev/termination-log",
          terminationMessagePolicy: "File",
        },
      ],
      volumes: [
        { name: "conf", configMap: { name: "cfg" } },
        { name: "tls", secret: { secretName: "creds" } },
        {
          name: "info",
          downwardAPI: { items: [{ path: "labels", fieldRef: { fieldPath: "metadata.labels" } }] },
        },
        {
          name: "all",
          projected: { sources: [{ configMap: { name: "cfg" } }, { secret: { name: "creds" } }] },
        },
        { name: "scratch", emptyDir: {} },
        { name: "host", hostPath: { path: "/var/data" } },
      ],
      // What the scheduler, admission and defaulting add, which devicelet never reads.
      schedulerName: "default-scheduler",
      dnsPolicy: "ClusterFirst",
      enableServiceLinks: true,
      preemptionPolicy: "PreemptLowerPriority",
      priority: 0,
      priorityClassName: "edge",
      nodeSelector: { "kubernetes.io/os": "linux" },
      affinity: {
        nodeAffinity: { requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: [] } },
      },
      tolerations: [
        {
          key: "node.kubernetes.io/not-ready",
          operator: "Exists",
          effect: "NoExecute",
          tolerationSeconds: 300,
        },
      ],
      topologySpreadConstraints: [{ maxSkew: 1, topologyKey: "zone", whenUnsatisfiable: "DoNotSchedule" }],
    },
    status: {
      phase: "Running",
      conditions: [
        { type: "PodScheduled", status: "True", lastTransitionTime: "2026-03-01T11:00:01Z" },
        {
          type: "Ready",
          status: "False",
          lastTransitionTime: "2026-03-01T11:00:05Z",
          reason: "ReadinessGatesNotReady",
        },
        { type: "example.com/Warm", status: "True", lastTransitionTime: "2026-03-01T11:00:09Z" },
      ],
      containerStatuses: [
        {
          name: "app",
          image: "registry/sensor:1.2",
          imageID: "",
          ready: true,
          restartCount: 2,
          state: { running: { startedAt: "2026-03-01T11:00:04Z" } },
        },
      ],
      initContainerStatuses: [
        {
          name: "init",
          image: "registry/init:1",
          imageID: "",
          ready: false,
          restartCount: 0,
          state: { terminated: { exitCode: 0, reason: "Completed" } },
        },
      ],
      hostIP: "192.0.2.1",
      hostIPs: [{ ip: "192.0.2.1" }],
      podIP: "10.250.0.7",
      podIPs: [{ ip: "10.250.0.7" }],
      startTime: "2026-03-01T11:00:02Z",
      qosClass: "Burstable",
      reason: "",
      message: "",
      // Written by others.
      nominatedNodeName: "dev-2",
      resize: "Proposed",
      ephemeralContainerStatuses: [],
    },
  };
}

const lookups = {
  configMap: (_ns: string, name: string) =>
    name === "cfg"
      ? { metadata: { name, namespace: "ns" }, data: { mode: "fast", "app.conf": "a=1" } }
      : undefined,
  secret: (_ns: string, name: string) =>
    name === "creds" ? { metadata: { name, namespace: "ns" }, data: { token: b64("s3cret") } } : undefined,
};
const translateOptions = {
  deviceId: "Dev_1",
  nodeName: "dev-1",
  lookups,
  podIP: "10.250.0.7",
  hostIP: "192.0.2.1",
};

/** The pod as the cache held it before trimPod: the informer's default trim. */
const untrimmed = () => dropManagedFields(richPod());

describe("trimPod", () => {
  it("drops managedFields, kubectl's copy, scheduling fields and status written by others", () => {
    const trimmed = trimPod(richPod());
    expect(trimmed.metadata).toEqual({
      name: "sensor",
      namespace: "ns",
      uid: "uid-1",
      resourceVersion: "42",
      creationTimestamp: "2026-03-01T11:00:00Z",
      labels: { app: "sensor", tier: "edge" },
      annotations: { note: 'say "hi"' },
      ownerReferences: [{ apiVersion: "apps/v1", kind: "ReplicaSet", name: "sensor-1", uid: "rs-1" }],
      finalizers: ["example.com/keep"],
    });
    expect(Object.keys(trimmed.spec ?? {}).sort()).toEqual([
      "containers",
      "hostNetwork",
      "initContainers",
      "nodeName",
      "readinessGates",
      "restartPolicy",
      "securityContext",
      "serviceAccountName",
      "terminationGracePeriodSeconds",
      "volumes",
    ]);
    // Containers and volumes whole, even the fields nothing reads today.
    expect(trimmed.spec?.containers).toEqual(richPod().spec?.containers);
    expect(trimmed.spec?.volumes).toEqual(richPod().spec?.volumes);
    expect(Object.keys(trimmed.status ?? {}).sort()).toEqual([
      "conditions",
      "containerStatuses",
      "hostIP",
      "hostIPs",
      "initContainerStatuses",
      "message",
      "phase",
      "podIP",
      "podIPs",
      "qosClass",
      "reason",
      "startTime",
    ]);
    expect([trimmed.apiVersion, trimmed.kind]).toEqual(["v1", "Pod"]);
    // Smaller on the wire form it is measured in, by a wide margin even without managedFields.
    expect(JSON.stringify(trimmed).length).toBeLessThan(JSON.stringify(untrimmed()).length * 0.85);
  });

  it("keeps the fields a deletion reads, and adds none that were absent", () => {
    const pod = richPod();
    pod.metadata = {
      ...pod.metadata,
      deletionTimestamp: "2026-03-01T12:00:00Z",
      deletionGracePeriodSeconds: 7,
    };
    expect(trimPod(pod).metadata).toMatchObject({
      deletionTimestamp: "2026-03-01T12:00:00Z",
      deletionGracePeriodSeconds: 7,
      finalizers: ["example.com/keep"],
    });
    const bare = trimPod({ metadata: { name: "b", namespace: "ns" }, spec: { containers: [] } });
    expect(bare).toEqual({ metadata: { name: "b", namespace: "ns" }, spec: { containers: [] } });
  });

  it("changes nothing the translation reads: the same workload, so the same hash", () => {
    // Also without kubectl's annotation, which the trim drops on its own.
    const applied = richPod();
    delete applied.metadata?.annotations?.["kubectl.kubernetes.io/last-applied-configuration"];
    expect(translatePod(trimPod(structuredClone(applied)), translateOptions)).toEqual(
      translatePod(dropManagedFields(applied), translateOptions),
    );
    const before = translatePod(untrimmed(), translateOptions);
    const after = translatePod(trimPod(richPod()), translateOptions);
    expect(before.kind).toBe("ok");
    expect(after).toEqual(before);
    if (after.kind !== "ok" || before.kind !== "ok") return;
    expect(after.workload.hash).toBe(before.workload.hash);
    // The rich pod did reach everything: env from both objects, downward values, files.
    expect(after.workload.apps[0]?.env).toMatchObject({
      MODE: "fast",
      NODE: "dev-1",
      NOTE: 'say "hi"',
      SA: "default",
      CPU: "500",
    });
    expect(after.workload.apps[0]?.secretEnv).toContain("TOKEN");
    expect(after.workload.apps[0]?.files.length).toBeGreaterThan(3);
  });

  it("changes nothing the feature checks and reference tracking read", () => {
    const all = Object.values(PodFeature);
    for (const supports of [[], all, all.filter((f) => f !== PodFeature.HostNetwork)]) {
      expect(checkSupported(trimPod(richPod()), supports, "mock")).toEqual(
        checkSupported(untrimmed(), supports, "mock"),
      );
    }
    expect(checkSupported(trimPod(richPod()), [], "mock")?.message).toContain("spec.hostNetwork");
    for (const env of [true, false]) {
      expect(referencedObjects(trimPod(richPod()), { env })).toEqual(referencedObjects(untrimmed(), { env }));
    }
    // Fields refused outright survive the trim.
    const refused = richPod();
    refused.spec = {
      ...refused.spec,
      containers: refused.spec?.containers ?? [],
      hostPID: true,
      hostIPC: true,
    };
    refused.spec.resourceClaims = [{ name: "gpu" }];
    refused.spec.ephemeralContainers = [{ name: "debug", image: "busybox" }];
    for (const supports of [[], all]) {
      expect(checkSupported(trimPod(refused), supports, "mock")).toEqual(
        checkSupported(dropManagedFields(refused), supports, "mock"),
      );
    }
    expect(checkSupported(trimPod(refused), [], "mock")?.message).toContain("spec.ephemeralContainers");
    expect(checkSupported(trimPod(refused), all, "mock")?.message).toMatch(
      /spec\.hostPID.*spec\.hostIPC.*spec\.resourceClaims/,
    );
  });

  it("changes nothing in the status built from the pod", () => {
    expectSameStatus(trimPod(richPod()), untrimmed(), ["app"]);
  });
});

/**
 * The device reports the pod's `apps` running: the statuses built from `pod` and from `expected`
 * are equal, Running and failed alike.
 */
function expectSameStatus(pod: Pod, expected: Pod, apps: readonly string[]): void {
  const workload = {
    pod: { namespace: "ns", name: pod.metadata?.name ?? "", uid: pod.metadata?.uid ?? "" },
    phase: "Running" as const,
    apps: apps.map((name) => ({
      name,
      image: "registry/sensor:1.2",
      state: { kind: "running" as const, startedAt: now },
      ready: true,
      restartCount: 2,
    })),
    deviceConnected: true,
    observedAt: now,
  };
  const input = { workload, podIP: "10.250.0.7", hostIP: "192.0.2.1", now };
  expect(buildPodStatus({ ...input, pod })).toStrictEqual(buildPodStatus({ ...input, pod: expected }));
  const failed = { reason: "Unsupported", message: "no", now };
  expect(buildFailedStatus(pod, failed)).toStrictEqual(buildFailedStatus(expected, failed));
}

/**
 * Replica `i` of the rich pod, as the API server sends it: what differs between the replicas of
 * one Deployment is unique to each (name, UID, resourceVersion, pod IP, container IDs, the token
 * volume's name); the rest repeats.
 */
function replicaJson(i: number): string {
  const pod = richPod();
  const name = `sensor-7d9f8c6b5-${String(i).padStart(5, "0")}`;
  const token = `kube-api-access-${String(i).padStart(5, "0")}`;
  pod.metadata = {
    ...pod.metadata,
    name,
    uid: `3f0c2a4e-0000-4000-a000-${String(i).padStart(12, "0")}`,
    resourceVersion: String(10_000_000_000 + i),
    labels: { ...pod.metadata?.labels, "statefulset.kubernetes.io/pod-name": name },
  };
  const spec = pod.spec ?? { containers: [] };
  spec.volumes = [...(spec.volumes ?? []), { name: token, projected: { sources: [] } }];
  for (const container of spec.containers) {
    container.volumeMounts = [
      ...(container.volumeMounts ?? []),
      { name: token, mountPath: "/var/run/secrets/x" },
    ];
  }
  const status = pod.status ?? {};
  status.podIP = `10.250.${Math.floor(i / 250)}.${i % 250}`;
  status.podIPs = [{ ip: status.podIP }];
  for (const c of status.containerStatuses ?? []) c.containerID = `device://ns/${name}/${c.name}`;
  return JSON.stringify(pod);
}

/** The same trim, with a table that stores nothing: the pod as it was before interning. */
const plainTrim = podTrimmer(new StringTable({ generationSize: 1, admit: () => false }));

describe("trimPod's string table", () => {
  it("keeps every value deep-equal, env, volumes and annotations included, so the same hash", () => {
    const trim = podTrimmer(podStringTable());
    for (let i = 0; i < 3; i++) {
      const text = replicaJson(i);
      const interned = trim(JSON.parse(text) as Pod);
      const plain = plainTrim(JSON.parse(text) as Pod);
      expect(interned).toStrictEqual(plain);
      expect(interned.spec?.containers[0]?.env).toStrictEqual(richPod().spec?.containers[0]?.env);
      expect(interned.spec?.volumes?.slice(0, -1)).toStrictEqual(richPod().spec?.volumes);
      expect(interned.metadata?.annotations).toStrictEqual({ note: 'say "hi"' });
      const workload = translatePod(interned, translateOptions);
      expect(workload.kind).toBe("ok");
      expect(workload).toStrictEqual(translatePod(plain, translateOptions));
    }
  });

  it("stores what the replicas repeat, and does not grow with what is unique to each", () => {
    const strings = podStringTable();
    const trim = podTrimmer(strings);
    trim(JSON.parse(replicaJson(0)) as Pod);
    const afterOne = strings.size;
    for (let i = 1; i < 200; i++) trim(JSON.parse(replicaJson(i)) as Pod);
    expect(strings.size).toBe(afterOne);
    // Repeated: image, finalizer, env source, container fields, condition reasons, timestamps.
    for (const value of [
      "registry/sensor:1.2",
      "example.com/keep",
      "spec.serviceAccountName",
      "/dev/termination-log",
      "ReadinessGatesNotReady",
      "2026-03-01T11:00:05Z",
    ]) {
      expect(strings.has(value), value).toBe(true);
    }
    // The QoS class (those up to 9 characters come out of JSON.parse shared already).
    const bestEffort = JSON.parse(replicaJson(0)) as Pod;
    bestEffort.status = { ...bestEffort.status, qosClass: "BestEffort" };
    trim(bestEffort);
    expect(strings.has("BestEffort")).toBe(true);
    // Unique: never stored, whichever replica.
    for (const value of [
      "sensor-7d9f8c6b5-00007",
      "3f0c2a4e-0000-4000-a000-000000000007",
      "kube-api-access-00007",
      "device://ns/sensor-7d9f8c6b5-00007/app",
      "10000000007",
    ]) {
      expect(strings.has(value), value).toBe(false);
    }
  });
});

describe("trimPod's value table", () => {
  const trimmed = (i: number, trim: (pod: Pod) => Pod) => trim(JSON.parse(replicaJson(i)) as Pod);

  it("gives replicas one frozen copy of what they repeat whole, and changes no value", () => {
    const trim = podTrimmer(podStringTable(), podValueTable());
    const [a, b] = [trimmed(0, trim), trimmed(1, trim)];
    expect(a).toStrictEqual(trimmed(0, plainTrim));
    expect(b).toStrictEqual(trimmed(1, plainTrim));
    const same = (of: (pod: Pod) => unknown, what: string) => {
      expect(of(a), what).toBeDefined();
      expect(of(a), what).toBe(of(b));
      expect(Object.isFrozen(of(a)), what).toBe(true);
    };
    same((p) => p.status?.conditions, "conditions");
    same((p) => p.status?.conditions?.[0], "a condition");
    same((p) => p.status?.containerStatuses?.[0]?.state, "container state");
    same((p) => p.status?.hostIPs, "hostIPs");
    same((p) => p.metadata?.ownerReferences, "ownerReferences");
    same((p) => p.metadata?.annotations, "annotations");
    same((p) => p.spec?.securityContext, "pod securityContext");
    same((p) => p.spec?.containers[0]?.resources, "resources");
    same((p) => p.spec?.containers[0]?.env, "env");
    same((p) => p.spec?.containers[0]?.livenessProbe, "probe");
    same((p) => p.spec?.volumes?.[0], "a volume");
    // A writer into a shared part throws rather than changing every pod that shares it.
    expect(() => {
      (a.status?.conditions?.[0] as { status: string }).status = "False";
    }).toThrow(TypeError);
    // Unique to each replica: never shared, never frozen.
    const own = (of: (pod: Pod) => unknown, what: string) => {
      expect(of(a), what).toBeDefined();
      expect(of(a), what).not.toBe(of(b));
      expect(Object.isFrozen(of(a)), what).toBe(false);
    };
    own((p) => p, "the pod");
    own((p) => p.metadata, "metadata");
    own((p) => p.metadata?.labels, "labels with the StatefulSet pod name");
    own((p) => p.spec?.containers[0], "a container (its token mount)");
    own((p) => p.spec?.volumes?.at(-1), "the token volume");
    own((p) => p.status?.podIPs, "podIPs");
    // Container statuses whose IDs are devicelet's own keep the marker in their place, so they
    // and their list are shared; another writer's ID is the pod's own, and so is its status.
    same((p) => p.status?.containerStatuses, "container statuses (devicelet's IDs)");
    expect(a.status?.containerStatuses?.[0]?.containerID).toBe(OWN_CONTAINER_ID);
    expect(withOwnContainerIds(a).status?.containerStatuses?.[0]?.containerID).toBe(
      "device://ns/sensor-7d9f8c6b5-00000/app",
    );
    const foreign = (i: number) => {
      const pod = JSON.parse(replicaJson(i)) as Pod;
      for (const c of pod.status?.containerStatuses ?? []) c.containerID = `containerd://${i}`;
      return trim(pod);
    };
    // The statuses marked are copies: what the trim was given keeps its ID.
    const given = JSON.parse(replicaJson(10)) as Pod;
    const givenStatus = given.status?.containerStatuses?.[0];
    expect(trim(given).status?.containerStatuses?.[0]?.containerID).toBe(OWN_CONTAINER_ID);
    expect(givenStatus?.containerID).toBe("device://ns/sensor-7d9f8c6b5-00010/app");
    const [x, y] = [foreign(8), foreign(9)];
    expect(x.status?.containerStatuses?.[0]?.containerID).toBe("containerd://8");
    expect(x.status?.containerStatuses?.[0]).not.toBe(y.status?.containerStatuses?.[0]);
    expect(x.status?.containerStatuses).not.toBe(y.status?.containerStatuses);
    expect(Object.isFrozen(x.status?.containerStatuses?.[0])).toBe(false);
    expect(x.status?.containerStatuses?.[0]?.state).toBe(y.status?.containerStatuses?.[0]?.state);
    // Labels are shared when no value is unique to the pod.
    const unlabelled = (i: number) => {
      const pod = JSON.parse(replicaJson(i)) as Pod;
      delete pod.metadata?.labels?.["statefulset.kubernetes.io/pod-name"];
      return trim(pod);
    };
    expect(unlabelled(2).metadata?.labels).toBe(unlabelled(3).metadata?.labels);
    // Containers are shared whole, with their list, when none mounts the pod's token (and the
    // list is short enough for the table: a plain container).
    const tokenless = (i: number, token: boolean) => {
      const name = `plain-${i}`;
      const tokenName = `kube-api-access-${i}`;
      const mounts = token ? { volumeMounts: [{ name: tokenName, mountPath: "/var/run/secrets/x" }] } : {};
      const pod: Pod = {
        apiVersion: "v1",
        kind: "Pod",
        metadata: { name, namespace: "ns", uid: `uid-${i}` },
        spec: {
          nodeName: "dev-1",
          containers: [{ name: "app", image: "registry/app:1", command: ["run"], ...mounts }],
          ...(token ? { volumes: [{ name: tokenName, projected: { sources: [] } }] } : {}),
        },
      };
      return [trim(structuredClone(pod)), plainTrim(pod)] as const;
    };
    const [[c, plainC], [d]] = [tokenless(4, false), tokenless(5, false)];
    expect(c).toStrictEqual(plainC);
    expect(c.spec?.containers).toBe(d.spec?.containers);
    expect(Object.isFrozen(c.spec?.containers[0])).toBe(true);
    expect(translatePod(c, translateOptions)).toStrictEqual(translatePod(plainC, translateOptions));
    const [[e], [f]] = [tokenless(6, true), tokenless(7, true)];
    expect(e.spec?.containers).not.toBe(f.spec?.containers);
    expect(Object.isFrozen(e.spec?.containers[0])).toBe(false);
  });

  it("keeps a terminated state that holds its container's ID the pod's own, out of the table", () => {
    const trim = podTrimmer(podStringTable(), podValueTable());
    const restarted = (i: number, withId: boolean) => {
      const pod = JSON.parse(replicaJson(i)) as Pod;
      const status = pod.status?.containerStatuses?.[0];
      const containerID = `device://ns/${pod.metadata?.name}/app`;
      if (status)
        status.lastState = {
          terminated: {
            exitCode: 1,
            reason: "Error",
            finishedAt: "2026-03-01T12:00:00Z",
            ...(withId ? { containerID } : {}),
          },
        };
      return trim(pod).status?.containerStatuses?.[0]?.lastState;
    };
    const [a, b] = [restarted(0, true), restarted(1, true)];
    expect(a?.terminated?.containerID).toBe("device://ns/sensor-7d9f8c6b5-00000/app");
    expect(Object.isFrozen(a)).toBe(false);
    expect(a).not.toBe(b);
    // Without an ID, the same state is one shared copy.
    const [c, d] = [restarted(2, false), restarted(3, false)];
    expect(Object.isFrozen(c)).toBe(true);
    expect(c).toBe(d);
  });

  it("shares a running pod's five conditions as one list, though their JSON is too long for a value", () => {
    const trim = podTrimmer(podStringTable(), podValueTable());
    // As the API server sends them after devicelet's Running write: each with `lastProbeTime: null`.
    const conditions = (at: string) => [
      ...["Initialized", "Ready", "ContainersReady", "PodScheduled"].map((type) => ({
        type,
        status: "True",
        lastProbeTime: null,
        lastTransitionTime: at,
      })),
      {
        type: "devicelet.dev/DeviceConnected",
        status: "True",
        lastProbeTime: null,
        lastTransitionTime: at,
        reason: "DeviceOnline",
        message: "device is connected",
      },
    ];
    expect(JSON.stringify(conditions("2026-12-07T00:37:35Z")).length).toBeGreaterThan(512);
    const running = (i: number, at: string) => {
      const pod = JSON.parse(replicaJson(i)) as Pod;
      pod.status = { ...pod.status, conditions: JSON.parse(JSON.stringify(conditions(at))) as [] };
      return [trim(pod), plainTrim(JSON.parse(JSON.stringify(pod)) as Pod)] as const;
    };
    const [[a, plainA], [b]] = [running(0, "2026-12-07T00:37:35Z"), running(1, "2026-12-07T00:37:35Z")];
    expect(a).toStrictEqual(plainA);
    expect(a.status?.conditions).toHaveLength(5);
    expect(a.status?.conditions).toBe(b.status?.conditions);
    expect(Object.isFrozen(a.status?.conditions)).toBe(true);
    // Another second's conditions are another list; the same conditions in another order too.
    const [[c]] = [running(2, "2026-12-07T00:37:36Z")];
    expect(c.status?.conditions).not.toBe(a.status?.conditions);
    const reordered = JSON.parse(replicaJson(3)) as Pod;
    reordered.status = {
      ...reordered.status,
      conditions: JSON.parse(JSON.stringify(conditions("2026-12-07T00:37:35Z").reverse())) as [],
    };
    const d = trim(reordered);
    expect(d.status?.conditions).not.toBe(a.status?.conditions);
    expect(d.status?.conditions?.[0]).toBe(a.status?.conditions?.[4]);
  });

  it("leaves the translation, its hash and the status built from the pod as they were", () => {
    const trim = podTrimmer(podStringTable(), podValueTable());
    trimmed(0, trim);
    const shared = trimmed(1, trim);
    const plain = trimmed(1, plainTrim);
    expect(translatePod(shared, translateOptions)).toStrictEqual(translatePod(plain, translateOptions));
    expectSameStatus(shared, plain, ["init", "app"]);
  });
});
