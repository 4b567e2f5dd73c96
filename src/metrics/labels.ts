/**
 * Label values that stay bounded whatever devices send: a value must look like one of a small
 * vocabulary (a pattern) and only the first `max` distinct values are kept; anything else is
 * `other`, so a device inventing reasons cannot grow the series without bound.
 */
import type { Pod } from "../kube/index.ts";

export class BoundedLabel {
  readonly #max: number;
  readonly #other: string;
  readonly #pattern: RegExp;
  readonly #seen = new Set<string>();

  constructor(options: { readonly max: number; readonly other: string; readonly pattern?: RegExp }) {
    this.#max = options.max;
    this.#other = options.other;
    // Kubernetes reasons are UpperCamelCase words (`CrashLoopBackOff`); "" means none.
    this.#pattern = options.pattern ?? /^(?:[A-Za-z][A-Za-z0-9]{0,63})?$/;
  }

  /** `value` when it fits the pattern and is among the first `max` seen, else the `other` value. */
  of(value: string): string {
    if (this.#seen.has(value)) return value;
    if (!this.#pattern.test(value) || this.#seen.size >= this.#max) return this.#other;
    this.#seen.add(value);
    return value;
  }
}

/**
 * Why a pod is in its phase: the pod's own reason (`Unsupported`, `TransportDisconnected`), else
 * while it is Pending the first container's waiting reason (`CreateContainerConfigError`,
 * `ContainerCreating`), else "".
 */
export function podReason(pod: Pod): string {
  const status = pod.status;
  if (status?.reason) return status.reason;
  if ((status?.phase ?? "Pending") !== "Pending") return "";
  const waiting = [...(status?.initContainerStatuses ?? []), ...(status?.containerStatuses ?? [])].find(
    (c) => c.state?.waiting?.reason,
  );
  return waiting?.state?.waiting?.reason ?? "";
}
