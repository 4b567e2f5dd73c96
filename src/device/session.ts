/**
 * The device side of the devicelet protocol for one device id, shared by the gateway agent and the
 * simulator. A `DeviceSession` owns a {@link DeviceLink} and a {@link Runtime}:
 *
 *   const session = new DeviceSession({ deviceId, link, runtime, device, logger, store });
 *   await session.start();          // restores persisted pods, opens the link
 *   await session.whenOnline();     // subscribed, birth published
 *   await session.stop();           // retained `offline`, link closed, apps stopped
 *
 * Guarantees (docs/protocol.md; docs/architecture.md, decisions 2–5):
 * - The will is retained `lost` on `state` with this boot's id and the seq the birth on that
 *   connection will carry (§ 5), re-armed before every CONNECT, delayed on MQTT 5.
 * - On every (re)connect: subscriptions to `desired`, `cmd/+`, `io/+` and the bridge topic first, then the
 *   retained birth, then the retained report. What arrives before the birth (the retained document,
 *   commands, and messages to refuse) is held and handled after it, so every ack and event follows
 *   the birth; of the desired documents held only the newest is kept.
 * - A desired document is applied at most once per (epoch, generation) (applier.ts); the applied
 *   state is persisted before `applied` is acked. An invalid document whose version is readable is
 *   acked `rejected` (`InvalidDocument`); anything else invalid becomes a `MessageRejected` event.
 * - A rejected document is not evaluated again when it comes again; the report carries
 *   `rejection` until a later document is seen (applier.ts); with a store, across restarts too.
 * - Commands expire by their `expiresAt` (unless the device says it has no wall clock) and by
 *   `ttlSeconds` counted from the moment the command arrived (docs/protocol.md § 7).
 * - Sequence numbers strictly increase within a boot, across agent restarts too (see outbox.ts).
 * - Logs and exec sessions (`io/+`, io-sessions.ts) are served only while online, never held for
 *   the birth; a link going down ends them all silently. With a runtime that measures and a birth
 *   that announces `capabilities.stats`, a `stats` sample follows each birth and then comes every
 *   `statsIntervalSeconds` while online (stats.ts); its seq is from the boot's one series.
 * - Runtime changes produce one coalesced report per `reportCoalesceMs`; the report is re-sent
 *   within `reportRefreshMs` without one, at a random point of its last fifth (one timer per
 *   device, re-armed by each report), so a fleet that came up together does not refresh together.
 */
import { randomUUID } from "node:crypto";
import type { Logger } from "pino";
import { decodeIoIn, encodeMessage } from "../protocol/codec.ts";
import { TOPIC_ROOT, topics } from "../protocol/topics.ts";
import { SESSION_DEFAULTS, type BridgeMessage } from "../protocol/types.ts";
import { DesiredApplier, type AppliedGeneration } from "./applier.ts";
import { CommandRunner } from "./commands.ts";
import { systemClock, type Clock } from "../base/clock.ts";
import type { DeviceLink, LinkWill } from "./link.ts";
import { classifyInbound, PreBirthBuffer, type Arrival } from "./inbound.ts";
import { IoSessions } from "./io-sessions.ts";
import { Outbox } from "./outbox.ts";
import { clip, type Runtime, type RuntimeStats } from "./runtime.ts";
import type { DeviceSessionOptions } from "./session-options.ts";
import { StatsReporter } from "./stats.ts";

export type { BirthInfo, DeviceSessionOptions } from "./session-options.ts";

/** Node.js timers fire at once beyond 2^31−1 ms. */
const MAX_TIMER_MS = 2 ** 31 - 1;

export type { AppliedGeneration };

