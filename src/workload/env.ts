/**
 * A container's environment, resolved the way the kubelet does it (kubelet_pods.go
 * `makeEnvironmentVariables`): first every `envFrom` source in order, then every `env` entry in
 * order, each `value` expanded against what is defined so far; `valueFrom` values are not expanded.
 * Later definitions of a name replace earlier ones. Service-link variables are not generated:
 * devices do not reach cluster Services by environment.
 */
import { resolveFieldRef, resolveResourceFieldRef, type Resolved } from "./downward.ts";
import { expandVars, referencedVars } from "./expand.ts";
import { EventReason, asText, type RefKind, type Resolver } from "./resolver.ts";
import { arr, bool, rec, str, type Rec } from "./shape.ts";

/** The resolved environment, in definition order, and which names carry Secret material. */
export interface ResolvedEnv {
  readonly env: Map<string, string>;
  readonly secretNames: Set<string>;
}

/**
 * What the kubelet accepts as an env var name from `envFrom` (apimachinery `IsEnvVarName`, the
 * strict C-identifier-like form; a device shell or firmware may not cope with anything looser).
 */
const ENV_VAR_NAME = /^[-._a-zA-Z][-._a-zA-Z0-9]*$/;
export const isEnvVarName = (name: string): boolean => ENV_VAR_NAME.test(name);

const LABEL: Record<RefKind, string> = { configmap: "ConfigMap", secret: "Secret" };

/** Resolve `container.envFrom` and `container.env`; fails the resolver on a mandatory miss. */
export function resolveEnv(container: Rec, resolver: Resolver): ResolvedEnv {
  const env = new Map<string, string>();
  const secretNames = new Set<string>();
  const set = (name: string, value: string, secret: boolean) => {
    env.set(name, value);
    if (secret) secretNames.add(name);
    else secretNames.delete(name);
  };

  for (const source of arr(container["envFrom"]).map(rec)) {
    if (source === undefined) continue;
    const prefix = str(source["prefix"]) ?? "";
    const cmRef = rec(source["configMapRef"]);
    const secretRef = rec(source["secretRef"]);
    const ref = cmRef ?? secretRef;
    if (ref === undefined) continue;
    const kind: RefKind = cmRef !== undefined ? "configmap" : "secret";
    const name = str(ref["name"]) ?? "";
    const object = resolver.require(kind, name, bool(ref["optional"]));
    if (object === undefined) continue;
    const invalid: string[] = [];
    for (const [key, value] of [...object.data].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
      if (value.binary) continue;
      const envName = prefix + key;
      if (!isEnvVarName(envName)) invalid.push(envName);
      else set(envName, asText(value), kind === "secret");
    }
    if (invalid.length > 0) {
      const what = kind === "configmap" ? "configMap" : "secret";
      resolver.event(
        "Warning",
        EventReason.InvalidEnvironmentVariableNames,
        `Keys [${invalid.join(", ")}] from the EnvFrom ${what} ${resolver.namespace}/${name} were skipped since they are considered invalid environment variable names.`,
      );
    }
  }

  for (const entry of arr(container["env"]).map(rec)) {
    const name = str(entry?.["name"]);
    if (entry === undefined || name === undefined || name === "") continue;
    const value = str(entry["value"]) ?? "";
    const valueFrom = rec(entry["valueFrom"]);
    if (value !== "" || valueFrom === undefined) {
      const expanded = expandVars(value, (n) => env.get(n));
      set(
        name,
        expanded,
        referencedVars(value).some((n) => secretNames.has(n)),
      );
      continue;
    }
    const resolved = resolveValueFrom(name, valueFrom, container, resolver);
    if (resolved !== undefined) set(name, resolved.value, resolved.secret);
  }
  return { env, secretNames };
}

/** One `valueFrom`; undefined when an optional reference is missing (the variable is not set). */
function resolveValueFrom(
  envName: string,
  valueFrom: Rec,
  container: Rec,
  resolver: Resolver,
): { value: string; secret: boolean } | undefined {
  const fieldRef = rec(valueFrom["fieldRef"]);
  const resourceRef = rec(valueFrom["resourceFieldRef"]);
  if (fieldRef !== undefined)
    return plain(resolveFieldRef(str(fieldRef["fieldPath"]) ?? "", resolver.downward, false), resolver);
  if (resourceRef !== undefined)
    return plain(resolveResourceFieldRef(resourceRef, resolver.downward, str(container["name"])), resolver);

  const cmRef = rec(valueFrom["configMapKeyRef"]);
  const secretRef = rec(valueFrom["secretKeyRef"]);
  const ref = cmRef ?? secretRef;
  if (ref === undefined) return { value: "", secret: false };
  const kind: RefKind = cmRef !== undefined ? "configmap" : "secret";
  const name = str(ref["name"]) ?? "";
  const key = str(ref["key"]) ?? "";
  const optional = bool(ref["optional"]);
  const skipping = `skipping optional envvar ${JSON.stringify(envName)}: `;
  const object = resolver.require(kind, name, optional, skipping);
  if (object === undefined) return undefined;
  const value = object.data.get(key);
  if (value === undefined || value.binary) {
    const missing = `key ${JSON.stringify(key)} does not exist in ${kind} ${JSON.stringify(name)}`;
    if (optional) {
      resolver.event("Warning", `Optional${LABEL[kind]}KeyNotFound`, skipping + missing);
      return undefined;
    }
    resolver.event("Warning", `Mandatory${LABEL[kind]}KeyNotFound`, missing);
    return resolver.fail(`couldn't find key ${key} in ${LABEL[kind]} ${resolver.namespace}/${name}`);
  }
  return { value: asText(value), secret: kind === "secret" };
}

function plain(resolved: Resolved, resolver: Resolver): { value: string; secret: boolean } {
  if ("error" in resolved) return resolver.fail(resolved.error);
  return { value: resolved.value, secret: false };
}
