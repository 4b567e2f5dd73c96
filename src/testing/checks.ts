/**
 * The kit's assertions: {@link ContractViolation} (what every scenario throws), `check`, and how
 * it reads a {@link WorkloadStatus} (running or not, which apps) and names a pod in messages.
 */
import type { PodRef, Workload, WorkloadStatus } from "../provider/types.ts";

/** A broken rule of the provider contract; the message says which and what was seen. */
export class ContractViolation extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ContractViolation";
  }
}

export function check(ok: boolean, message: string | (() => string)): asserts ok {
  if (!ok) throw new ContractViolation(typeof message === "string" ? message : message());
}

/** What a status says about a pod, for messages. */
export function describeStatus(s: WorkloadStatus | undefined): string {
  if (!s) return "no status";
  const apps = s.apps.map((a) => `${a.name}:${a.state.kind}`).join(", ");
  return `${s.phase}${s.reason ? `/${s.reason}` : ""} [${apps}] deviceConnected=${String(s.deviceConnected)}`;
}

/** Whether the status says any app runs (or the pod as a whole does). */
export const saysRunning = (s: WorkloadStatus): boolean =>
  s.phase === "Running" || s.apps.some((a) => a.state.kind === "running");

/** Whether the status says exactly the apps of `w` run: the pod Running, each app of `w` running. */
export function runsWorkload(s: WorkloadStatus | undefined, w: Workload): s is WorkloadStatus {
  if (!s || s.pod.uid !== w.pod.uid || s.phase !== "Running") return false;
  const names = w.apps.map((a) => a.name).sort();
  const running = s.apps.filter((a) => a.state.kind === "running").map((a) => a.name);
  return names.every((n) => running.includes(n)) && s.apps.every((a) => names.includes(a.name));
}

export const key = (ref: PodRef) => `${ref.namespace}/${ref.name} (uid ${ref.uid})`;
