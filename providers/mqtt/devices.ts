/**
 * DeviceRegistry: what devicelet knows about each allowed device — its birth (which becomes the
 * node), its presence, and the (bootId, seq) ordering of what it sends (docs/architecture.md, decision 5).
 *
 * Ordering rules:
 * - A birth (`state` online) with a new bootId starts a new boot: sequences reset and the old boot
 *   is retired; anything later from a retired boot is stale.
 * - Within a boot, each topic (`state`, `reported`, `ack`, `evt`) must carry a growing seq; a seq
 *   at or below the last one seen on that topic is a replay (a retained message delivered again,
 *   a QoS 1 duplicate) and is dropped. Sequences are kept per topic because MQTT orders messages
 *   only per topic: a report queued in devicelet's session may arrive before the retained birth.
 * - A `lost` (last will) counts only when its bootId is the device's current one and its seq is
 *   not below the seq of the first birth of that boot received live (docs/protocol.md § 5). A
 *   late will of an earlier boot never takes down a device that is back. Within a boot, per-topic
 *   order does the rest: the broker publishes a connection's will before it accepts the next
 *   connection, so a `lost` that arrives after a birth is the will of that birth's connection —
 *   even when the device's MQTT library froze the first connection's seq into it (MQTT.js, Paho).
 *   A boot first met through a retained message has no known first birth, so no floor.
 * - A report from a boot that is neither current nor retired may belong to a boot whose birth has
 *   not arrived yet; the latest such report is kept and replayed when that birth comes.
 * - A gateway that is lost or offline makes every child whose birth named it lost, until the
 *   gateway or the child is born again. Sleeping devices are not lost.
 *
 *   const reg = new DeviceRegistry({ onChange: (info) => ... });
 *   reg.presence(msg, { retained: false });   // → "applied" | "stale" | ...
 *   reg.order(id, "reported", bootId, seq);   // → "ok" | "stale" | "unknown-boot"
 */
import type { PresenceMessage, ReportedDocument } from "../../src/protocol/types.ts";
import type { DeviceInfo, NodeAddress } from "../../src/provider/types.ts";
import type { BirthDevice } from "./generations.ts";

export type Presence = "online" | "offline" | "lost" | "sleeping" | "unknown";

/** Whether devicelet takes a device to be away: gone without notice (lost) or said goodbye (offline). */
export const isAway = (presence: Presence): boolean => presence === "lost" || presence === "offline";
export type OrderedTopic = "state" | "reported" | "ack" | "evt";
export type OrderVerdict = "ok" | "stale" | "unknown-boot";
export type PresenceVerdict = "applied" | "stale" | "stale-will";

const RETIRED_BOOTS_KEPT = 8;

export interface DeviceEntry {
  readonly id: string;
  birth: BirthDevice | undefined;
  presence: Presence;
  wakeAt: string | undefined;
  bootId: string | undefined;
  readonly seqs: Map<OrderedTopic, number>;
  readonly retiredBoots: string[];
  /** A report from a boot not yet born, replayed at that boot's birth. */
  pendingReport: ReportedDocument | undefined;
  /** Logical time of the last birth / of going away (retained messages count as oldest). */
  bornAt: number;
  awayAt: number;
  /** Seq of the latest birth of the current boot. */
  birthSeq: number | undefined;
  /**
   * Floor for the seq of a `lost` of the current boot: the seq of its first birth received live;
   * null when the boot was first met through a retained message (no floor), undefined before.
   */
  willFloor: number | null | undefined;
  lastSeen: Date | undefined;
  /** When a live (not retained) message of the device last arrived, epoch ms (silence.ts). */
  heardAt: number | undefined;
  /** When devicelet last took the device to be away (lost or offline), epoch ms (reread.ts). */
  awaySince: number | undefined;
  /** Lost because devicelet heard nothing from it for too long, not by a will (silence.ts). */
  silent: boolean;
}

export interface DeviceRegistryOptions {
  /** A device's node-relevant info (presence included) changed. */
  readonly onChange: (info: DeviceInfo) => void;
  readonly now?: () => Date;
  /** How many retired devices are remembered, the most recently retired; default {@link RETIRED_REMEMBERED}. */
  readonly retiredRemembered?: number;
}