export class DeviceSession {
  readonly deviceId: string;
  readonly #o: DeviceSessionOptions;
  readonly #link: DeviceLink;
  readonly #runtime: Runtime;
  readonly #log: Logger;
  readonly #clock: Clock;
  readonly #out: Outbox;
  readonly #commands: CommandRunner;
  readonly #applier: DesiredApplier;
  /** Logs and exec sessions (io-sessions.ts): only while online, never held for the birth. */
  readonly #io: IoSessions;
  /** With a runtime that measures and a birth that announces `stats`. */
  readonly #stats: StatsReporter | undefined;
  /** Messages that arrived before the birth of this connection. */
  readonly #held: PreBirthBuffer;
  /** With {@link DeviceSessionOptions.keepFirstWill}: the will of this boot's first connection. */
  #firstWill: { bootId: string; will: LinkWill } | undefined;
  /** Bumped on every link up/down: continuations of an earlier connection stop. */
  #connection = 0;
  #online = false;
  #started = false;
  #stopped = false;
  #sleeping: { wakeAt: Date; timer: unknown } | undefined;
  #reportTimer: unknown;
  #refreshTimer: unknown;
  #saving: Promise<void> = Promise.resolve();
  #onlineWaiters: (() => void)[] = [];
  #bridge: BridgeMessage | undefined;

