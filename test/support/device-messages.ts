/**
 * Device messages written by hand, for tests that publish as a device without running a device
 * session: the birth information of a plain gateway (Linux on arm64, JSON only, process runtime,
 * no logs or exec, the protocol's default 256 KiB message ceiling) and a report of a device that
 * runs nothing.
 *
 *   const birth: PresenceMessage = { ...header, state: "online", device: gatewayBirth() };
 *   gatewayBirth({ pods: "10" });   // another capacity
 *   JSON.stringify(emptyReport({ deviceId, bootId, seq }));
 */
import type { BirthInfo } from "../../src/device/session.ts";
import type { ReportedDocument } from "../../src/protocol/types.ts";

export function gatewayBirth(
  capacity: Record<string, string> = { cpu: "1", memory: "1Gi", pods: "10" },
): BirthInfo {
  return {
    deviceClass: "gateway",
    os: "linux",
    arch: "arm64",
    capacity,
    capabilities: {
      maxMessageBytes: 262144,
      encodings: ["json"],
      runtime: "process",
      logs: false,
      exec: false,
    },
  };
}

/** A report of a device that has applied nothing and runs nothing, observed now. */
export function emptyReport(o: { deviceId: string; bootId: string; seq: number }): ReportedDocument {
  return {
    protocol: 1,
    kind: "reported",
    deviceId: o.deviceId,
    bootId: o.bootId,
    seq: o.seq,
    observedAt: new Date().toISOString(),
    epoch: null,
    observedGeneration: 0,
    appliedGeneration: 0,
    pods: [],
  };
}
