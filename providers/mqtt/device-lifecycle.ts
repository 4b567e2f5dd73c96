/**
 * DeviceLifecycle: what the MQTT provider does to devices as a whole, apart from their pods — it
 * restores the births of devices that are away from the durable store (readback.ts), marks
 * devices lost when they fall silent (silence.ts: a `DeviceSilent` Event, and the statuses of
 * the device and its children pushed again), asks the broker again for the reports of devices
 * left behind (reread.ts), publishes notices to them (docs/protocol.md § 3.8),
 * and decommissions them (retire.ts). Owns the SilenceWatch and the RereadWatch; `start`/`stop` run
 * their timers.
 *
 *   const devices = new DeviceLifecycle({ registry, desired, commands, allocator, connection, ... });
 *   await devices.restoreBirths(["gw-1", "gw-2"]);        // nodes for devices that are away
 *   devices.start();                                      // after the read-back
 *   devices.notify("gw-1", { type: "Warning", reason: "NodeNotReady", message: "..." });
 *   await devices.retire("gw-9");                         // "retired" | "online"
 *   devices.stop();
 */
import { encodeMessage } from "../../src/protocol/codec.ts";
import { topics } from "../../src/protocol/topics.ts";
import type { DeviceNotice, ProviderEvent } from "../../src/provider/types.ts";
import type { StatusCoalescer } from "./pod-status.ts";
import type { GenerationAllocator } from "./generations.ts";
import { restoreBirths } from "./readback.ts";
import { retireDevice, type RetireDeps } from "./retire.ts";
import { RereadWatch, type RereadOptions } from "./reread.ts";
import { SilenceWatch } from "./silence.ts";

export interface DeviceLifecycleOptions extends RetireDeps {
  readonly allocator: Pick<GenerationAllocator, "forget" | "record">;
  /** Whether a device is in `devices.allow`. */
  readonly allowed: (deviceId: string) => boolean;
  readonly statuses: Pick<StatusCoalescer, "mark">;
  /** 0 disables the silence watch. */
  readonly silentAfterMs: number;
  readonly wakeToleranceMs: number;
  /** When devicelet's current broker connection began (epoch ms); undefined while disconnected. */
  readonly connectedSince: () => number | undefined;
  readonly recordEvent: (event: ProviderEvent) => void;
  /** Asking the broker again for the reports of devices left behind (reread.ts). */
  readonly reread: Pick<
    RereadOptions,
    "sync" | "reportBehind" | "reread" | "onReread" | "onAwayReread" | "afterMs"
  >;
}

export class DeviceLifecycle {
  readonly #o: DeviceLifecycleOptions;
  readonly #silence: SilenceWatch;
  readonly #reread: RereadWatch;

  constructor(options: DeviceLifecycleOptions) {
    this.#o = options;
    const { registry, statuses, logger } = options;
    this.#reread = new RereadWatch({ registry, connectedSince: options.connectedSince, ...options.reread });
    this.#silence = new SilenceWatch({
      registry,
      silentAfterMs: options.silentAfterMs,
      wakeToleranceMs: options.wakeToleranceMs,
      connectedSince: options.connectedSince,
      onSilent: (id, why) => {
        logger.warn({ device: id, why }, "device silent: marking it lost");
        options.recordEvent({
          involved: { kind: "Device", deviceId: id },
          type: "Warning",
          reason: "DeviceSilent",
          message: `marked lost: ${why}`,
        });
        for (const d of [id, ...registry.children(id)]) statuses.mark(d);
      },
    });
  }

  /**
   * Gives the devices among `deviceIds` that are allowed but have no birth (they are away) their
   * last birth from the durable store, so their nodes stay what they were.
   */
  restoreBirths(deviceIds: readonly string[]): Promise<void> {
    const { allowed, allocator, registry, logger } = this.#o;
    return restoreBirths({ deviceIds, allowed, allocator, registry, logger });
  }

  /**
   * Starts watching for silent devices, and for devices left behind whose reports to ask for
   * again (sweeps on timers until {@link stop}).
   */
  start(): void {
    this.#silence.start();
    this.#reread.start();
  }

  stop(): void {
    this.#silence.stop();
    this.#reread.stop();
  }

  /**
   * Publishes a notice on `{id}/notice` (QoS 1, not retained; docs/protocol.md § 3.8). Best
   * effort: a failed publish is logged, never thrown.
   */
  notify(deviceId: string, notice: DeviceNotice): void {
    const payload = encodeMessage({
      protocol: 1,
      kind: "notice",
      deviceId,
      type: notice.type,
      reason: notice.reason,
      message: notice.message.slice(0, 1024),
      at: new Date().toISOString(),
    });
    this.#o.connection
      .publish(topics.notice(deviceId), payload, { qos: 1, retain: false })
      .catch((err: unknown) => {
        this.#o.logger.debug({ err, device: deviceId, reason: notice.reason }, "notice not published");
      });
  }

  /** Decommissions a device that is not online; see retire.ts for the steps and guarantees. */
  retire(deviceId: string): Promise<"retired" | "online"> {
    return retireDevice(this.#o, deviceId);
  }
}
