/**
 * Pod → {@link Workload}: the transport-neutral document a provider runs. Each container becomes
 * an app with its command and args expanded, its env resolved and its mounted ConfigMap, Secret,
 * downwardAPI and projected volumes turned into files with full paths.
 *
 * Call {@link checkSupported} first: this function translates what it can carry and does not
 * judge what a provider may run. It never throws, whatever the input.
 */
import type { V1Pod } from "../kube/types.ts";
import type { AppPort, AppSpec, Workload } from "../provider/types.ts";
import { canonicalJson, sha256Hex } from "../base/canonical.ts";
import { deepFreeze } from "../base/freeze.ts";
import { ValueTable } from "../base/intern.ts";
import { resolveEnv } from "./env.ts";
import { expandVars } from "./expand.ts";
import { isServiceAccountTokenVolume } from "./features.ts";
import { ConfigError, Resolver, type ObjectLookups, type PodEvent } from "./resolver.ts";
import { effectiveSecurityContext } from "./security.ts";
import { arr, int, rec, str, stringRecord, type Model, type Rec } from "./shape.ts";
import { VolumeFiles } from "./volumes.ts";

export interface TranslateOptions {
  readonly deviceId: string;
  readonly nodeName: string;
  /** ConfigMaps and Secrets in the pod's namespace, usually from an informer cache. */
  readonly lookups: ObjectLookups;
  /** For `status.podIP(s)` in the downward API; empty when not yet known. */
  readonly podIP?: string | undefined;
  /** For `status.hostIP(s)` in the downward API. */
  readonly hostIP?: string | undefined;
  /** Node allocatable, used by `resourceFieldRef` on `limits.*` when a container sets no limit. */
  readonly allocatable?: Readonly<Record<string, string>> | undefined;
  /**
   * Env already given to the device, by container name: used as is instead of resolving env and
   * envFrom again (the kubelet resolves env once, when a container starts; later edits of the
   * ConfigMaps and Secrets it came from do not reach a running container). Volumes still follow.
   */
  readonly frozenEnv?: ReadonlyMap<string, FrozenEnv> | undefined;
}

/** A container's env as it was resolved for the device: `AppSpec.env` and `AppSpec.secretEnv`. */
export type FrozenEnv = Pick<AppSpec, "env" | "secretEnv">;

/**
 * `ok`: the workload (deeply frozen) and Events worth recording (optional references missing,
 * env names skipped). `configError`: a mandatory reference is missing or the pod is malformed;
 * `message` is what the kubelet would put in a `CreateContainerConfigError` waiting state, and the
 * workload must not be sent.
 */
export type TranslateResult =
  | { readonly kind: "ok"; readonly workload: Workload; readonly events: readonly PodEvent[] }
  | { readonly kind: "configError"; readonly message: string; readonly events: readonly PodEvent[] };

const RESTART_POLICIES = ["Always", "OnFailure", "Never"] as const;
const PROTOCOLS = ["TCP", "UDP", "SCTP"] as const;

const pick = <T extends string>(value: unknown, allowed: readonly T[], fallback: T): T =>
  allowed.find((a) => a === value) ?? fallback;

/** Translate a pod bound to `options.nodeName`. Deterministic: the same inputs give the same hash. */
export function translatePod(pod: Model<V1Pod>, options: TranslateOptions): TranslateResult {
  const podRec = rec(pod) ?? {};
  const metadata = rec(podRec["metadata"]) ?? {};
  const namespace = str(metadata["namespace"]) || "default";
  const resolver = new Resolver(namespace, options.lookups, {
    pod: podRec,
    nodeName: options.nodeName,
    podIP: options.podIP,
    hostIP: options.hostIP,
    allocatable: options.allocatable,
  });
  try {
    const workload = shareRepeated(build(podRec, metadata, namespace, options, resolver));
    return { kind: "ok", workload: deepFreeze(workload), events: resolver.events };
  } catch (err) {
    const message =
      err instanceof ConfigError
        ? err.message
        : `cannot translate pod: ${err instanceof Error ? err.message : String(err)}`;
    return { kind: "configError", message, events: resolver.events };
  }
}

