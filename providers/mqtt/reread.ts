/**
 * Devices whose messages the broker may have dropped on the way to devicelet. A broker holds a
 * bounded queue per client (Mosquitto's `max_queued_messages`, EMQX's `max_mqueue_len`); when
 * thousands of devices come back at once, devicelet's one subscription can outrun it and the
 * broker drops what does not fit. A device whose last ack and report were dropped then looks
 * behind and its pods look still starting, although it applied everything; one whose birth was
 * dropped looks away although it is back. It has nothing more to say until its next report
 * refresh, minutes away, and even that does not bring a birth. Its `state` and `reported` are
 * retained on the broker, so devicelet asks for them again (DeviceSubscriptions.reread) for a
 * device (see {@link devicesToReread}) that is online and quiet for two thirds of
 * `devices.rereadAfterSeconds` while behind its desired document for all of it, or while its
 * report is behind its own applied ack; or that devicelet takes to be away but has heard live
 * since; or that devicelet takes to be away once a wave of devices coming back has passed (its
 * birth, ack and report may all have been dropped in it, leaving nothing to hear). Once per four
 * times `devices.rereadAfterSeconds` per device, at most 500 devices a sweep.
 *
 *   const watch = new RereadWatch({ registry, sync: (id) => stages.sync(id), reportBehind,
 *     reread: (ids) => subscriptions.reread(ids), connectedSince: () => session.connectedSince(),
 *     afterMs: 15_000 });
 *   watch.start();   // sweeps every few seconds until stop()
 */
import type { DeviceSync } from "../../src/provider/types.ts";
import { isAway, type DeviceRegistry } from "./devices.ts";

export interface RereadTimes {
  /** Behind its desired document at least this long. */
  readonly behindMs: number;
  /** Nothing heard from the device for at least this long. */
  readonly quietMs: number;
  /** At most one re-read per device this often. */
  readonly againMs: number;
  /** At most this many devices a sweep. */
  readonly perSweep: number;
}

/** The times of `devices.rereadAfterSeconds`: quiet for two thirds of it, again after four times it. */
export function rereadTimes(afterMs: number): RereadTimes {
  return { behindMs: afterMs, quietMs: (afterMs * 2) / 3, againMs: afterMs * 4, perSweep: 500 };
}

/**
 * The devices to re-read at `now`. Pure: reads the registry, `sync` and `reportBehind`, changes
 * nothing. `floor` is when devicelet's broker connection began (nothing was heard before it);
 * `last` when each device was last re-read. A device is due, at most once per `againMs`, when
 * - it is online and quiet for `quietMs`, and either behind its desired document for `behindMs`
 *   or its report behind its own applied ack (a device reports after every apply); or
 * - devicelet takes it to be away (its will came) but has heard it live since, and since its
 *   last re-read: it came back, and its birth was dropped on the way.
 * A device that rejected its document is not re-read for being behind.
 */
export function devicesToReread(
  registry: Pick<DeviceRegistry, "ids" | "get" | "effectivePresence">,
  state: {
    readonly sync: (deviceId: string) => DeviceSync | undefined;
    readonly reportBehind: (deviceId: string) => boolean;
  },
  last: ReadonlyMap<string, number>,
  o: RereadTimes & { readonly now: number; readonly floor: number },
): string[] {
  const out: string[] = [];
  for (const id of registry.ids()) {
    if (out.length >= o.perSweep) break;
    if (o.now - (last.get(id) ?? Number.NEGATIVE_INFINITY) < o.againMs) continue;
    const e = registry.get(id);
    if (!e) continue;
    const presence = registry.effectivePresence(id);
    if (presence === "online") {
      const heard = Math.max(e.heardAt ?? o.floor, o.floor);
      if (o.now - heard < o.quietMs) continue;
      const sync = state.sync(id);
      const behindSince = sync?.behindSince?.getTime();
      // A device that rejected its document is behind for a known reason, not a lost message.
      const behind = !sync?.rejected && behindSince !== undefined && o.now - behindSince >= o.behindMs;
      if (behind || state.reportBehind(id)) out.push(id);
    } else if (isAway(presence)) {
      // Heard since it went away, and since its last re-read (which found it still away, or the
      // birth would have made it online): a straggler of its old connection is not asked again.
      const { heardAt, awaySince } = e;
      const since = Math.max(awaySince ?? Number.POSITIVE_INFINITY, last.get(id) ?? Number.NEGATIVE_INFINITY);
      if (heardAt !== undefined && heardAt > since && heardAt >= o.floor) out.push(id);
    }
  }
  return out;
}

/**
 * The devices taken to be away to re-read at `now`, at most `limit`, none of `skip`: a device
 * whose birth, ack and report were all dropped has left devicelet nothing to hear, and has
 * nothing more to say until its next report refresh (up to 10 minutes, docs/protocol.md § 5).
 * Devices come back in waves, and a wave is when a broker's queue for devicelet overflows. So a
 * device devicelet takes to be away is due, at most once per `againMs`, when some device came
 * back after it went away and after its last re-read, and none for `quietMs`: the wave has
 * passed, its births are in. Each re-read that finds it still away doubles the wait for the next
 * (not before it has been away twice as long as at the last one), so a device away for good
 * costs a few re-reads, not one per wave. Pure, like {@link devicesToReread}.
 */
