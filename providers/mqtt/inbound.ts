/**
 * Inbound: everything devices publish, from bytes to effects. Each message is checked in order —
 * allow-list (before any parsing), codec (size, JSON, schema, device id against topic), then
 * (bootId, seq) order — and only then acted on: presence moves the device (and its children),
 * reports update status and confirm tombstones, acks move delivery stages and finish commands,
 * events become Kubernetes Events, session output goes to its session (io-sessions.ts), stats
 * samples to the stats store; a presence change ends the device's sessions. Every live message that passes the order check counts as having
 * heard from the device (silence.ts), and brings back a device made lost by silence.
 *
 * Bad input never escapes: a rejected message is counted by reason, logged at warn (at most once
 * a minute per device and reason, with the number suppressed) and recorded as a `MessageRejected`
 * Event on the device's node; a refused device is logged once. `handle` never throws.
 */
import type { Logger } from "pino";
import { decodeFromDevice } from "../../src/protocol/codec.ts";
import { DEVICE_ID, topics } from "../../src/protocol/topics.ts";
import type {
  DeviceEventMessage,
  DeviceToBridge,
  PresenceMessage,
  ReportedDocument,
} from "../../src/protocol/types.ts";
import type { PodRef, ProviderEvent } from "../../src/provider/types.ts";
import type { Births } from "./births.ts";
import type { CommandQueue } from "./commands.ts";
import type { DesiredStore } from "./desired.ts";
import type { DeviceRegistry } from "./devices.ts";
import type { GenerationAllocator } from "./generations.ts";
import type { IoSessions } from "./io-sessions.ts";
import { WarnLimiter, type MqttMetrics, type RejectReason } from "./metrics.ts";
import { tombstoneConfirmed, type Observations } from "./observations.ts";
import type { StatusCoalescer } from "./pod-status.ts";
import type { Stages } from "./stages.ts";
import type { DeviceStatsStore } from "./stats.ts";

export interface InboundDeps {
  readonly allowed: (deviceId: string) => boolean;
  readonly maxMessageBytes: number;
  readonly registry: DeviceRegistry;
  readonly desired: DesiredStore;
  readonly observations: Observations;
  readonly commands: CommandQueue;
  readonly statuses: StatusCoalescer;
  readonly sessions: Pick<IoSessions, "deliver" | "deviceAway">;
  readonly stats: Pick<DeviceStatsStore, "record">;
  readonly allocator: Pick<GenerationAllocator, "observe">;
  /** Stores births (births.ts), trying again while the store does not take them. */
  readonly births: Pick<Births, "save">;
  readonly metrics: MqttMetrics;
  readonly logger: Logger;
  readonly recordEvent: (event: ProviderEvent) => void;
  readonly deleted: (ref: PodRef) => void;
  /** Records `TombstoneConfirmed` on the pod (stages.ts). */
  readonly stages?: Pick<Stages, "tombstoneConfirmed">;
}

/** Distinct refused device ids remembered (each is logged once); beyond it they are only counted. */
const MAX_REFUSED_REMEMBERED = 10_000;

export class Inbound {
  readonly #d: InboundDeps;
  readonly #warn = new WarnLimiter({ intervalMs: 60_000 });
  readonly #refused = new Set<string>();

  constructor(deps: InboundDeps) {
    this.#d = deps;
  }

