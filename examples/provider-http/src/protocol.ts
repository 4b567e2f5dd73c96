/**
 * The wire protocol between the provider and its devices: one JSON request a device makes every
 * `pollSeconds`, `POST /v1/devices/{id}/sync`, that both reports what it runs and fetches what it
 * should run. The device is always the client, so it can sit behind NAT and needs no open port.
 *
 *   device → provider   SyncRequest   { device: {...}, pods: [{ uid, hash, apps: [...] }] }
 *   provider → device   SyncResponse  { pollSeconds, run: [{ uid, hash, apps }], stop: [{ uid, ... }] }
 *
 * The exchange is level-based: the response is the whole desired state of the device, not a diff,
 * so a lost response or a device that rebooted and forgot everything converges on its next poll.
 * The device runs exactly `run` (starting what is new, replacing what changed hash) and stops
 * everything else, using the grace `stop` gives for a pod and stopping at once otherwise.
 *
 * This module has no imports: the device side (device.ts, simulate.ts) shares it without
 * depending on devicelet.
 */

/** The path a device polls; `{id}` is its device id, URL-encoded. */
export const syncPath = (deviceId: string) => `/v1/devices/${encodeURIComponent(deviceId)}/sync`;

/** What a device says about itself; it becomes the node's labels and capacity. */
export interface DeviceDescription {
  readonly deviceClass: string;
  readonly os: string;
  readonly arch: string;
  /** cpu, memory, pods… as Kubernetes quantities. */
  readonly capacity: Readonly<Record<string, string>>;
}

/** One app of a pod as the device runs it. */
export interface ReportedApp {
  readonly name: string;
  /** `starting` until the app is up; `running` once it is. */
  readonly state: "starting" | "running";
  /** ISO 8601, present once running. */
  readonly startedAt?: string;
}

/** One pod as the device runs it: the hash it was given, and the state of each app. */
export interface ReportedPod {
  readonly uid: string;
  readonly hash: string;
  readonly apps: readonly ReportedApp[];
}

export interface SyncRequest {
  readonly device: DeviceDescription;
  /** Every pod the device runs now, stopping ones included until they are gone. */
  readonly pods: readonly ReportedPod[];
}

/** One app to run: what devicelet's Workload says, minus what this device kind cannot use. */
export interface DesiredApp {
  readonly name: string;
  readonly image: string;
  readonly command: readonly string[];
  readonly args: readonly string[];
  readonly env: Readonly<Record<string, string>>;
}

export interface DesiredPod {
  readonly uid: string;
  /** Changes whenever anything to run changes: the device replaces a pod whose hash differs. */
  readonly hash: string;
  readonly apps: readonly DesiredApp[];
}

export interface SyncResponse {
  /** When to poll next. */
  readonly pollSeconds: number;
  readonly run: readonly DesiredPod[];
  /** Pods deleted in Kubernetes that the device may still run, with the grace to stop them in. */
  readonly stop: readonly { readonly uid: string; readonly gracePeriodSeconds: number }[];
}