function build(
  podRec: Rec,
  metadata: Rec,
  namespace: string,
  options: TranslateOptions,
  resolver: Resolver,
): Workload {
  const spec = rec(podRec["spec"]) ?? {};
  const name = str(metadata["name"]);
  if (!name) return resolver.fail("invalid pod: metadata.name is missing");
  const containers = arr(spec["containers"]);
  if (containers.length === 0) return resolver.fail("invalid pod: spec.containers is empty");

  const volumes = new VolumeFiles(arr(spec["volumes"]), resolver);
  volumes.resolveAll();
  const apps = containers.map((c, i) => {
    const container = rec(c);
    if (container === undefined) return resolver.fail(`invalid pod: spec.containers[${i}] is not an object`);
    return translateContainer(container, i, { spec, volumes, resolver, frozenEnv: options.frozenEnv });
  });

  const grace = int(spec["terminationGracePeriodSeconds"]);
  const unhashed: Omit<Workload, "hash"> = {
    pod: {
      namespace,
      name,
      uid: str(metadata["uid"]) ?? "",
      labels: stringRecord(metadata["labels"]),
      annotations: stringRecord(metadata["annotations"]),
    },
    nodeName: options.nodeName,
    deviceId: options.deviceId,
    restartPolicy: pick(spec["restartPolicy"], RESTART_POLICIES, "Always"),
    terminationGracePeriodSeconds: grace !== undefined && grace >= 0 ? grace : 30,
    apps,
  };
  return { ...unhashed, hash: workloadHash(unhashed) };
}

/**
 * The parts of workloads that replicas repeat, one shared copy each ({@link ValueTable}): every
 * replica of a Deployment has the same labels and annotations and, unless the downward API puts
 * its name or IP into them, the same apps. Held for as long as the provider holds the workload,
 * so for every pod. What came from a Secret (`secretEnv`, secret files) is never shared: the
 * table would keep it after the last pod that had it is gone.
 */
const workloadValues = new ValueTable({ generationSize: 4_096 });

function shareRepeated(workload: Workload): Workload {
  const share = <T>(value: T): T => workloadValues.share(value);
  const pod = {
    ...workload.pod,
    labels: share(workload.pod.labels),
    annotations: share(workload.pod.annotations),
  };
  const apps = workload.apps.map((app) => {
    // A Secret's value may be in the env, in a file, and in command and args through $(VAR).
    const secret = app.secretEnv.length > 0 || app.files.some((f) => f.secret);
    const parts: AppSpec = {
      ...app,
      ...(secret
        ? {}
        : {
            command: share(app.command),
            args: share(app.args),
            env: share(app.env),
            files: share(app.files),
          }),
      secretEnv: share(app.secretEnv),
      ports: share(app.ports),
      resources: share(app.resources),
      ...(app.securityContext === undefined ? {} : { securityContext: share(app.securityContext) }),
    };
    return secret ? parts : share(parts);
  });
  // The list too, when every app in it is shared (none holds a Secret's value, none too long to
  // share): 56 bytes a workload (a 5,000-pod heap snapshot).
  const sharedApps = apps.every((app) => Object.isFrozen(app)) ? share(apps) : apps;
  // A literal, not a spread of `workload`: a spread copies its layout, in which `hash` (added last)
  // sits outside the object, 40 bytes more for every workload a provider holds.
  const { nodeName, deviceId, restartPolicy, terminationGracePeriodSeconds, hash } = workload;
  return { pod, nodeName, deviceId, restartPolicy, terminationGracePeriodSeconds, apps: sharedApps, hash };
}

interface ContainerContext {
  readonly spec: Rec;
  readonly volumes: VolumeFiles;
  readonly resolver: Resolver;
  readonly frozenEnv: ReadonlyMap<string, FrozenEnv> | undefined;
}

