/**
 * What of a device's birth may reach its Node: {@link checkBirth} applies the label policy
 * (labels.ts), drops addresses that fail the address checks (addresses.ts) and capacity entries
 * the API server would refuse, and says what it left out and why, so the node controller can
 * record an Event and send the device a notice. Pure.
 *
 * Capacity: a bad entry is left out and the node is registered with the rest. A node with less
 * capacity is safe (the scheduler can only place fewer pods there), while refusing the whole node
 * would take a device off the cluster, with the pods it already runs, over one bad extended
 * resource. A left-out `pods` falls back to the default, as for a device that states none.
 * The rules are the API server's, checked against Kubernetes 1.36: a quantity in the apimachinery
 * grammar, not negative, and whole for `pods` and extended resources (`example.com/gpu`).
 *
 *   const { device, problems } = checkBirth(info, { labels: policy, addresses: addressChecker([]) });
 *   for (const p of problems) events.record({ ..., reason: p.reason, message: p.message });
 */
import type { DeviceInfo } from "../provider/types.ts";
import { parseSignedQuantity } from "../base/quantity.ts";
import type { AddressChecker } from "./addresses.ts";
import { deviceNodeLabels, type DeviceLabelPolicy } from "./labels.ts";

export const BirthProblemReason = {
  Label: "DeviceLabelRefused",
  Address: "InvalidAddress",
  Capacity: "InvalidCapacity",
} as const;
export type BirthProblemReason = (typeof BirthProblemReason)[keyof typeof BirthProblemReason];

/** One part of a birth that did not reach the node. */
export interface BirthProblem {
  readonly reason: BirthProblemReason;
  readonly message: string;
}

export interface BirthPolicy {
  readonly labels: DeviceLabelPolicy;
  readonly addresses: AddressChecker;
}

/**
 * Whether `name` holds whole numbers only, as the API server requires of node capacity: `pods`
 * and extended resources (a domain other than `kubernetes.io`, and not `requests.*`).
 */
function integerResource(name: string): boolean {
  if (name === "pods") return true;
  const slash = name.indexOf("/");
  if (slash < 0 || name.startsWith("requests.")) return false;
  const domain = name.slice(0, slash);
  return domain !== "kubernetes.io" && !domain.endsWith(".kubernetes.io");
}

/** Why the API server would refuse `value` as the node capacity of `name`, or undefined. */
export function capacityProblem(name: string, value: string): string | undefined {
  const q = parseSignedQuantity(value);
  const shown = JSON.stringify(value.slice(0, 64));
  if (q === undefined) return `capacity ${name}=${shown} is not a Kubernetes quantity`;
  if (q.negative) return `capacity ${name}=${shown} is negative`;
  if (integerResource(name) && q.magnitude.num % q.magnitude.den !== 0n) {
    return `capacity ${name}=${shown} must be a whole number`;
  }
  return undefined;
}

/** The device as its node may show it, and what was left out; see the module doc. */
export function checkBirth(
  device: DeviceInfo,
  policy: BirthPolicy,
): { device: DeviceInfo; problems: BirthProblem[] } {
  const problems: BirthProblem[] = [];
  const { labels, dropped } = deviceNodeLabels(device.labels, policy.labels);
  for (const d of dropped) {
    problems.push({ reason: BirthProblemReason.Label, message: `label ignored: ${d.why}` });
  }
  const addresses = device.addresses.filter((a) => {
    const why = policy.addresses.nodeAddress(a);
    if (why !== undefined)
      problems.push({ reason: BirthProblemReason.Address, message: `address ignored: ${why}` });
    return why === undefined;
  });
  const capacity: Record<string, string> = {};
  for (const [name, value] of Object.entries(device.capacity)) {
    const why = capacityProblem(name, value);
    if (why === undefined) capacity[name] = value.trim();
    else problems.push({ reason: BirthProblemReason.Capacity, message: `${why}; left out of the node` });
  }
  return { device: { ...device, labels, addresses, capacity }, problems };
}
