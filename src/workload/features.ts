/**
 * Which pod fields a pod uses that a provider must declare support for, and which fields no
 * provider can honour at all. The engine refuses a pod (phase Failed, reason `Unsupported`) when
 * {@link checkSupported} finds anything, so nothing a device cannot do is silently dropped.
 *
 * Plain containers with name, image, command, args, env and envFrom never need a feature.
 *
 * The service-account token volume the API server injects into every pod (`kube-api-access-*`,
 * with its mounts) is skipped: it is not something the pod author asked for, a device has no use
 * for a token to this cluster, and refusing it would refuse every pod. Set
 * `automountServiceAccountToken: false` to keep it out of the pod altogether.
 */
import type { V1Pod } from "../kube/types.ts";
import { PodFeature } from "../provider/types.ts";
import { securityContextUses, unsupportedSecurityFields } from "./security.ts";
import { arr, bool, rec, str, type Model, type Rec } from "./shape.ts";

/** One pod field that needs a provider feature, with its concrete path (`spec.volumes[1].hostPath`). */
export interface FeatureUse {
  readonly feature: PodFeature;
  readonly field: string;
}

/** A field that cannot be honoured, with a message for the pod's status and Events. */
export interface UnsupportedField {
  readonly field: string;
  readonly message: string;
}

const VOLUME_FEATURES: readonly [string, PodFeature][] = [
  ["configMap", PodFeature.ConfigMapVolumes],
  ["secret", PodFeature.SecretVolumes],
  ["downwardAPI", PodFeature.DownwardAPIVolumes],
  ["projected", PodFeature.ProjectedVolumes],
  ["emptyDir", PodFeature.EmptyDirVolumes],
  ["hostPath", PodFeature.HostPathVolumes],
  ["persistentVolumeClaim", PodFeature.PersistentVolumeClaims],
];
const KNOWN_VOLUME_KEYS = new Set(["name", ...VOLUME_FEATURES.map(([key]) => key)]);
/** Projected sources the translator can resolve; the others (tokens, trust bundles, certificates) it cannot. */
export const PROJECTED_SOURCES = ["configMap", "secret", "downwardAPI"] as const;

const PROBES = ["livenessProbe", "readinessProbe", "startupProbe"] as const;

/** True for the API server's injected `kube-api-access-*` volume (token + kube-root-ca.crt + namespace). */
export function isServiceAccountTokenVolume(volume: unknown): boolean {
  const v = rec(volume);
  const name = str(v?.["name"]);
  const projected = rec(v?.["projected"]);
  if (name === undefined || !name.startsWith("kube-api-access-") || projected === undefined) return false;
  const sources = arr(projected["sources"]);
  return (
    sources.length > 0 &&
    sources.every((s) => {
      const source = rec(s);
      if (source === undefined) return false;
      if (source["serviceAccountToken"] !== undefined || source["downwardAPI"] !== undefined) return true;
      return str(rec(source["configMap"])?.["name"]) === "kube-root-ca.crt";
    })
  );
}

/** Names of the injected token volumes of a pod, whose mounts are skipped too. */
export function serviceAccountVolumeNames(pod: Model<V1Pod>): Set<string> {
  const names = new Set<string>();
  for (const volume of arr(rec(rec(pod)?.["spec"])?.["volumes"])) {
    const name = str(rec(volume)?.["name"]);
    if (name !== undefined && isServiceAccountTokenVolume(volume)) names.add(name);
  }
  return names;
}

const nonEmpty = (v: unknown): boolean =>
  Array.isArray(v) ? v.length > 0 : rec(v) !== undefined && Object.keys(rec(v) ?? {}).length > 0;

function containerFeatures(container: Rec, base: string, skipMounts: ReadonlySet<string>): FeatureUse[] {
  const uses: FeatureUse[] = [];
  const add = (feature: PodFeature, field: string) => uses.push({ feature, field: `${base}.${field}` });
  if (nonEmpty(container["ports"])) add(PodFeature.Ports, "ports");
  for (const probe of PROBES) if (rec(container[probe]) !== undefined) add(PodFeature.Probes, probe);
  if (nonEmpty(container["lifecycle"])) add(PodFeature.Lifecycle, "lifecycle");
  const mounts = arr(container["volumeMounts"]).filter((m) => !skipMounts.has(str(rec(m)?.["name"]) ?? ""));
  if (mounts.length > 0) add(PodFeature.VolumeMounts, "volumeMounts");
  if (bool(rec(container["securityContext"])?.["privileged"]))
    add(PodFeature.Privileged, "securityContext.privileged");
  const resources = rec(container["resources"]);
  if (nonEmpty(resources?.["requests"]) || nonEmpty(resources?.["limits"]) || nonEmpty(resources?.["claims"]))
    add(PodFeature.ResourceLimits, "resources");
  return uses;
}

/**
 * Every {@link PodFeature} the pod uses, each with the concrete field path that uses it, in spec
 * order. Empty for a pod of plain containers. Never throws, whatever the input.
 */
