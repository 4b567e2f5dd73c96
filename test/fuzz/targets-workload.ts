/**
 * Fuzz targets between Kubernetes and the device: pod-spec translation with the feature checks
 * (`checkSupported` then `translatePod`, as the pod controller calls them), the MQTT provider's
 * status mapper fed mutated device reports, and the engine's pod status builder.
 *
 * Only what comes from outside is mutated: the pod (from the API server), the device's report,
 * address and rejection (from the wire) and the workload status (from a provider). The engine's
 * own arguments (the clock, the node's addresses) stay valid.
 */
import fc from "fast-check";
import { workloadStatusFor, type StatusInput } from "../../providers/mqtt/status-map.ts";
import { toDesiredPod } from "../../providers/mqtt/translate.ts";
import { desiredDocument } from "../../src/device/fixtures.ts";
import { encodeMessage } from "../../src/protocol/codec.ts";
import { buildPodStatus } from "../../src/pod/status.ts";
import { PodFeature, type WorkloadStatus } from "../../src/provider/types.ts";
import { checkSupported } from "../../src/workload/features.ts";
import { b64, cm, secret, store } from "../../src/workload/test-fixtures.ts";
import { translatePod } from "../../src/workload/translate.ts";
import { schemaExamples } from "./targets-protocol.ts";
import { mutatedValue, typedMutatedValue } from "./mutate.ts";
import { accepted, HiddenCrash, rejected, type FuzzTarget } from "./target.ts";

const NOW = new Date("2026-01-01T00:00:00Z");

/** A pod using most of what translation reads: env in every form, volumes, ports, limits. */
export const seedPods: Record<string, unknown>[] = [
  {
    metadata: {
      name: "sensor",
      namespace: "ns",
      uid: "uid-1",
      labels: { app: "sensor" },
      annotations: { a: "b" },
    },
    spec: {
      nodeName: "dev-1",
      restartPolicy: "OnFailure",
      terminationGracePeriodSeconds: 5,
      containers: [
        {
          name: "app",
          image: "registry/sensor:1.2",
          command: ["run", "$(LEVEL)"],
          args: ["--x=$(POD)", "$$(ESC)"],
          ports: [{ containerPort: 80, name: "http", protocol: "TCP" }],
          env: [
            { name: "PLAIN", value: "v" },
            { name: "LEVEL", valueFrom: { configMapKeyRef: { name: "cfg", key: "level" } } },
            { name: "PASS", valueFrom: { secretKeyRef: { name: "creds", key: "password", optional: true } } },
            { name: "POD", valueFrom: { fieldRef: { fieldPath: "metadata.labels['app']" } } },
            { name: "IP", valueFrom: { fieldRef: { fieldPath: "status.podIP" } } },
            { name: "CPU", valueFrom: { resourceFieldRef: { resource: "limits.cpu", divisor: "1m" } } },
          ],
          envFrom: [{ configMapRef: { name: "cfg" }, prefix: "CFG_" }, { secretRef: { name: "creds" } }],
          resources: { limits: { cpu: "500m", memory: "64Mi" }, requests: { cpu: "100m" } },
          volumeMounts: [
            { name: "conf", mountPath: "/etc/conf" },
            { name: "tls", mountPath: "/etc/tls", readOnly: true },
            { name: "info", mountPath: "/etc/info" },
            { name: "all", mountPath: "/etc/all", subPath: "x" },
          ],
        },
      ],
      volumes: [
        {
          name: "conf",
          configMap: { name: "cfg", items: [{ key: "level", path: "level.txt", mode: 0o600 }] },
        },
        { name: "tls", secret: { secretName: "creds", defaultMode: 0o400 } },
        {
          name: "info",
          downwardAPI: { items: [{ path: "labels", fieldRef: { fieldPath: "metadata.labels" } }] },
        },
        {
          name: "all",
          projected: {
            sources: [{ configMap: { name: "cfg" } }, { secret: { name: "creds", optional: true } }],
          },
        },
      ],
    },
    status: { phase: "Pending", podIP: "10.0.0.7" },
  },
  {
    metadata: { name: "tiny", namespace: "ns", uid: "uid-2" },
    spec: { containers: [{ name: "a", image: "x:1" }] },
  },
];

const lookups = store(
  [cm("cfg", { level: "debug", x: "1" }, { bin: b64("\u0000\u0001") })],
  [secret("creds", { password: "hunter2", key: "k" })],
);