/**
 * Retired devices remembered (about 100 bytes each). One retired longer ago is treated as after a
 * restart, when nothing of it is left either: no node until a live birth, and a message of it
 * other than a birth is kept as any device's without one (its entry, no node).
 */
export const RETIRED_REMEMBERED = 10_000;

/** A sleeping device's wake time, when it gave a valid one. */
const sleepOf = (wakeAt: string | undefined): { wakeAt?: Date } => {
  const at = wakeAt === undefined ? undefined : new Date(wakeAt);
  return at === undefined || Number.isNaN(at.getTime()) ? {} : { wakeAt: at };
};

export class DeviceRegistry {
  readonly #o: DeviceRegistryOptions;
  readonly #now: () => Date;
  readonly #devices = new Map<string, DeviceEntry>();
  /**
   * Devices retired (decommissioned), oldest first: everything but a live birth from them is
   * dropped. At most `retiredRemembered` of them.
   */
  readonly #retired = new Set<string>();
  readonly #retiredRemembered: number;
  #tick = 1;
  #lastReturnAt: number | undefined;

  constructor(options: DeviceRegistryOptions) {
    this.#o = options;
    this.#now = options.now ?? (() => new Date());
    this.#retiredRemembered = options.retiredRemembered ?? RETIRED_REMEMBERED;
  }

  get(deviceId: string): DeviceEntry | undefined {
    return this.#devices.get(deviceId);
  }

  ids(): IterableIterator<string> {
    return this.#devices.keys();
  }

  /**
   * When a device devicelet took to be away (lost or offline) last became online again, by a
   * live or retained birth or by being heard again after silence, epoch ms; undefined before the
   * first. Devices come back in waves (a broker restart, a site's power), and a wave is when a
   * broker's queue for devicelet overflows (reread.ts).
   */
  lastReturnAt(): number | undefined {
    return this.#lastReturnAt;
  }

