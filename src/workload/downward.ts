/**
 * The downward API: pod fields and container resources as strings, for env `fieldRef` /
 * `resourceFieldRef` and for `downwardAPI` volume items, following the kubelet
 * (pkg/fieldpath `ExtractFieldPathAsString`, kubelet `podFieldSelectorRuntimeValue`,
 * pkg/api/v1/resource `ExtractContainerResourceValue`).
 *
 * Resolvers return `{ value }` or `{ error }` with the kubelet's wording; they never throw.
 */
import { formatResourceValue, parseQuantity } from "../base/quantity.ts";
import { arr, own, rec, str, stringEntries, type Rec } from "./shape.ts";

export type Resolved = { readonly value: string } | { readonly error: string };

/** What the downward API can see besides the pod itself. */
export interface DownwardContext {
  readonly pod: Rec;
  readonly nodeName: string;
  readonly podIP?: string | undefined;
  readonly hostIP?: string | undefined;
  /** Node allocatable, used for `limits.*` when the container sets no limit (as the kubelet does). */
  readonly allocatable?: Readonly<Record<string, string>> | undefined;
}

/** Go's `%q` for the strings a label or annotation holds (JSON quoting, minus the `\u` forms Go avoids). */
function goQuote(s: string): string {
  return JSON.stringify(s).replace(/\\u00([0-9a-f]{2})/g, "\\x$1");
}

/** `fieldpath.FormatMap`: `key="value"` lines sorted by key, no trailing newline. */
export function formatMap(map: unknown): string {
  return stringEntries(map)
    .map(([k, v]) => `${k}=${goQuote(v)}`)
    .join("\n");
}

const SUBSCRIPT = /^metadata\.(labels|annotations)\['(.*)'\]$/;

/**
 * A pod field by path. `volume` restricts to the paths a downwardAPI volume accepts (metadata
 * only); env additionally sees `spec.nodeName`, `spec.serviceAccountName`, `status.hostIP(s)`
 * and `status.podIP(s)`.
 */
export function resolveFieldRef(fieldPath: string, ctx: DownwardContext, volume: boolean): Resolved {
  const metadata = rec(ctx.pod["metadata"]);
  const spec = rec(ctx.pod["spec"]);
  const subscript = SUBSCRIPT.exec(fieldPath);
  if (subscript !== null) {
    const value = own(metadata?.[subscript[1] ?? ""], subscript[2] ?? "");
    return { value: str(value) ?? "" };
  }
  switch (fieldPath) {
    case "metadata.name":
    case "metadata.namespace":
    case "metadata.uid":
      return { value: str(metadata?.[fieldPath.slice("metadata.".length)]) ?? "" };
    case "metadata.labels":
    case "metadata.annotations":
      return { value: formatMap(metadata?.[fieldPath.slice("metadata.".length)]) };
  }
  if (!volume) {
    switch (fieldPath) {
      case "spec.nodeName":
        return { value: str(spec?.["nodeName"]) ?? ctx.nodeName };
      case "spec.serviceAccountName":
        return { value: str(spec?.["serviceAccountName"]) ?? "" };
      case "status.hostIP":
      case "status.hostIPs":
        return { value: ctx.hostIP ?? "" };
      case "status.podIP":
      case "status.podIPs":
        return { value: ctx.podIP ?? "" };
    }
  }
  return { error: `unsupported fieldPath: ${fieldPath}` };
}

const RESOURCE = /^(limits|requests)\.(cpu|memory|ephemeral-storage|hugepages-[A-Za-z0-9.]+)$/;

/**
 * A container resource by `resourceFieldRef`, rounded up in the divisor's units (default 1).
 * `containerName` defaults to `selfName` (env); downwardAPI volumes must name the container.
 * A missing limit falls back to node allocatable when given, and a missing request to 0.
 */
export function resolveResourceFieldRef(
  ref: Rec,
  ctx: DownwardContext,
  selfName: string | undefined,
): Resolved {
  const resource = str(ref["resource"]) ?? "";
  const containerName = str(ref["containerName"]) || selfName;
  if (containerName === undefined)
    return { error: `resourceFieldRef ${resource}: containerName is required` };
  const spec = rec(ctx.pod["spec"]);
  const container = [...arr(spec?.["containers"]), ...arr(spec?.["initContainers"])]
    .map(rec)
    .find((c) => str(c?.["name"]) === containerName);
  if (container === undefined) return { error: `container ${containerName} not found` };
  const match = RESOURCE.exec(resource);
  if (match === null) return { error: `unsupported container resource : ${resource}` };
  const kind = match[1] ?? "";
  const name = match[2] ?? "";
  const set = own(rec(container["resources"])?.[kind], name);
  const raw = str(set) ?? (kind === "limits" ? ctx.allocatable?.[name] : undefined) ?? "0";
  const divisorText = str(ref["divisor"]) ?? "1";
  const value = parseQuantity(raw);
  const divisor = parseQuantity(divisorText === "" || divisorText === "0" ? "1" : divisorText);
  if (value === undefined) return { error: `invalid quantity ${JSON.stringify(raw)} for ${resource}` };
  if (divisor === undefined)
    return { error: `invalid divisor ${JSON.stringify(divisorText)} for ${resource}` };
  const formatted = formatResourceValue(name, value, divisor);
  return formatted === undefined
    ? { error: `divisor ${divisorText} is too small for ${resource}` }
    : { value: formatted };
}
