/**
 * Which of a device's own labels (from its birth) go on its node, and under which key.
 *
 * A device is the least trusted party, and node labels steer the scheduler, admission and other
 * controllers, so a device never chooses its keys freely:
 * - a key in Kubernetes' reserved namespaces (`kubernetes.io`, `k8s.io` and their subdomains, so
 *   `node-role.kubernetes.io/*`, `node-restriction.kubernetes.io/*`, `topology.kubernetes.io/*`
 *   too) or in devicelet's own (`devicelet.dev/*`, and the bare `type`) is dropped, whatever the
 *   configuration says;
 * - a key already under the configured prefix (default `device.devicelet.dev/`), or in the
 *   allow-list, is kept as it is;
 * - a bare key (`line`) is re-keyed under the prefix (`device.devicelet.dev/line`): unambiguous,
 *   and the device author needs no configuration to be selectable;
 * - any other prefixed key (`example.com/line`) is dropped: moving it under the prefix would
 *   merge `a.example/x` and `b.example/x` into one key, and no Kubernetes key may hold two `/`.
 * What is dropped is returned with a reason, for an Event and a notice back to the device.
 *
 *   const { labels, dropped } = deviceNodeLabels({ line: "a", "kubernetes.io/os": "x" }, policy);
 *   // labels { "device.devicelet.dev/line": "a" }; dropped [{ key: "kubernetes.io/os", ... }]
 */

/** Configuration `nodes.deviceLabels`. */
export interface DeviceLabelPolicy {
  /** Ends in `/`, e.g. `device.devicelet.dev/`. */
  readonly prefix: string;
  /** Exact keys, or `<domain>/*` for every name under a domain. */
  readonly allow: readonly string[];
}

export const DEFAULT_DEVICE_LABEL_PREFIX = "device.devicelet.dev/";

export const DEFAULT_DEVICE_LABEL_POLICY: DeviceLabelPolicy = {
  prefix: DEFAULT_DEVICE_LABEL_PREFIX,
  allow: [],
};

/** Domains no device may write under, nor configuration allow: Kubernetes' and devicelet's own. */
const RESERVED_DOMAINS = ["kubernetes.io", "k8s.io", "devicelet.dev"] as const;
/** Bare keys devicelet sets itself. */
const RESERVED_BARE_KEYS = new Set(["type"]);

const domainOf = (key: string): string | undefined => {
  const slash = key.indexOf("/");
  return slash < 0 ? undefined : key.slice(0, slash);
};

const underDomain = (domain: string, root: string) => domain === root || domain.endsWith(`.${root}`);

/**
 * Why `key` is reserved (Kubernetes' or devicelet's own namespace), or undefined when it is not.
 * `prefix` is exempt: the configured prefix may itself be a subdomain of `devicelet.dev`.
 */
export function reservedKeyReason(key: string, prefix?: string): string | undefined {
  if (prefix !== undefined && key.startsWith(prefix)) return undefined;
  const domain = domainOf(key);
  if (domain === undefined) {
    return RESERVED_BARE_KEYS.has(key) ? `"${key}" is one of devicelet's own label keys` : undefined;
  }
  const root = RESERVED_DOMAINS.find((r) => underDomain(domain, r));
  if (root === undefined) return undefined;
  return root === "devicelet.dev"
    ? `"${key}" is in devicelet's own label namespace (${root})`
    : `"${key}" is in the reserved Kubernetes label namespace ${root}`;
}

/** Problems with a label policy from configuration, one message each; empty when it is usable. */
export function labelPolicyProblems(policy: DeviceLabelPolicy): { path: string; message: string }[] {
  const out: { path: string; message: string }[] = [];
  const prefixDomain = domainOf(policy.prefix);
  if (
    prefixDomain !== undefined &&
    (underDomain(prefixDomain, "kubernetes.io") || underDomain(prefixDomain, "k8s.io"))
  ) {
    out.push({
      path: "/prefix",
      message: `must not be in a reserved Kubernetes namespace (${prefixDomain})`,
    });
  }
  if (prefixDomain === "devicelet.dev") {
    out.push({
      path: "/prefix",
      message: "must not be devicelet.dev/ itself: devicelet's own labels live there",
    });
  }
  policy.allow.forEach((entry, i) => {
    const key = entry.endsWith("/*") ? `${entry.slice(0, -1)}x` : entry;
    const reason = reservedKeyReason(key);
    if (reason !== undefined) {
      out.push({ path: `/allow/${i}`, message: `${reason}; a device may never set it` });
    }
  });
  return out;
}

/** A device label that did not make it onto the node, and why. */
export interface DroppedLabel {
  readonly key: string;
  readonly why: string;
}

const NAME = /^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;
const SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

/** A Kubernetes label key (apimachinery `IsQualifiedName`): optional DNS subdomain ≤ 253 and `/`, a name ≤ 63. */
function isLabelKey(key: string): boolean {
  const slash = key.indexOf("/");
  if (slash < 0) return NAME.test(key);
  const [prefix, name] = [key.slice(0, slash), key.slice(slash + 1)];
  return prefix.length <= 253 && SUBDOMAIN.test(prefix) && NAME.test(name);
}

const allowed = (key: string, allow: readonly string[]) =>
  allow.some((a) => (a.endsWith("/*") ? key.startsWith(a.slice(0, -1)) : a === key));

/** The node labels a device's own labels become under `policy`; see the module doc. Pure. */
export function deviceNodeLabels(
  labels: Readonly<Record<string, string>>,
  policy: DeviceLabelPolicy,
): { labels: Record<string, string>; dropped: DroppedLabel[] } {
  const out: Record<string, string> = {};
  const dropped: DroppedLabel[] = [];
  for (const [raw, value] of Object.entries(labels)) {
    const key = domainOf(raw) === undefined && !allowed(raw, policy.allow) ? `${policy.prefix}${raw}` : raw;
    const reserved = reservedKeyReason(key, policy.prefix);
    if (!isLabelKey(key)) dropped.push({ key: raw, why: `"${key.slice(0, 80)}" is not a valid label key` });
    else if (reserved !== undefined) dropped.push({ key: raw, why: reserved });
    else if (key.startsWith(policy.prefix) || allowed(key, policy.allow)) out[key] = value;
    else
      dropped.push({
        key: raw,
        why: `"${raw}" is neither under ${policy.prefix} nor allowed by nodes.deviceLabels.allow`,
      });
  }
  return { labels: out, dropped };
}

/**
 * {@link labelPolicyProblems} of `nodes.deviceLabels` in a configuration document, with JSON
 * pointers into it; nothing when the section is missing or not of the right shape (the schema
 * reports that).
 */
export function deviceLabelConfigProblems(data: unknown): { path: string; message: string }[] {
  const section = (data as { nodes?: { deviceLabels?: unknown } } | null)?.nodes?.deviceLabels;
  if (typeof section !== "object" || section === null) return [];
  const { prefix, allow } = section as { prefix?: unknown; allow?: unknown };
  if (typeof prefix !== "string" || !Array.isArray(allow)) return [];
  if (!allow.every((a): a is string => typeof a === "string")) return [];
  return labelPolicyProblems({ prefix, allow }).map((p) => ({
    path: `/nodes/deviceLabels${p.path}`,
    message: p.message,
  }));
}
