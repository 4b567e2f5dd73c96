/**
 * Valid {@link Workload}s for provider tests, hashed the way the engine hashes them (everything but
 * the uid, canonical JSON, SHA-256), so equal content gives equal hashes and any change a new one.
 *
 *   const w = workload({ name: "web", deviceId: "gw-1", image: "example/app:1" });
 *   await provider.createPod(w);
 *   const v2 = workload({ name: "web", uid: w.pod.uid, deviceId: "gw-1", image: "example/app:1", version: 2 });
 *   w.hash !== v2.hash;                                     // same pod, new content (app `app-v2`)
 *   refOf(w);                                               // { namespace, name, uid }
 */
import { randomUUID } from "node:crypto";
import type { AppSpec, PodRef, Workload } from "../provider/types.ts";
import { workloadHash } from "../workload/translate.ts";

export interface WorkloadOptions {
  readonly name: string;
  readonly deviceId: string;
  /** Image of every app. */
  readonly image: string;
  readonly namespace?: string;
  /** Default: a fresh random uid. */
  readonly uid?: string;
  /** Node name; default the device id (what the MQTT and mock providers use). */
  readonly nodeName?: string;
  /**
   * Content version: version `n` names its app `app-v<n>` and sets `KIT_VERSION=n`, so two versions
   * hash differently and a status tells which one runs (by its apps' names). Default 1.
   */
  readonly version?: number;
  /** Number of apps (containers); default 1. Apps after the first are `app-v<n>-<i>`. */
  readonly apps?: number;
  readonly restartPolicy?: Workload["restartPolicy"];
  readonly terminationGracePeriodSeconds?: number;
  readonly labels?: Readonly<Record<string, string>>;
}

/** The app names of version `version` of a kit workload with `apps` apps. */
export const appNames = (version = 1, apps = 1): string[] =>
  Array.from({ length: apps }, (_, i) => (i === 0 ? `app-v${version}` : `app-v${version}-${i}`));

/** A plain app: image and env only, no command, files, ports or resources. */
export const app = (name: string, image: string, env: Readonly<Record<string, string>> = {}): AppSpec => ({
  name,
  image,
  command: [],
  args: [],
  env,
  secretEnv: [],
  files: [],
  ports: [],
  resources: { requests: {}, limits: {} },
});

export function workload(options: WorkloadOptions): Workload {
  const version = options.version ?? 1;
  const apps = appNames(version, options.apps ?? 1).map((name) =>
    app(name, options.image, { KIT_VERSION: String(version) }),
  );
  const unhashed: Omit<Workload, "hash"> = {
    pod: {
      namespace: options.namespace ?? "default",
      name: options.name,
      uid: options.uid ?? randomUUID(),
      labels: options.labels ?? {},
      annotations: {},
    },
    nodeName: options.nodeName ?? options.deviceId,
    deviceId: options.deviceId,
    restartPolicy: options.restartPolicy ?? "Always",
    terminationGracePeriodSeconds: options.terminationGracePeriodSeconds ?? 30,
    apps,
  };
  return { ...unhashed, hash: workloadHash(unhashed) };
}

/** The {@link PodRef} of a workload, without its labels and annotations. */
export const refOf = (w: Pick<Workload, "pod">): PodRef => ({
  namespace: w.pod.namespace,
  name: w.pod.name,
  uid: w.pod.uid,
});
