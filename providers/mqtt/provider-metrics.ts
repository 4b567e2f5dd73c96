/**
 * The MQTT provider's share of devicelet's Prometheus metrics (`ProviderContext.metrics`,
 * docs/providers.md § Metrics):
 * - {@link DesiredLatency}: how long a desired document took to be issued after the first change
 *   it carries, and how long after it was issued its device acknowledged it `received` and `applied` (by ack, or by a report's generations; docs/protocol.md § 4);
 * - {@link deviceGauges}: read at scrape time from the parts' own state: changes not yet applied
 *   and devices out of sync (desired store × observations), commands waiting, the broker
 *   connection.
 * Rejected messages and expired commands reach the sink through {@link MqttMetrics}.
 *
 *   const latency = new DesiredLatency(context.metrics);
 *   latency.published("gw-1", epoch, 7, issuedAtMs, changedAtMs); // after the broker took it
 *   latency.observed("gw-1", observations.get("gw-1")); // after an ack or a report
 *   context.metrics?.observe(deviceGauges({ desired, observations, commands, connection }));
 */
import type { ProviderGauges, ProviderMetrics } from "../../src/provider/types.ts";
import type { CommandQueue } from "./commands.ts";
import type { TransportConnection } from "./connection.ts";
import type { DesiredStore } from "./desired.ts";
import { appliedOf, deliveryOf, type DeviceObservation, type Observations } from "./observations.ts";

/** Documents of one device still waiting to be applied; older ones are dropped beyond this. */
const MAX_OUTSTANDING = 8;

interface Issued {
  readonly epoch: string;
  readonly generation: number;
  readonly issuedAtMs: number;
  delivered: boolean;
}

export class DesiredLatency {
  readonly #sink: ProviderMetrics | undefined;
  readonly #now: () => number;
  readonly #byDevice = new Map<string, Issued[]>();

  constructor(sink: ProviderMetrics | undefined, now: () => number = Date.now) {
    this.#sink = sink;
    this.#now = now;
  }

  /**
   * The broker holds document `generation` of `epoch` for the device, issued at `issuedAtMs`,
   * carrying changes the first of which was made at `changedAtMs` (unknown: not timed).
   */
  published(
    deviceId: string,
    epoch: string,
    generation: number,
    issuedAtMs: number,
    changedAtMs?: number,
  ): void {
    if (!this.#sink) return;
    if (changedAtMs !== undefined) this.#sink.desiredIssued((issuedAtMs - changedAtMs) / 1000);
    // Documents of an earlier epoch will never be acknowledged in this one.
    const issued = (this.#byDevice.get(deviceId) ?? []).filter((i) => i.epoch === epoch);
    issued.push({ epoch, generation, issuedAtMs, delivered: false });
    this.#byDevice.set(deviceId, issued.slice(-MAX_OUTSTANDING));
  }

  /**
   * What the device acknowledged or reported: every document at or below the generation it
   * received counts as delivered, at or below the one it applied as applied (a device may skip a
   * superseded document, docs/protocol.md § 4), each once.
   */
  observed(deviceId: string, o: DeviceObservation | undefined): void {
    const issued = this.#byDevice.get(deviceId);
    if (!this.#sink || !issued || !o) return;
    const now = this.#now();
    const left: Issued[] = [];
    for (const doc of issued) {
      const acks = o.acks?.epoch === doc.epoch ? o.acks : undefined;
      const report = o.report?.epoch === doc.epoch ? o.report : undefined;
      const applied = Math.max(acks?.applied ?? 0, report ? appliedOf(report) : 0);
      const received = Math.max(acks?.received ?? 0, report?.observedGeneration ?? 0, applied);
      const seconds = (now - doc.issuedAtMs) / 1000;
      if (!doc.delivered && received >= doc.generation) {
        doc.delivered = true;
        this.#sink.desiredDelivered(seconds);
      }
      const rejected = acks?.rejected?.generation === doc.generation;
      if (applied >= doc.generation) this.#sink.desiredApplied(seconds);
      else if (!rejected) left.push(doc);
    }
    if (left.length > 0) this.#byDevice.set(deviceId, left);
    else this.#byDevice.delete(deviceId);
  }

  /** Drops the documents a device never acknowledged (it was decommissioned). */
  forget(deviceId: string): void {
    this.#byDevice.delete(deviceId);
  }
}

/** The gauges the provider reports, each read at scrape time. */
export function deviceGauges(o: {
  readonly desired: Pick<DesiredStore, "devices">;
  readonly observations: Pick<Observations, "get">;
  readonly commands: Pick<CommandQueue, "size">;
  readonly connection: Pick<TransportConnection, "isConnected">;
}): ProviderGauges {
  const pendingPerDevice = function* () {
    for (const d of o.desired.devices()) {
      const observed = o.observations.get(d.deviceId);
      let pending = d.tombstones.size; // a tombstone stays until the device confirms the pod gone
      for (const p of d.pods.values()) {
        const held = p.blocked !== undefined || p.deferred !== undefined;
        if (held || deliveryOf(p.since, observed).delivery !== "applied") pending++;
      }
      yield pending;
    }
  };
  return {
    pendingChanges: () => {
      let sum = 0;
      for (const n of pendingPerDevice()) sum += n;
      return sum;
    },
    devicesOutOfSync: () => {
      let count = 0;
      for (const n of pendingPerDevice()) if (n > 0) count++;
      return count;
    },
    commandsQueued: () => o.commands.size,
    transportConnected: () => o.connection.isConnected(),
  };
}
