/**
 * DeviceNotices: how the node controller tells people and devices what it refused — a device whose
 * node name belongs to a Node devicelet does not own, or the parts of a birth that did not reach the
 * node (labels, addresses, capacity; birth.ts). Each becomes a Warning Event on the Node (the
 * recorder rate-limits and aggregates), a log line, and a notice to the device when the provider
 * can send one. The same decision is told once: a device born again with the same problems, or a
 * refusal re-checked every half minute, says nothing new.
 *
 *   const notices = new DeviceNotices({ events, notifier, logger });
 *   notices.birth("gw-1", { name: "gw-1" }, problems);    // once per distinct set of problems
 *   notices.refused("gw-1", { name: "gw-1", uid }, "...");  // once until accepted()
 */
import type { Logger } from "pino";
import type { EventRecorder } from "../kube/index.ts";
import type { DeviceNotifier } from "../provider/types.ts";
import type { BirthProblem } from "./birth.ts";

export interface DeviceNoticesOptions {
  readonly events?: Pick<EventRecorder, "record"> | undefined;
  readonly notifier?: DeviceNotifier | undefined;
  readonly logger: Logger;
}

/** Reason of the Event and notice for a device refused because its node name is taken. */
export const NODE_NAME_TAKEN = "NodeNameTaken";
/** Reason of the Event and notice for a node the API server refused to register. */
export const NODE_REFUSED = "NodeRegistrationRefused";

interface NodeRef {
  readonly name: string;
  readonly uid?: string | undefined;
}

export class DeviceNotices {
  readonly #o: DeviceNoticesOptions;
  /** Per device: the problems last told, as one string. */
  readonly #told = new Map<string, string>();
  readonly #refused = new Set<string>();

  constructor(options: DeviceNoticesOptions) {
    this.#o = options;
  }

  /** Tells each problem of a birth, unless exactly these were told for the device already. */
  birth(deviceId: string, node: NodeRef, problems: readonly BirthProblem[]): void {
    const key = problems.map((p) => `${p.reason}:${p.message}`).join("\n");
    if ((this.#told.get(deviceId) ?? "") === key) return;
    this.#told.set(deviceId, key);
    // One Event per reason (the recorder keeps one message per series), naming every problem.
    const byReason = new Map<string, string[]>();
    for (const p of problems) byReason.set(p.reason, [...(byReason.get(p.reason) ?? []), p.message]);
    for (const [reason, messages] of byReason) this.#tell(deviceId, node, reason, messages.join("; "));
  }

  /** Tells that the device is refused (once until {@link accepted}); `message` says why. */
  refused(deviceId: string, node: NodeRef, message: string): void {
    if (this.#refused.has(deviceId)) return;
    this.#refused.add(deviceId);
    this.#tell(deviceId, node, NODE_NAME_TAKEN, message);
  }

  /** The device is no longer refused: a later refusal is told again. */
  accepted(deviceId: string): void {
    this.#refused.delete(deviceId);
  }

  /** The device was retired (decommission.ts): what was told of it is forgotten, so a later device
   * of that id hears about its own problems afresh. */
  forget(deviceId: string): void {
    this.#told.delete(deviceId);
    this.#refused.delete(deviceId);
  }

  /** Whether the device is refused now. */
  isRefused(deviceId: string): boolean {
    return this.#refused.has(deviceId);
  }

  /** The API server refused the device's node for good (a 4xx): told each time. */
  registrationRefused(deviceId: string, node: NodeRef, message: string): void {
    this.#tell(deviceId, node, NODE_REFUSED, message);
  }

  #tell(deviceId: string, node: NodeRef, reason: string, message: string): void {
    this.#o.logger.warn({ device: deviceId, node: node.name, reason }, message);
    this.#o.events?.record({
      object: { apiVersion: "v1", kind: "Node", name: node.name, ...(node.uid ? { uid: node.uid } : {}) },
      type: "Warning",
      reason,
      message,
    });
    this.#o.notifier?.notifyDevice(deviceId, { type: "Warning", reason, message });
  }
}