export function awayDevicesToReread(
  registry: Pick<DeviceRegistry, "ids" | "get" | "effectivePresence" | "lastReturnAt">,
  last: ReadonlyMap<string, number>,
  o: RereadTimes & { readonly now: number; readonly floor: number; readonly limit: number },
  skip: ReadonlySet<string> = new Set(),
): string[] {
  const returnedAt = registry.lastReturnAt();
  const out: string[] = [];
  if (returnedAt === undefined || o.now - returnedAt < o.quietMs) return out;
  for (const id of registry.ids()) {
    if (out.length >= o.limit) break;
    if (!isAway(registry.effectivePresence(id)) || skip.has(id)) continue;
    const lastAt = last.get(id) ?? Number.NEGATIVE_INFINITY;
    // A child lost with its gateway has no time of its own: counted from the connection.
    const away = registry.get(id)?.awaySince ?? o.floor;
    if (returnedAt <= Math.max(away, lastAt)) continue;
    if (o.now - lastAt < Math.max(o.againMs, lastAt - away)) continue;
    out.push(id);
  }
  return out;
}

export interface RereadOptions {
  readonly registry: Pick<DeviceRegistry, "ids" | "get" | "effectivePresence" | "lastReturnAt">;
  readonly sync: (deviceId: string) => DeviceSync | undefined;
  /** Whether the device's latest report is behind the generation it last acked applied. */
  readonly reportBehind: (deviceId: string) => boolean;
  /** Asks the broker for the devices' retained `state` and `reported` again; never rejects. */
  readonly reread: (deviceIds: readonly string[]) => Promise<void>;
  /** When devicelet's current broker connection began (epoch ms); undefined while disconnected. */
  readonly connectedSince: () => number | undefined;
  /** Counted per device re-read for a sign of a dropped message (metrics). */
  readonly onReread?: (count: number) => void;
  /** Counted per device taken to be away re-read after a wave of returns ({@link awayDevicesToReread}). */
  readonly onAwayReread?: (count: number) => void;
  /** `devices.rereadAfterSeconds` in ms; 0 disables the watch. */
  readonly afterMs: number;
  readonly now?: () => number;
}

/** Sweeps a third of `afterMs` apart, within these bounds. */
const MIN_SWEEP_MS = 100;
const MAX_SWEEP_MS = 5_000;

export class RereadWatch {
  readonly #o: RereadOptions;
  readonly #times: RereadTimes;
  readonly #now: () => number;
  readonly #last = new Map<string, number>();
  #timer: NodeJS.Timeout | undefined;

  /** @throws RangeError when `afterMs` is not a number of milliseconds (a timer would spin). */
  constructor(options: RereadOptions) {
    if (!Number.isFinite(options.afterMs) || options.afterMs < 0)
      throw new RangeError(`re-read afterMs must be 0 or more milliseconds, got ${options.afterMs}`);
    this.#o = options;
    this.#times = rereadTimes(options.afterMs);
    this.#now = options.now ?? Date.now;
  }

  /** Sweeps on a timer until {@link stop}; no-op when disabled. */
  start(): void {
    if (this.#o.afterMs <= 0 || this.#timer) return;
    const period = Math.min(MAX_SWEEP_MS, Math.max(MIN_SWEEP_MS, this.#o.afterMs / 3));
    this.#timer = setInterval(() => void this.sweep(), period);
    this.#timer.unref();
  }

  /** Re-reads every device due now; returns their ids. Nothing while disconnected. */
  async sweep(): Promise<string[]> {
    const floor = this.#o.connectedSince();
    if (floor === undefined || this.#o.afterMs <= 0) return [];
    const now = this.#now();
    const due = devicesToReread(this.#o.registry, this.#o, this.#last, { ...this.#times, now, floor });
    const limit = this.#times.perSweep - due.length;
    const away = awayDevicesToReread(
      this.#o.registry,
      this.#last,
      { ...this.#times, now, floor, limit },
      new Set(due),
    );
    const ids = [...due, ...away];
    if (ids.length === 0) return ids;
    for (const id of ids) this.#last.set(id, now);
    // Forget devices long past their last re-read, so the map holds only the recent ones; not
    // those still away, whose waits double from it.
    const { registry } = this.#o;
    for (const [id, at] of this.#last) {
      if (now - at <= 10 * this.#times.againMs) continue;
      if (!isAway(registry.effectivePresence(id))) this.#last.delete(id);
    }
    if (due.length > 0) this.#o.onReread?.(due.length);
    if (away.length > 0) this.#o.onAwayReread?.(away.length);
    await this.#o.reread(ids);
    return ids;
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }
}
