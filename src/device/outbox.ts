/**
 * Everything a device session sends, stamped and ordered: the boot id, a sequence number that
 * strictly increases within the boot (docs/protocol.md § 5; the will is the one exception: it
 * carries the seq its birth on that connection will carry, see {@link Outbox.armBirth}),
 * validation through the codec, and the protocol's field limits. Sends are fire-and-forget and in
 * order (MQTT.js keeps QoS 1 order per connection); what a dropped connection loses is state that
 * the next birth re-sends, or a final ack that the redelivered retained document makes the session
 * repeat.
 *
 * Sequence numbers survive agent restarts on the same boot through a reservation: whenever the
 * number gets within half a block of the reserved mark, `reserve(mark)` is called with a new mark
 * a block ahead, for the owner to persist; a restart continues from the persisted mark.
 */
import type { Logger } from "pino";
import { encodeMessage } from "../protocol/codec.ts";
import { topics } from "../protocol/topics.ts";
import type { DeviceToBridge, PresenceMessage, ReportedDocument } from "../protocol/types.ts";
import type { CommandAck } from "./commands.ts";
import type { Clock } from "../base/clock.ts";
import type { DeviceLink } from "./link.ts";
import { clip, type RuntimeEvent } from "./runtime.ts";

/** Sequence numbers reserved ahead at a time. */
export const SEQ_BLOCK = 10_000;

export interface DesiredAck {
  readonly epoch: string;
  readonly generation: number;
  readonly stage: "received" | "applied" | "rejected";
  readonly reason?: string;
  readonly message?: string;
}

export type ReportBody = Omit<
  ReportedDocument,
  "protocol" | "kind" | "deviceId" | "bootId" | "seq" | "observedAt"
>;

export interface OutboxOptions {
  readonly deviceId: string;
  readonly link: DeviceLink;
  readonly logger: Logger;
  readonly clock: Clock;
  /** Called with a new reservation mark to persist; without it nothing is reserved. */
  readonly reserve?: (mark: number) => void;
}

export class Outbox {
  readonly #o: OutboxOptions;
  readonly #id: string;
  #bootId = "";
  #seq = 0;
  #reserved = 0;
  #birthSeq: number | undefined;

  constructor(options: OutboxOptions) {
    this.#o = options;
    this.#id = options.deviceId;
  }

  get bootId(): string {
    return this.#bootId;
  }
  /** The reservation mark: at least every sequence number used so far. */
  get reserved(): number {
    return Math.max(this.#reserved, this.#seq);
  }

  /** A new boot (or the same boot after an agent restart, continuing from `seq`). */
  startBoot(bootId: string, seq = 0): void {
    this.#bootId = bootId;
    this.#seq = this.#reserved = seq;
    this.#birthSeq = undefined;
  }

  /** Takes the seq for the will of the next CONNECT; the birth on that connection repeats it. */
  armBirth(): number {
    this.#birthSeq = this.nextSeq();
    return this.#birthSeq;
  }

  /** The seq armed for this connection's birth (once), or a fresh one when none was armed. */
  birthSeq(): number {
    const seq = this.#birthSeq ?? this.nextSeq();
    this.#birthSeq = undefined;
    return seq;
  }

  nextSeq(): number {
    this.#seq++;
    if (this.#o.reserve && this.#seq > this.#reserved - SEQ_BLOCK / 2) {
      this.#reserved = this.#seq + SEQ_BLOCK;
      this.#o.reserve(this.#reserved);
    }
    return this.#seq;
  }

  presence(
    state: PresenceMessage["state"],
    extra: Pick<PresenceMessage, "device" | "wakeAt"> = {},
    seq = this.nextSeq(),
  ): PresenceMessage {
    return {
      protocol: 1,
      kind: "presence",
      deviceId: this.#id,
      state,
      bootId: this.#bootId,
      seq,
      sentAt: this.#now(),
      ...extra,
    };
  }

  /** Encodes and sends; resolves to whether the broker took it, undefined when nothing was sent. */
  send(topic: string, message: DeviceToBridge, retain = false): Promise<boolean> | undefined {
    if (!this.#o.link.up) return undefined;
    let payload: Buffer;
    try {
      payload = encodeMessage(message);
    } catch (err) {
      this.#o.logger.error(
        { err: (err as Error).message, kind: message.kind },
        "refusing to send an invalid message",
      );
      return undefined;
    }
    return this.#o.link.publish(topic, payload, { retain }).then(
      () => true,
      (err: unknown) => {
        this.#o.logger.debug({ err: (err as Error).message, topic }, "publish failed");
        return false;
      },
    );
  }

  desiredAck(ack: DesiredAck): void {
    void this.send(topics.ack(this.#id), {
      ...this.#stamp(),
      kind: "ack",
      ...ack,
      ...clipped(ack.message, 4096),
    });
  }

  commandAck(ack: CommandAck): void {
    void this.send(topics.ack(this.#id), {
      ...this.#stamp(),
      kind: "command-ack",
      ...ack,
      ...clipped(ack.message, 4096),
    });
  }

  event(event: RuntimeEvent): void {
    void this.send(topics.evt(this.#id), {
      ...this.#stamp(),
      kind: "event",
      at: this.#now(),
      ...event,
      message: clip(event.message, 1024),
    });
  }

  /** The whole report, retained. */
  report(body: ReportBody): void {
    void this.send(
      topics.reported(this.#id),
      { ...this.#stamp(), kind: "reported", observedAt: this.#now(), ...body },
      true,
    );
  }

  #stamp() {
    return { protocol: 1 as const, deviceId: this.#id, bootId: this.#bootId, seq: this.nextSeq() };
  }

  #now(): string {
    return new Date(this.#o.clock.now()).toISOString();
  }
}

const clipped = (message: string | undefined, max: number) =>
  message === undefined ? {} : { message: clip(message, max) };