function translateContainer(container: Rec, index: number, context: ContainerContext): AppSpec {
  const { volumes, resolver, frozenEnv } = context;
  const name = str(container["name"]);
  const image = str(container["image"]);
  if (!name) return resolver.fail(`invalid pod: spec.containers[${index}].name is missing`);
  if (!image) return resolver.fail(`invalid pod: spec.containers[${index}].image is missing`);
  const frozen = frozenEnv?.get(name);
  const { env, secretNames } = frozen
    ? { env: new Map(Object.entries(frozen.env)), secretNames: new Set(frozen.secretEnv) }
    : resolveEnv(container, resolver);
  const expand = (v: unknown) => expandVars(str(v) ?? "", (n) => env.get(n));
  const resources = rec(container["resources"]);
  const securityContext = effectiveSecurityContext(context.spec, container);
  return {
    name,
    image,
    command: arr(container["command"]).map(expand),
    args: arr(container["args"]).map(expand),
    env: Object.fromEntries(env),
    secretEnv: [...secretNames].sort(),
    files: volumes.forContainer(container, env),
    ports: arr(container["ports"]).flatMap((p): AppPort[] => {
      const port = rec(p);
      const containerPort = int(port?.["containerPort"]);
      if (port === undefined || containerPort === undefined) return [];
      const portName = str(port["name"]);
      const protocol = pick(port["protocol"], PROTOCOLS, "TCP");
      return [portName ? { name: portName, containerPort, protocol } : { containerPort, protocol }];
    }),
    resources: {
      requests: stringRecord(resources?.["requests"]),
      limits: stringRecord(resources?.["limits"]),
    },
    // Absent rather than empty: the hash of a pod without one stays what it was.
    ...(securityContext === undefined ? {} : { securityContext }),
  };
}

/**
 * The content hash of a workload: SHA-256 (hex) of the canonical JSON of everything but `pod.uid`
 * (and `hash` itself), so a pod re-created under the same name with the same spec hashes the same.
 */
export function workloadHash(workload: Omit<Workload, "hash"> & { hash?: string }): string {
  const { hash: _hash, pod, ...rest } = workload;
  const { uid: _uid, ...podWithoutUid } = pod;
  return sha256Hex(canonicalJson({ ...rest, pod: podWithoutUid }));
}

/**
 * Names of the ConfigMaps and Secrets (in the pod's namespace) the pod refers to from env, envFrom
 * and volumes, sorted and unique, so the controller can requeue the pod when one of them appears
 * or changes. The injected service-account volume is not counted. With `env: false`, only the
 * volumes' references (what still matters once env is frozen).
 */
export function referencedObjects(
  pod: Model<V1Pod>,
  options: { readonly env?: boolean } = {},
): { configMaps: string[]; secrets: string[] } {
  const configMaps = new Set<string>();
  const secrets = new Set<string>();
  const addName = (target: Set<string>, v: unknown) => {
    const name = str(v);
    if (name) target.add(name);
  };
  const spec = rec(rec(pod)?.["spec"]);
  const containers =
    options.env === false ? [] : [...arr(spec?.["initContainers"]), ...arr(spec?.["containers"])];
  for (const c of containers) {
    const container = rec(c);
    for (const e of arr(container?.["envFrom"])) {
      addName(configMaps, rec(rec(e)?.["configMapRef"])?.["name"]);
      addName(secrets, rec(rec(e)?.["secretRef"])?.["name"]);
    }
    for (const e of arr(container?.["env"])) {
      const valueFrom = rec(rec(e)?.["valueFrom"]);
      addName(configMaps, rec(valueFrom?.["configMapKeyRef"])?.["name"]);
      addName(secrets, rec(valueFrom?.["secretKeyRef"])?.["name"]);
    }
  }
  for (const v of arr(spec?.["volumes"])) {
    const volume = rec(v);
    if (volume === undefined || isServiceAccountTokenVolume(volume)) continue;
    addName(configMaps, rec(volume["configMap"])?.["name"]);
    addName(secrets, rec(volume["secret"])?.["secretName"]);
    for (const s of arr(rec(volume["projected"])?.["sources"])) {
      addName(configMaps, rec(rec(s)?.["configMap"])?.["name"]);
      addName(secrets, rec(rec(s)?.["secret"])?.["name"]);
    }
  }
  return { configMaps: [...configMaps].sort(), secrets: [...secrets].sort() };
}