const translation: FuzzTarget = {
  name: "workload.translatePod+checkSupported+toDesiredPod",
  input: fc.oneof(
    { arbitrary: mutatedValue(seedPods), weight: 6 },
    // Types kept, values at their edges: gets past the shape checks into resolution and expansion.
    { arbitrary: typedMutatedValue(seedPods), weight: 3 },
    { arbitrary: fc.anything({ maxDepth: 3 }), weight: 1 },
  ),
  run: (pod) => {
    const unsupported = checkSupported(pod as never, Object.values(PodFeature).slice(0, 8), "fuzz");
    if (unsupported !== undefined) {
      if (!unsupported.message) throw new HiddenCrash("unsupported without a message");
      return rejected("unsupported");
    }
    const result = translatePod(pod as never, {
      deviceId: "dev-1",
      nodeName: "dev-1",
      lookups,
      podIP: "10.0.0.7",
      hostIP: "192.0.2.1",
      allocatable: { cpu: "4", memory: "4Gi" },
    });
    if (result.kind === "ok") {
      // On to the device: the pod in a desired document, encoded as the MQTT provider sends it.
      // encodeMessage refuses a document its schema does not accept (a TypeError that says so);
      // the provider holds such a pod back as DocumentInvalid.
      const desired = toDesiredPod(result.workload);
      try {
        encodeMessage(desiredDocument({ deviceId: "dev-1", generation: 1, pods: [desired] }));
      } catch (err) {
        if (err instanceof TypeError && err.message.startsWith("encodeMessage: invalid desired"))
          return rejected("document-invalid");
        throw err;
      }
      return accepted;
    }
    // translatePod turns an exception it did not expect into this message: a crash.
    if (result.message.startsWith("cannot translate pod:")) throw new HiddenCrash(result.message);
    if (!result.message) throw new HiddenCrash("configError without a message");
    return rejected("config-error");
  },
};

/** A status-map input whose device-sourced parts are mutated. */
const reportedSeeds = (): Record<string, unknown>[] => {
  const reports = schemaExamples().get("reported") ?? [];
  const pods = reports.flatMap((r) => (Array.isArray(r.pods) ? (r.pods as Record<string, unknown>[]) : []));
  return pods.map((p) => ({
    reported: p,
    address: "192.0.2.10",
    wakeAt: "2026-01-01T01:00:00Z",
    rejection: { reason: "Invalid", message: "no" },
  }));
};

const statusMap: FuzzTarget<{
  wire: unknown;
  presence: StatusInput["presence"];
  delivery: StatusInput["delivery"];
}> = {
  name: "mqtt.workloadStatusFor",
  input: fc.record({
    wire: fc.oneof(mutatedValue(reportedSeeds()), typedMutatedValue(reportedSeeds())),
    presence: fc.constantFrom("online", "offline", "lost", "sleeping", "unknown"),
    delivery: fc.constantFrom("queued", "received", "applied", "rejected"),
  }),
  run: ({ wire, presence, delivery }) => {
    const w = (typeof wire === "object" && wire !== null ? wire : {}) as Record<string, unknown>;
    const reported = w.reported as { uid?: unknown; hash?: unknown } | undefined;
    const uid = typeof reported?.uid === "string" ? reported.uid : "uid-1";
    const status = workloadStatusFor({
      pod: { namespace: "ns", name: "p", uid },
      desiredHash: typeof reported?.hash === "string" ? reported.hash : "h",
      appNames: ["main", "sidecar"],
      images: { main: "example.com/main:1", sidecar: "example.com/sidecar:1" },
      presence,
      delivery,
      now: NOW,
      ...(w as object),
    });
    if (!["Pending", "Running", "Succeeded", "Failed", "Unknown"].includes(status.phase))
      throw new HiddenCrash(`phase ${status.phase}`);
    if (status.apps.length < 2) throw new HiddenCrash("an app of the spec has no status");
    return accepted;
  },
};

const seedWorkload: WorkloadStatus = {
  pod: { namespace: "ns", name: "sensor", uid: "uid-1" },
  phase: "Running",
  apps: [
    {
      name: "app",
      state: { kind: "running", startedAt: NOW },
      lastState: {
        kind: "terminated",
        exitCode: 137,
        reason: "Error",
        startedAt: NOW,
        finishedAt: NOW,
      },
      ready: true,
      restartCount: 2,
      image: "registry/sensor:1.2",
    },
  ],
  deviceConnected: true,
  podIP: "192.0.2.10",
  observedAt: NOW,
};

/**
 * Pods come from the API server and workload statuses from a provider, both typed: values are
 * mutated to the edges of their types (NaN restart counts, invalid dates, huge or empty strings,
 * lists emptied or doubled), not into other types.
 */
const podStatus: FuzzTarget = {
  name: "pod.buildPodStatus",
  input: typedMutatedValue([
    ...seedPods.map((pod) => ({ pod, workload: seedWorkload })),
    {
      pod: {
        ...seedPods[0],
        status: {
          phase: "Running",
          startTime: "2026-01-01T00:00:00Z",
          qosClass: "Burstable",
          conditions: [{ type: "Ready", status: "True", lastTransitionTime: "2026-01-01T00:00:00Z" }],
          containerStatuses: [
            {
              name: "app",
              ready: true,
              restartCount: 1,
              image: "registry/sensor:1.2",
              imageID: "",
              state: { running: { startedAt: "2026-01-01T00:00:00Z" } },
              lastState: { terminated: { exitCode: 1, reason: "Error", finishedAt: "2026-01-01T00:00:00Z" } },
            },
          ],
        },
      },
      workload: { ...seedWorkload, phase: "Failed", reason: "Error", message: "exit 1" },
    },
  ]),
  run: (input) => {
    const i = (typeof input === "object" && input !== null ? input : {}) as Record<string, unknown>;
    const status = buildPodStatus({
      pod: i.pod ?? {},
      workload: i.workload as never,
      podIP: "10.250.0.2",
      hostIP: "192.0.2.1",
      now: NOW,
    });
    if (typeof status.phase !== "string") throw new HiddenCrash("no phase");
    return accepted;
  },
};

export const workloadTargets = (): FuzzTarget[] => [translation, statusMap, podStatus] as FuzzTarget[];