  #entry(deviceId: string): DeviceEntry {
    let e = this.#devices.get(deviceId);
    if (!e) {
      e = {
        id: deviceId,
        birth: undefined,
        presence: "unknown",
        wakeAt: undefined,
        bootId: undefined,
        seqs: new Map(),
        retiredBoots: [],
        pendingReport: undefined,
        bornAt: 0,
        awayAt: 0,
        birthSeq: undefined,
        willFloor: undefined,
        lastSeen: undefined,
        heardAt: undefined,
        awaySince: undefined,
        silent: false,
      };
      this.#devices.set(deviceId, e);
    }
    return e;
  }

  /** A birth remembered from the durable store: the device is a node again, presence unknown. */
  restore(deviceId: string, birth: BirthDevice): void {
    const e = this.#entry(deviceId);
    if (e.birth) return;
    e.birth = birth;
    this.#changed(e);
  }

  /**
   * Forgets a decommissioned device: it is no longer listed, and until a live birth of it arrives
   * (a device put back into service) every message of it is dropped as stale. Does not notify.
   */
  retire(deviceId: string): void {
    this.#devices.delete(deviceId);
    this.#retired.delete(deviceId); // retired again: now the most recent
    this.#retired.add(deviceId);
    for (const oldest of this.#retired) {
      if (this.#retired.size <= this.#retiredRemembered) break;
      this.#retired.delete(oldest);
    }
  }

  /** A live (not retained) message of the device arrived now; does not notify. */
  heard(deviceId: string): void {
    const e = this.#devices.get(deviceId);
    if (e) e.heardAt = this.#now().getTime();
  }

  /**
   * Makes an online or sleeping device lost because nothing was heard from it for too long (its
   * will may never come: a broker that lost its session state, a retained birth of a device that
   * is gone). Its children go with it. False when it was neither online nor sleeping.
   */
  markSilent(deviceId: string): boolean {
    const e = this.#devices.get(deviceId);
    if (!e || (e.presence !== "online" && e.presence !== "sleeping")) return false;
    this.#set(e, "lost", undefined, this.#tick++);
    e.silent = true;
    return true;
  }

  /**
   * A device made lost by {@link markSilent} that is heard from again (an in-order message of its
   * current boot) is online again. True when that happened.
   */
  revive(deviceId: string): boolean {
    const e = this.#devices.get(deviceId);
    if (!e?.silent || e.presence !== "lost") return false;
    e.bornAt = this.#tick++;
    this.#set(e, "online", undefined, 0);
    return true;
  }

  /** Marks a message as seen now (for the node's last-seen time); does not notify. */
  seen(deviceId: string): void {
    const e = this.#devices.get(deviceId);
    if (e) e.lastSeen = this.#now();
  }

  /**
   * Checks and records the (bootId, seq) of a message on `topic`. "unknown-boot" means the boot is
   * neither current nor retired; a device seen for the first time adopts the boot of its first
   * message.
   */
  order(deviceId: string, topic: OrderedTopic, bootId: string, seq: number): OrderVerdict {
    if (this.#retired.has(deviceId)) return "stale";
    const e = this.#entry(deviceId);
    if (e.bootId === undefined) this.#newBoot(e, bootId);
    if (bootId !== e.bootId) return e.retiredBoots.includes(bootId) ? "stale" : "unknown-boot";
    const last = e.seqs.get(topic);
    if (last !== undefined && seq <= last) return "stale";
    e.seqs.set(topic, seq);
    e.lastSeen = this.#now();
    return "ok";
  }

  /** Keeps a report of a boot not born yet; returns it (and forgets it) when that boot is born. */
  holdReport(report: ReportedDocument): void {
    if (this.#retired.has(report.deviceId)) return;
    this.#entry(report.deviceId).pendingReport = report;
  }

  /** Applies a presence message (birth, will, clean offline, sleep). */
  presence(msg: PresenceMessage, options: { retained: boolean }): PresenceVerdict {
    if (this.#retired.has(msg.deviceId)) {
      if (msg.state !== "online" || options.retained) return "stale";
      this.#retired.delete(msg.deviceId); // born again: back in service
    }
    const e = this.#entry(msg.deviceId);
    const tick = options.retained ? -1 : this.#tick++;
    if (msg.state === "lost") {
      // A will is registered at CONNECT with that boot's id; only the current boot's counts.
      if (e.bootId === undefined) this.#newBoot(e, msg.bootId);
      else if (msg.bootId !== e.bootId) return "stale-will";
      if (typeof e.willFloor === "number" && msg.seq < e.willFloor) return "stale-will";
      if (options.retained && e.willFloor === undefined) e.willFloor = null;
      return this.#set(e, "lost", undefined, options.retained ? this.#retainedAwayAt(e) : tick);
    }
    if (msg.bootId !== e.bootId) {
      if (e.bootId !== undefined && e.retiredBoots.includes(msg.bootId)) return "stale";
      if (msg.state !== "online" && e.bootId !== undefined) return "stale";
      this.#newBoot(e, msg.bootId);
    }
    const last = e.seqs.get("state");
    if (last !== undefined && msg.seq <= last) return "stale";
    e.seqs.set("state", msg.seq);
    e.lastSeen = this.#now();
    if (e.willFloor === undefined) e.willFloor = options.retained || msg.state !== "online" ? null : msg.seq;
    if (msg.state === "online") {
      if (msg.device) e.birth = msg.device;
      e.bornAt = tick;
      e.birthSeq = msg.seq;
      return this.#set(e, "online", undefined, 0);
    }
    return this.#set(
      e,
      msg.state,
      msg.state === "sleeping" ? msg.wakeAt : undefined,
      options.retained ? this.#retainedAwayAt(e) : tick,
    );
  }

  /**
   * When a retained will or goodbye puts the device away: the oldest time (0) when it is news,
   * else when it went away. A device taken to be away already gets the same retained message again
   * when devicelet asks for it (reread.ts) or subscribes again after a reconnect; making its time
   * 0 then would make its children, born after it went away, look online behind a lost gateway.
   */
  #retainedAwayAt(e: DeviceEntry): number {
    return isAway(e.presence) ? e.awayAt : 0;
  }

  /** Takes the report held for the device's current boot, if any. */
  takePendingReport(deviceId: string): ReportedDocument | undefined {
    const e = this.#devices.get(deviceId);
    const r = e?.pendingReport;
    if (!e || !r) return undefined;
    e.pendingReport = undefined;
    return r.bootId === e.bootId ? r : undefined;
  }

  /** Presence as pods and nodes should see it: a child behind a gateway that went away is lost. */
  effectivePresence(deviceId: string): Presence {
    const e = this.#devices.get(deviceId);
    if (!e) return "unknown";
    const gatewayId = e.birth?.gateway;
    const gw = gatewayId === undefined ? undefined : this.#devices.get(gatewayId);
    if (gw && isAway(gw.presence) && e.bornAt < gw.awayAt) return "lost";
    return e.presence;
  }

  /** The node view of a device; undefined until its birth (or stored birth) is known. */
  info(deviceId: string): DeviceInfo | undefined {
    const e = this.#devices.get(deviceId);
    if (!e?.birth) return undefined;
    const b = e.birth;
    const capacity: Record<string, string> = {};
    for (const [k, v] of Object.entries(b.capacity)) if (typeof v === "string") capacity[k] = v;
    const nodeInfo = {
      ...(b.osImage === undefined ? {} : { osImage: b.osImage }),
      ...(b.kernelVersion === undefined ? {} : { kernelVersion: b.kernelVersion }),
      ...(e.bootId === undefined ? {} : { bootID: e.bootId }),
    };
    return {
      id: e.id,
      deviceClass: b.deviceClass,
      os: b.os,
      arch: b.arch,
      ...(b.zone === undefined ? {} : { zone: b.zone }),
      ...(b.gateway === undefined ? {} : { gateway: b.gateway }),
      labels: { ...(b.labels ?? {}) },
      capacity,
      addresses: (b.addresses ?? []).map((a): NodeAddress => ({ type: a.type, address: a.address })),
      connected: this.effectivePresence(e.id) === "online",
      ...(this.effectivePresence(e.id) === "sleeping" ? { sleep: sleepOf(e.wakeAt) } : {}),
      ...(e.lastSeen === undefined ? {} : { lastSeen: e.lastSeen }),
      nodeInfo,
    };
  }

  /** Every device with a birth, as nodes. */
  list(): DeviceInfo[] {
    const out: DeviceInfo[] = [];
    for (const id of this.#devices.keys()) {
      const info = this.info(id);
      if (info) out.push(info);
    }
    return out;
  }

  /** Ids of devices whose birth names `gatewayId`. */
  children(gatewayId: string): string[] {
    return [...this.#devices.values()].filter((d) => d.birth?.gateway === gatewayId).map((d) => d.id);
  }

  #newBoot(e: DeviceEntry, bootId: string): void {
    if (e.bootId !== undefined && e.bootId !== bootId) {
      e.retiredBoots.push(e.bootId);
      if (e.retiredBoots.length > RETIRED_BOOTS_KEPT) e.retiredBoots.shift();
    }
    e.bootId = bootId;
    e.seqs.clear();
    e.birthSeq = undefined;
    e.willFloor = undefined;
  }

  #set(e: DeviceEntry, presence: Presence, wakeAt: string | undefined, awayAt: number): PresenceVerdict {
    const before = e.presence;
    e.presence = presence;
    e.silent = false;
    e.wakeAt = wakeAt;
    if (isAway(presence)) {
      e.awayAt = awayAt;
      if (before !== presence) e.awaySince = this.#now().getTime();
    } else if (presence === "online" && isAway(before)) {
      this.#lastReturnAt = this.#now().getTime();
    }
    if (before !== presence || presence === "online" || presence === "sleeping") {
      this.#changed(e);
      for (const child of this.children(e.id)) {
        const c = this.#devices.get(child);
        if (c) this.#changed(c);
      }
    }
    return "applied";
  }

  #changed(e: DeviceEntry): void {
    const info = this.info(e.id);
    if (info) this.#o.onChange(info);
  }
}