  constructor(options: DeviceSessionOptions) {
    this.#o = options;
    this.deviceId = options.deviceId;
    this.#link = options.link;
    this.#runtime = options.runtime;
    this.#clock = options.clock ?? systemClock;
    this.#log = options.logger.child({ device: options.deviceId });
    this.#held = new PreBirthBuffer(topics.desired(options.deviceId));
    this.#out = new Outbox({
      deviceId: options.deviceId,
      link: options.link,
      logger: this.#log,
      clock: this.#clock,
      ...(options.store ? { reserve: () => void this.#persist() } : {}),
    });
    this.#out.startBoot(options.bootId ?? randomUUID());
    const reboot = options.onRebootCommand;
    this.#commands = new CommandRunner({
      runtime: this.#runtime,
      now: () => this.#clock.now(),
      wallClock: options.wallClock ?? true,
      reboot: reboot === null ? undefined : (reboot ?? (() => this.reboot())),
      ack: (ack) => this.#out.commandAck(ack),
      logger: this.#log,
    });
    this.#applier = new DesiredApplier({
      runtime: this.#runtime,
      ack: (ack) => this.#out.desiredAck(ack),
      persist: () => this.#persist(),
      report: () => this.#publishReport(),
      canApply: () => this.#online && !this.#stopped,
      logger: this.#log,
    });
    const caps = options.device.capabilities;
    this.#io = new IoSessions({
      deviceId: options.deviceId,
      runtime: this.#runtime,
      send: (message) =>
        this.#link.publish(topics.ioOut(this.deviceId, message.streamId), encodeMessage(message), {
          retain: false,
        }),
      capabilities: { logs: caps.logs, exec: caps.exec, tty: caps.tty ?? false },
      ...(caps.maxSessions === undefined ? {} : { maxSessions: caps.maxSessions }),
      clock: this.#clock,
      logger: this.#log,
    });
    const collect = this.#runtime.stats?.bind(this.#runtime);
    this.#stats =
      caps.stats && collect
        ? new StatsReporter({
            intervalMs: (caps.statsIntervalSeconds ?? SESSION_DEFAULTS.statsIntervalSeconds) * 1000,
            clock: this.#clock,
            collect,
            publish: (sample, at) => this.#publishStats(sample, at),
            logger: this.#log,
          })
        : undefined;
  }

  get bootId(): string {
    return this.#out.bootId;
  }
  /** Connected, subscribed and born. */
  get online(): boolean {
    return this.#online;
  }
  get sleeping(): boolean {
    return this.#sleeping !== undefined;
  }
  /** Applied documents that changed what runs; see DesiredApplier.changes. */
  get changes(): number {
    return this.#applier.changes;
  }
  /** Desired documents applied by this session object (restores from the store not counted). */
  get applies(): number {
    return this.#applier.applies;
  }
  /** Every (epoch, generation) applied, in order; the caller must not mutate it. */
  get appliedGenerations(): AppliedGeneration[] {
    return this.#applier.applied;
  }
  get appliedGeneration(): number {
    return this.#applier.appliedGeneration;
  }
  get epoch(): string | null {
    return this.#applier.epoch;
  }
  /** The last devicelet presence seen on the bridge topic. */
  get bridge(): BridgeMessage | undefined {
    return this.#bridge;
  }

  /** Restores persisted state (re-running its pods), then opens the link. Does not wait to connect. */
  async start(): Promise<void> {
    if (this.#started) throw new Error(`session ${this.deviceId} already started`);
    this.#started = true;
    this.#runtime.onChange(() => this.#scheduleReport());
    this.#runtime.onEvent?.((event) => this.#out.event(event));
    await this.#restore();
    this.#link.open({
      will: () => this.#will(),
      lost: () => ({
        topic: topics.state(this.deviceId),
        payload: encodeMessage(this.#out.presence("lost")),
      }),
      onUp: () => void this.#onUp(),
      onDown: () => this.#onDown(),
      reannounce: () => void this.#reannounce(),
      onMessage: (topic, payload) => this.#onMessage(topic, payload),
    });
  }

  /** Resolves once the device is online (now, or at its next birth). */
  whenOnline(): Promise<void> {
    if (this.#online) return Promise.resolve();
    return new Promise((resolve) => this.#onlineWaiters.push(resolve));
  }

  /** Clean stop: retained `offline`, DISCONNECT (no will), every app stopped. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#cancelTimers();
    this.#io.closeAll();
    await this.#applier.settle();
    await this.#out.send(topics.state(this.deviceId), this.#out.presence("offline"), true);
    this.#online = false;
    await this.#link.close();
    await this.#runtime.stop();
    await this.#saving;
  }

  /** Abrupt loss: the connection drops without DISCONNECT, so the will (`lost`) is published. */
  async goOffline(): Promise<void> {
    this.#online = false;
    await this.#link.disconnect({ abrupt: true });
  }

  /** Reconnects after goOffline or sleep; resolves at the birth. */
  goOnline(): Promise<void> {
    if (this.#sleeping) this.#clock.clearTimeout(this.#sleeping.timer);
    this.#sleeping = undefined;
    this.#link.reconnect();
    return this.whenOnline();
  }

  /**
   * A sleepy microcontroller's nap: retained `sleeping` with `wakeAt`, then a clean disconnect (no
   * will: it is Sleeping, not lost). It reconnects by itself at `wakeAt`, or at {@link goOnline}.
   */
  async sleep(wakeAt: Date): Promise<void> {
    const presence = this.#out.presence("sleeping", { wakeAt: wakeAt.toISOString() });
    await this.#out.send(topics.state(this.deviceId), presence, true);
    this.#online = false;
    const delay = Math.min(MAX_TIMER_MS, Math.max(0, wakeAt.getTime() - this.#clock.now()));
    this.#sleeping = { wakeAt, timer: this.#clock.setTimeout(() => void this.goOnline(), delay) };
    await this.#link.disconnect({ abrupt: false });
  }

  /**
   * A power cycle: the connection drops (the old boot's will goes out), the runtime loses every
   * app, a new boot id starts sequence numbers again, and what was applied survives only in the
   * store; then the device connects again. Resolves once it is reconnecting, not online.
   */
  async reboot(): Promise<void> {
    this.#cancelTimers();
    this.#io.closeAll();
    this.#online = false;
    this.#held.clear();
    await this.#link.disconnect({ abrupt: true });
    await this.#applier.reset();
    await this.#runtime.stop();
    this.#out.startBoot(this.#o.newBootId?.() ?? randomUUID());
    await this.#restore();
    this.#link.reconnect();
  }

  /** Publishes `payload` as is on `devicelet/v1/{id}/{subtopic}` (tests of devicelet's validation). */
  publishRaw(subtopic: string, payload: string | Buffer, options: { retain?: boolean } = {}): Promise<void> {
    const buffer = typeof payload === "string" ? Buffer.from(payload) : payload;
    const topic = `${TOPIC_ROOT}/${this.deviceId}/${subtopic}`;
    return this.#link.publish(topic, buffer, { retain: options.retain ?? false });
  }

  /** The will for the next CONNECT: `lost` with the seq its birth will carry (§ 5). */
  #will(): LinkWill {
    const kept = this.#firstWill;
    if (this.#o.keepFirstWill && kept?.bootId === this.bootId) return kept.will;
    const will = {
      topic: topics.state(this.deviceId),
      payload: encodeMessage(this.#out.presence("lost", {}, this.#out.armBirth())),
      delaySeconds: this.#o.willDelaySeconds ?? 5,
    };
    this.#firstWill = { bootId: this.bootId, will };
    return will;
  }

  async #restore(): Promise<void> {
    const saved = await this.#o.store?.load();
    if (saved) {
      this.#applier.restore(saved);
      // Same boot (an agent restart): continue past every number the last run may have used.
      if (saved.bootId === this.#out.bootId) this.#out.startBoot(saved.bootId, saved.seq);
      if (saved.pods.length > 0) {
        const { epoch, appliedGeneration: generation } = saved;
        this.#log.info({ epoch, generation, pods: saved.pods.length }, "restoring the last applied pods");
        await this.#runtime.apply(saved.pods, []);
      }
    }
    void this.#persist();
  }

  async #onUp(): Promise<void> {
    const connection = ++this.#connection;
    const id = this.deviceId;
    try {
      await this.#link.subscribe([
        topics.desired(id),
        topics.commands(id),
        topics.ioInAll(id),
        topics.bridge(),
      ]);
      if (connection !== this.#connection) return;
      const birth = this.#out.presence("online", { device: this.#o.device }, this.#out.birthSeq());
      if (!(await this.#out.send(topics.state(id), birth, true))) throw new Error("birth not sent");
    } catch (err) {
      this.#log.warn(
        { err: (err as Error).message },
        "subscribe or birth failed; waiting for the next connection",
      );
      return;
    }
    if (connection !== this.#connection) return;
    this.#online = true;
    this.#log.debug({ bootId: this.bootId }, "online");
    this.#link.born?.();
    this.#publishReport();
    for (const arrival of this.#held.take()) this.#handle(arrival);
    this.#applier.kick();
    this.#stats?.start();
    for (const waiter of this.#onlineWaiters.splice(0)) waiter();
  }

  /** A fresh birth (and report) on the connection that is up: devicelet may have taken it for lost. */
  async #reannounce(): Promise<void> {
    if (!this.#online) return;
    const birth = this.#out.presence("online", { device: this.#o.device }, this.#out.nextSeq());
    if (!(await this.#out.send(topics.state(this.deviceId), birth, true))) return;
    this.#log.info({ bootId: this.bootId }, "announced again after missed heartbeats");
    this.#publishReport();
  }

  #onDown(): void {
    this.#connection++;
    this.#online = false;
    // Nothing more can reach devicelet on this connection; its side ends the sessions too.
    this.#io.closeAll();
    this.#stats?.stop();
  }

  #onMessage(topic: string, payload: Buffer): void {
    const { maxMessageBytes } = this.#o.device.capabilities;
    if (topic.startsWith(this.#ioPrefix)) {
      this.#onIo(topic, payload, maxMessageBytes);
      return;
    }
    const inbound = classifyInbound(topic, payload, { deviceId: this.deviceId, maxBytes: maxMessageBytes });
    switch (inbound.kind) {
      case "bridge":
        this.#bridge = inbound.bridge;
        return;
      case "nothing":
        return;
      default: {
        const arrival = { inbound, topic, receivedAt: this.#clock.now() };
        if (this.#online) this.#handle(arrival);
        else this.#held.hold(arrival);
      }
    }
  }

  get #ioPrefix(): string {
    return topics.ioIn(this.deviceId, "");
  }

  /** Session input: handled at once while online, dropped otherwise (devicelet times the session out). */
  #onIo(topic: string, payload: Buffer, maxBytes: number): void {
    if (!this.#online || this.#stopped) return;
    const decoded = decodeIoIn(topic, payload, { deviceId: this.deviceId, maxBytes });
    if (decoded.ok) {
      this.#io.handle(decoded.value);
      return;
    }
    if (decoded.reason === "empty") return;
    const message = `${topic.split("/").slice(3).join("/")}: ${decoded.reason}: ${decoded.detail}`;
    this.#log.warn({ topic, reason: decoded.reason, detail: message }, "rejected a message from devicelet");
    this.#out.event({ type: "Warning", reason: "MessageRejected", message });
  }

  /** One `stats` sample, QoS 0: the next one replaces a lost one. */
  async #publishStats(sample: RuntimeStats, at: number): Promise<void> {
    if (!this.#online) return;
    const message = {
      protocol: 1 as const,
      kind: "stats" as const,
      deviceId: this.deviceId,
      bootId: this.bootId,
      seq: this.#out.nextSeq(),
      at: new Date(at).toISOString(),
      ...sample,
    };
    await this.#link.publish(topics.stats(this.deviceId), encodeMessage(message), { retain: false, qos: 0 });
  }

  #handle({ inbound, topic, receivedAt }: Arrival): void {
    switch (inbound.kind) {
      case "invalid-document": {
        const { epoch, generation, message } = inbound;
        this.#log.warn({ epoch, generation, detail: message }, "rejected an invalid desired document");
        const reason = "InvalidDocument";
        this.#applier.offerInvalid({ kind: "invalid", epoch, generation, reason, message });
        return;
      }
      case "rejected":
        this.#log.warn(
          { topic, reason: inbound.reason, detail: inbound.message },
          "rejected a message from devicelet",
        );
        this.#out.event({ type: "Warning", reason: "MessageRejected", message: inbound.message });
        return;
      case "message":
        if (inbound.message.kind === "desired") this.#applier.offer(inbound.message);
        else this.#commands.handle(inbound.message, receivedAt);
    }
  }

  #scheduleReport(): void {
    if (this.#reportTimer !== undefined || this.#stopped) return;
    this.#reportTimer = this.#clock.setTimeout(() => {
      this.#reportTimer = undefined;
      this.#publishReport();
    }, this.#o.reportCoalesceMs ?? 20);
  }

  /** The whole state, retained. While offline nothing is sent: every birth is followed by one. */
  #publishReport(): void {
    if (this.#reportTimer !== undefined) this.#clock.clearTimeout(this.#reportTimer);
    this.#reportTimer = undefined;
    if (!this.#online || this.#stopped) return;
    this.#clock.clearTimeout(this.#refreshTimer);
    // Jittered: 5,000 simulated devices started together refreshed within the same second, five
    // minutes on, every five minutes; so would a site's devices after a power cut.
    const refreshMs = this.#o.reportRefreshMs ?? 300_000;
    this.#refreshTimer = this.#clock.setTimeout(
      () => this.#publishReport(),
      refreshMs * (0.8 + 0.2 * (this.#o.random ?? Math.random)()),
    );
    const { epoch, observedGeneration, appliedGeneration, rejection } = this.#applier;
    this.#out.report({
      epoch,
      observedGeneration,
      appliedGeneration,
      ...(rejection ? { rejection: { ...rejection, message: clip(rejection.message, 4096) } } : {}),
      pods: this.#runtime.report(),
      ...(this.#o.address === undefined ? {} : { address: this.#o.address }),
    });
  }

  /**
   * Queues a save of the current state behind earlier ones. Errors are logged, and the returned
   * promise (of this save) rejects with them: the applier must not ack `applied` without it.
   */
  #persist(): Promise<void> {
    const store = this.#o.store;
    if (!store) return Promise.resolve();
    const { epoch, appliedGeneration, pods } = this.#applier.durable;
    const rejection = this.#applier.keptRejection;
    const state = {
      bootId: this.#out.bootId,
      seq: this.#out.reserved,
      epoch,
      appliedGeneration,
      pods,
      ...(rejection ? { rejection } : {}),
    };
    const saved = this.#saving.then(() => store.save(state));
    this.#saving = saved.catch((err: unknown) => {
      this.#log.error({ err: (err as Error).message }, "saving device state failed");
    });
    return saved;
  }

  #cancelTimers(): void {
    if (this.#reportTimer !== undefined) this.#clock.clearTimeout(this.#reportTimer);
    this.#reportTimer = undefined;
    this.#clock.clearTimeout(this.#refreshTimer);
    this.#refreshTimer = undefined;
    if (this.#sleeping) this.#clock.clearTimeout(this.#sleeping.timer);
    this.#sleeping = undefined;
    this.#stats?.stop();
  }
}
