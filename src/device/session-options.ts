/**
 * What a `DeviceSession` (session.ts) is given: the device's identity, link, runtime and
 * birth, and the knobs of its protocol behaviour. Apart so the session reads as behaviour.
 *
 *   const options: DeviceSessionOptions = { deviceId, link, runtime, device, logger, store };
 *   const session = new DeviceSession(options);
 */
import type { Logger } from "pino";
import type { PresenceMessage } from "../protocol/types.ts";
import type { Clock } from "../base/clock.ts";
import type { DeviceLink } from "./link.ts";
import type { Runtime } from "./runtime.ts";
import type { SessionStore } from "./store.ts";

/** Birth information: what devicelet turns into the node (labels, capacity, capabilities). */
export type BirthInfo = NonNullable<PresenceMessage["device"]>;

export interface DeviceSessionOptions {
  readonly deviceId: string;
  readonly link: DeviceLink;
  readonly runtime: Runtime;
  readonly device: BirthInfo;
  readonly logger: Logger;
  /** Without a store, a reboot forgets what was applied and the retained document applies again. */
  readonly store?: SessionStore;
  /** This boot's id (the agent passes the kernel's); default a random UUID. */
  readonly bootId?: string;
  /** Boot ids for `DeviceSession.reboot`; default random UUIDs. */
  readonly newBootId?: () => string;
  /** Default 20 ms. */
  readonly reportCoalesceMs?: number;
  /**
   * Re-publish the report within this long without one (docs/protocol.md § 3.3), at a random point
   * of the interval's last fifth. Default 5 min.
   */
  readonly reportRefreshMs?: number;
  /** Jitter source in [0, 1) for the report refresh; default `Math.random`. */
  readonly random?: () => number;
  /** MQTT 5 Will Delay Interval; default 5 s. */
  readonly willDelaySeconds?: number;
  /** Reported as the pod address. */
  readonly address?: string;
  /** What a `reboot` command does; default `DeviceSession.reboot`; `null` refuses it. */
  readonly onRebootCommand?: (() => Promise<void>) | null;
  readonly clock?: Clock;
  /**
   * false: the device has no trustworthy wall clock, so a command's `expiresAt` is not checked,
   * only its `ttlSeconds` from arrival (the birth should then say `capabilities.commandTtl`).
   * Default true.
   */
  readonly wallClock?: boolean;
  /**
   * Register the will of the first connection of a boot and keep it on every reconnect, seq and
   * all, as MQTT libraries that fix the will when the client is created do (docs/protocol.md § 5
   * allows it). Default false: a fresh will, with the coming birth's seq, before every CONNECT.
   */
  readonly keepFirstWill?: boolean;
}