export function requiredFeatures(pod: Model<V1Pod>): FeatureUse[] {
  const spec = rec(rec(pod)?.["spec"]);
  if (spec === undefined) return [];
  const skipMounts = serviceAccountVolumeNames(pod);
  const uses: FeatureUse[] = [];
  if (arr(spec["initContainers"]).length > 0)
    uses.push({ feature: PodFeature.InitContainers, field: "spec.initContainers" });
  if (arr(spec["ephemeralContainers"]).length > 0)
    uses.push({ feature: PodFeature.EphemeralContainers, field: "spec.ephemeralContainers" });
  for (const [list, items] of [
    ["initContainers", arr(spec["initContainers"])],
    ["containers", arr(spec["containers"])],
  ] as const) {
    items.forEach((c, i) => {
      const container = rec(c);
      if (container !== undefined)
        uses.push(...containerFeatures(container, `spec.${list}[${i}]`, skipMounts));
    });
  }
  arr(spec["volumes"]).forEach((v, i) => {
    const volume = rec(v);
    if (volume === undefined || skipMounts.has(str(volume["name"]) ?? "")) return;
    for (const [key, feature] of VOLUME_FEATURES)
      if (volume[key] !== undefined && volume[key] !== null)
        uses.push({ feature, field: `spec.volumes[${i}].${key}` });
  });
  if (bool(spec["hostNetwork"])) uses.push({ feature: PodFeature.HostNetwork, field: "spec.hostNetwork" });
  uses.push(...securityContextUses(spec));
  return uses;
}

/**
 * Fields no {@link PodFeature} covers and the translator cannot carry to a device: other volume
 * types, projected token/certificate sources, `env[].valueFrom.fileKeyRef`, `workingDir`,
 * `volumeDevices`, `stdin`/`tty`, `hostPID`/`hostIPC`, `resourceClaims`, and the security-context
 * fields no device can honour (security.ts: SELinux, sysctls, AppArmor, …). Messages read
 * `<field> is not supported by provider <name>`.
 */
export function unsupportedFields(pod: Model<V1Pod>, providerName: string): UnsupportedField[] {
  const spec = rec(rec(pod)?.["spec"]);
  if (spec === undefined) return [];
  const fields: string[] = [];
  for (const key of ["hostPID", "hostIPC"]) if (bool(spec[key])) fields.push(`spec.${key}`);
  if (nonEmpty(spec["resourceClaims"])) fields.push("spec.resourceClaims");
  fields.push(...unsupportedSecurityFields(spec));
  for (const list of ["initContainers", "containers"] as const) {
    arr(spec[list]).forEach((c, i) => {
      const container = rec(c);
      if (container === undefined) return;
      const base = `spec.${list}[${i}]`;
      if (str(container["workingDir"])) fields.push(`${base}.workingDir`);
      if (nonEmpty(container["volumeDevices"])) fields.push(`${base}.volumeDevices`);
      for (const key of ["stdin", "tty"]) if (bool(container[key])) fields.push(`${base}.${key}`);
      arr(container["env"]).forEach((e, j) => {
        if (rec(rec(rec(e)?.["valueFrom"])?.["fileKeyRef"]) !== undefined)
          fields.push(`${base}.env[${j}].valueFrom.fileKeyRef`);
      });
    });
  }
  arr(spec["volumes"]).forEach((v, i) => {
    const volume = rec(v);
    if (volume === undefined || isServiceAccountTokenVolume(volume)) return;
    for (const key of Object.keys(volume))
      if (!KNOWN_VOLUME_KEYS.has(key) && volume[key] !== undefined && volume[key] !== null)
        fields.push(`spec.volumes[${i}].${key}`);
    arr(rec(volume["projected"])?.["sources"]).forEach((s, j) => {
      for (const key of Object.keys(rec(s) ?? {}))
        if (!(PROJECTED_SOURCES as readonly string[]).includes(key))
          fields.push(`spec.volumes[${i}].projected.sources[${j}].${key}`);
    });
  });
  return fields.map((field) => ({ field, message: `${field} is not supported by provider ${providerName}` }));
}

/**
 * Whether `providerName`, declaring `supports`, can run the pod. Undefined when it can; otherwise
 * the first offending field and a message naming every offending field at once, e.g.
 * `spec.volumes[1].hostPath is not supported by provider mock`, or
 * `spec.hostNetwork, spec.volumes[1].hostPath are not supported by provider mock`.
 */
export function checkSupported(
  pod: Model<V1Pod>,
  supports: readonly PodFeature[],
  providerName: string,
): UnsupportedField | undefined {
  const declared = new Set<string>(supports);
  const fields = [
    ...requiredFeatures(pod)
      .filter((use) => !declared.has(use.feature))
      .map((use) => use.field),
    ...unsupportedFields(pod, providerName).map((u) => u.field),
  ];
  const first = fields[0];
  if (first === undefined) return undefined;
  const verb = fields.length === 1 ? "is" : "are";
  return { field: first, message: `${fields.join(", ")} ${verb} not supported by provider ${providerName}` };
}