  /** One message from the broker. `retained`: delivered because of a subscription, not live. */
  handle(topic: string, payload: Buffer, retained: boolean): void {
    const deviceId = topic.split("/")[2] ?? "";
    try {
      if (topic === topics.bridge()) return;
      this.#d.metrics.inc("received");
      if (DEVICE_ID.test(deviceId) && !this.#d.allowed(deviceId)) {
        this.#refuse(deviceId);
        return;
      }
      const decoded = decodeFromDevice(topic, payload, { maxBytes: this.#d.maxMessageBytes });
      if (!decoded.ok) {
        // A zero-byte retained publish clears the topic (a decommissioned device): nothing to do.
        if (decoded.reason !== "empty") this.#reject(decoded.reason, decoded.detail, deviceId, topic);
        return;
      }
      this.#dispatch(decoded.value.message, retained);
    } catch (err) {
      this.#d.logger.error({ err, device: deviceId, topic }, "handling a device message failed");
      this.#reject("invalid", `handler error: ${(err as Error).message}`, deviceId, topic);
    }
  }

  #dispatch(message: DeviceToBridge, retained: boolean): void {
    const { registry, metrics } = this.#d;
    switch (message.kind) {
      case "presence":
        this.#presence(message, retained);
        return;
      case "reported": {
        const verdict = registry.order(message.deviceId, "reported", message.bootId, message.seq);
        if (verdict === "ok") {
          this.#report(message);
          this.#alive(message.deviceId, retained);
        } else {
          metrics.inc("stale");
          if (verdict === "unknown-boot") registry.holdReport(message);
        }
        return;
      }
      case "ack":
      case "command-ack": {
        if (registry.order(message.deviceId, "ack", message.bootId, message.seq) !== "ok") {
          metrics.inc("stale");
          return;
        }
        this.#alive(message.deviceId, retained);
        if (message.kind === "command-ack") {
          this.#d.commands.ack(message.deviceId, message);
          return;
        }
        // Whoever published it, the device has seen this generation: ours go above it.
        this.#d.allocator.observe(message.deviceId, message.epoch, message.generation);
        const epoch = this.#d.desired.device(message.deviceId)?.published?.epoch;
        if (!this.#d.observations.ack(message, epoch)) {
          metrics.inc("stale");
          return;
        }
        if (message.stage === "rejected") {
          this.#d.recordEvent({
            involved: { kind: "Device", deviceId: message.deviceId },
            type: "Warning",
            reason: "DesiredRejected",
            message:
              `the device rejected desired generation ${message.generation}: ${message.reason ?? ""} ${message.message ?? ""}`.trim(),
          });
        }
        this.#d.statuses.mark(message.deviceId);
        return;
      }
      case "event":
        if (registry.order(message.deviceId, "evt", message.bootId, message.seq) !== "ok")
          metrics.inc("stale");
        else {
          this.#event(message);
          this.#alive(message.deviceId, retained);
        }
        return;
      case "io-data":
      case "io-end":
        // Sessions are never retained (docs/protocol.md § 3.9): a retained copy is a leftover.
        if (retained || !this.#d.sessions.deliver(message.deviceId, message)) metrics.inc("stale");
        else this.#alive(message.deviceId, retained);
        return;
      case "stats":
        if (retained || this.#d.stats.record(message) !== "ok") metrics.inc("stale");
        else {
          metrics.inc("statsSamples");
          this.#alive(message.deviceId, retained);
        }
        return;
    }
  }

  #presence(message: PresenceMessage, retained: boolean): void {
    const { registry, metrics } = this.#d;
    const id = message.deviceId;
    const verdict = registry.presence(message, { retained });
    if (verdict !== "applied") {
      metrics.inc(verdict === "stale-will" ? "staleWills" : "stale");
      this.#d.logger.debug(
        { device: id, state: message.state, bootId: message.bootId, seq: message.seq, verdict },
        "ignored presence",
      );
      return;
    }
    this.#d.logger.debug(
      { device: id, state: message.state, bootId: message.bootId, seq: message.seq, retained },
      "device presence",
    );
    const affected = [id, ...registry.children(id)];
    // A new connection or a device going away: what it was serving is gone with its connection.
    for (const d of affected) {
      this.#d.sessions.deviceAway(
        d,
        message.state === "online"
          ? `device ${id} connected again; its sessions ended`
          : `device ${id} went ${message.state}`,
      );
    }
    if (message.state === "online") {
      if (!retained) registry.heard(id);
      if (message.device) this.#d.births.save(id, message.device);
      const pending = registry.takePendingReport(id);
      if (pending && registry.order(id, "reported", pending.bootId, pending.seq) === "ok")
        this.#report(pending);
      this.#online(affected);
    }
    for (const d of affected) this.#d.statuses.mark(d);
  }

  /** Devices (a device and its children) that may have come online: send what waits for them. */
  #online(affected: readonly string[]): void {
    for (const d of affected) {
      if (this.#d.registry.effectivePresence(d) !== "online") continue;
      this.#d.commands.deviceOnline(d);
      this.#d.desired.kick(d);
    }
  }

  /** A live, in-order message: the device was heard from (and is back, if silence made it lost). */
  #alive(deviceId: string, retained: boolean): void {
    if (retained) return;
    const { registry } = this.#d;
    registry.heard(deviceId);
    if (!registry.revive(deviceId)) return;
    this.#d.logger.info(
      { device: deviceId },
      "heard from a device thought lost by silence; it is online again",
    );
    const affected = [deviceId, ...registry.children(deviceId)];
    this.#online(affected);
    for (const d of affected) this.#d.statuses.mark(d);
  }

  #report(report: ReportedDocument): void {
    const { observations } = this.#d;
    observations.report(report);
    this.#d.allocator.observe(
      report.deviceId,
      report.epoch,
      Math.max(report.observedGeneration, report.appliedGeneration),
    );
    this.confirmTombstones(report.deviceId);
    this.#d.statuses.mark(report.deviceId);
  }

  /**
   * Clears the device's tombstones its last report confirms and reports those pods deleted. Run on
   * every report, and for a document the read-back adopted late: its tombstones may be confirmed
   * by a report that arrived before it.
   */
  confirmTombstones(deviceId: string): void {
    const { desired, observations } = this.#d;
    const report = observations.get(deviceId)?.report;
    const d = desired.device(deviceId);
    for (const t of [...(d?.tombstones.values() ?? [])]) {
      if (!tombstoneConfirmed(t.since, t.ref.uid, report)) continue;
      desired.clearTombstone(deviceId, t.ref.uid);
      this.#d.stages?.tombstoneConfirmed(deviceId, t.ref, t.since?.generation);
      this.#d.metrics.inc("tombstonesCleared");
      this.#d.statuses.forget(t.ref.uid);
      this.#d.deleted(t.ref);
    }
  }

  #event(event: DeviceEventMessage): void {
    const d = event.podUid === undefined ? undefined : this.#d.desired.device(event.deviceId);
    const uid = event.podUid ?? "";
    const pod = d?.pods.get(uid)?.ref ?? d?.tombstones.get(uid)?.ref;
    this.#d.metrics.inc("deviceEvents");
    this.#d.recordEvent({
      involved: pod ? { kind: "Pod", pod } : { kind: "Device", deviceId: event.deviceId },
      type: event.type,
      reason: event.reason,
      message: event.app === undefined ? event.message : `${event.app}: ${event.message}`,
    });
  }

  #refuse(deviceId: string): void {
    this.#d.metrics.inc("refusedMessages");
    if (this.#refused.has(deviceId) || this.#refused.size >= MAX_REFUSED_REMEMBERED) return;
    this.#refused.add(deviceId);
    this.#d.metrics.inc("unknownDevices");
    this.#d.logger.warn(
      { device: deviceId },
      "refusing messages from a device not in devices.allow (logged once per device)",
    );
  }

  #reject(reason: RejectReason, detail: string, deviceId: string, topic: string): void {
    this.#d.metrics.reject(reason);
    const suppressed = this.#warn.admit(`${deviceId}\u0000${reason}`);
    if (suppressed === undefined) return;
    this.#d.logger.warn(
      { device: deviceId, topic, reason, detail, suppressed },
      "rejected a message from a device",
    );
    if (this.#d.registry.info(deviceId)) {
      this.#d.recordEvent({
        involved: { kind: "Device", deviceId },
        type: "Warning",
        reason: "MessageRejected",
        message: `${topic.split("/").slice(3).join("/")}: ${reason}: ${detail}`,
      });
    }
  }
}
