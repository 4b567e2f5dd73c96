/**
 * The pod's security context, read the way Kubernetes merges it (pkg/securitycontext): fields set
 * on the container win over the same fields on the pod; `fsGroup` and `supplementalGroups` exist on
 * the pod only; `readOnlyRootFilesystem`, `allowPrivilegeEscalation` and `capabilities` on the
 * container only. `privileged` is its own {@link PodFeature.Privileged} and is not read here.
 *
 * Three answers, so that no field is ever silently dropped:
 * - {@link effectiveSecurityContext}: what a device is asked to honour for one container;
 * - {@link securityContextUses}: the set fields, each needing {@link PodFeature.SecurityContext};
 * - {@link unsupportedSecurityFields}: set fields no device can honour (SELinux, sysctls, AppArmor,
 *   Windows options, a non-default procMount, a Localhost seccomp profile, the volume ownership
 *   policies): devicelet refuses the pod naming them.
 *
 * Never throws, whatever the input.
 */
import { PodFeature, type AppSecurityContext } from "../provider/types.ts";
import { arr, int, rec, str, type Rec } from "./shape.ts";

/** Fields a container's context may set that override the pod's (core/v1 SecurityContext). */
const MERGED = ["runAsUser", "runAsGroup", "runAsNonRoot", "seccompProfile"] as const;
/** Container-only fields carried to the device. */
const CONTAINER_ONLY = ["readOnlyRootFilesystem", "allowPrivilegeEscalation", "capabilities"] as const;
/** Pod-only fields carried to the device. */
const POD_ONLY = ["fsGroup", "supplementalGroups"] as const;

const CONTAINER_KEYS: readonly string[] = [...MERGED, ...CONTAINER_ONLY];
const POD_KEYS: readonly string[] = [...MERGED, ...POD_ONLY];

/** Set fields no provider can carry, at either level. */
const NEVER_POD = [
  "seLinuxOptions",
  "windowsOptions",
  "sysctls",
  "appArmorProfile",
  "fsGroupChangePolicy",
  "supplementalGroupsPolicy",
  "seLinuxChangePolicy",
] as const;
const NEVER_CONTAINER = ["seLinuxOptions", "windowsOptions", "appArmorProfile"] as const;

const SECCOMP_TYPES = ["RuntimeDefault", "Unconfined"] as const;

const isSet = (v: unknown): boolean => v !== undefined && v !== null && !(Array.isArray(v) && v.length === 0);

const strings = (v: unknown): string[] | undefined => {
  const list = arr(v).flatMap((s) => (typeof s === "string" ? [s] : []));
  return list.length === 0 ? undefined : list;
};

/** One field's value as carried, or undefined when unset or of the wrong type. */
function carried(key: string, value: unknown): unknown {
  switch (key) {
    case "runAsUser":
    case "runAsGroup":
    case "fsGroup": {
      const n = int(value);
      return n !== undefined && n >= 0 ? n : undefined;
    }
    case "runAsNonRoot":
    case "readOnlyRootFilesystem":
    case "allowPrivilegeEscalation":
      return typeof value === "boolean" ? value : undefined;
    case "supplementalGroups": {
      const groups = arr(value).flatMap((g) => {
        const n = int(g);
        return n !== undefined && n >= 0 ? [n] : [];
      });
      return groups.length === 0 ? undefined : groups;
    }
    case "capabilities": {
      const caps = rec(value);
      const add = strings(caps?.["add"]);
      const drop = strings(caps?.["drop"]);
      if (add === undefined && drop === undefined) return undefined;
      return { ...(add ? { add } : {}), ...(drop ? { drop } : {}) };
    }
    case "seccompProfile": {
      const type = str(rec(value)?.["type"]);
      return SECCOMP_TYPES.find((t) => t === type) === undefined ? undefined : { type };
    }
    default:
      return undefined;
  }
}

/**
 * The container's effective security context, or undefined when neither the pod nor the container
 * sets a carried field (so documents of pods without one are unchanged). Keys are in a fixed order.
 */
export function effectiveSecurityContext(podSpec: Rec, container: Rec): AppSecurityContext | undefined {
  const pod = rec(podSpec["securityContext"]) ?? {};
  const own = rec(container["securityContext"]) ?? {};
  const entries = [...MERGED, ...CONTAINER_ONLY, ...POD_ONLY].flatMap((key): [string, unknown][] => {
    const value =
      (CONTAINER_KEYS.includes(key) ? carried(key, own[key]) : undefined) ??
      (POD_KEYS.includes(key) ? carried(key, pod[key]) : undefined);
    return value === undefined ? [] : [[key, value]];
  });
  return entries.length === 0 ? undefined : Object.fromEntries(entries);
}

/** The carried fields a pod sets, with their concrete paths, in spec order. */
export function securityContextUses(spec: Rec): { field: string; feature: PodFeature }[] {
  const feature = PodFeature.SecurityContext;
  const uses: { field: string; feature: PodFeature }[] = [];
  const pod = rec(spec["securityContext"]) ?? {};
  for (const key of POD_KEYS)
    if (carried(key, pod[key]) !== undefined) uses.push({ feature, field: `spec.securityContext.${key}` });
  for (const list of ["initContainers", "containers"] as const) {
    arr(spec[list]).forEach((c, i) => {
      const own = rec(rec(c)?.["securityContext"]) ?? {};
      for (const key of CONTAINER_KEYS)
        if (carried(key, own[key]) !== undefined)
          uses.push({ feature, field: `spec.${list}[${i}].securityContext.${key}` });
    });
  }
  return uses;
}

/**
 * Set fields no device can honour, as field paths: the never-carried ones above, a seccomp
 * profile other than RuntimeDefault or Unconfined, a procMount other than Default, and a carried
 * field with a value of the wrong shape (a negative uid, a string), which must not read as unset.
 */
export function unsupportedSecurityFields(spec: Rec): string[] {
  const fields: string[] = [];
  const check = (context: Rec, base: string, never: readonly string[], keys: readonly string[]) => {
    for (const key of never) if (isSet(context[key])) fields.push(`${base}.${key}`);
    for (const key of keys)
      if (isSet(context[key]) && carried(key, context[key]) === undefined && !emptyValue(key, context[key]))
        fields.push(`${base}.${key}`);
  };
  check(rec(spec["securityContext"]) ?? {}, "spec.securityContext", NEVER_POD, POD_KEYS);
  for (const list of ["initContainers", "containers"] as const) {
    arr(spec[list]).forEach((c, i) => {
      const own = rec(rec(c)?.["securityContext"]) ?? {};
      const base = `spec.${list}[${i}].securityContext`;
      check(own, base, NEVER_CONTAINER, CONTAINER_KEYS);
      const procMount = own["procMount"];
      if (isSet(procMount) && procMount !== "Default") fields.push(`${base}.procMount`);
    });
  }
  return fields;
}

/** A set value that asks for nothing: `capabilities: {}` or with empty lists. */
function emptyValue(key: string, value: unknown): boolean {
  if (key !== "capabilities") return false;
  const caps = rec(value);
  return caps !== undefined && arr(caps["add"]).length === 0 && arr(caps["drop"]).length === 0;
}
