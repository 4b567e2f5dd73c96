/**
 * A held pod's status from what its device last reported. The rule devicelet asks for: an app is
 * running only once the device said so, for the workload it was last given (a report under an
 * older hash is the previous version still running, not the new one).
 */
import type { AppStatus, WorkloadStatus } from "devicelet/provider";
import type { HeldPod } from "./state.ts";

export function podStatus(o: {
  readonly pod: HeldPod;
  readonly deviceConnected: boolean;
  readonly now: Date;
}): WorkloadStatus {
  const { workload, tombstone, report } = o.pod;
  const current = report?.hash === workload.hash ? report : undefined;
  const apps = workload.apps.map((spec): AppStatus => {
    const reported = current?.apps.find((a) => a.name === spec.name);
    const running = reported?.state === "running";
    return {
      name: spec.name,
      image: spec.image,
      state: running
        ? { kind: "running", startedAt: new Date(reported.startedAt ?? o.now) }
        : { kind: "waiting", reason: o.deviceConnected ? "ContainerCreating" : "DeviceOffline" },
      ready: running && !tombstone,
      restartCount: 0,
    };
  });
  const base = { pod: workload.pod, apps, deviceConnected: o.deviceConnected, observedAt: o.now };
  // Once any app of the pod ran it stays Running, as a kubelet's pod does during an update.
  if (report?.apps.some((a) => a.state === "running")) return { ...base, phase: "Running" };
  if (!o.deviceConnected)
    return {
      ...base,
      phase: "Pending",
      reason: "DeviceOffline",
      message: `device ${workload.deviceId} is offline; the pod waits for its next poll`,
    };
  return { ...base, phase: "Pending", reason: "ContainerCreating" };
}
