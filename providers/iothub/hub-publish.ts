/**
 * Devicelet's writes to IoT Hub, as HubConnection's `publish` makes them: the desired document
 * (a conditional twin PATCH) and direct methods for commands and notices.
 *
 * Desired writes per device go one at a time, each conditional on an etag read when the write's
 * turn in the twin-update budget came, right before it goes out (never a write without one): the
 * device's own reports change the etag too, and a write that waited seconds for its turn with an
 * older etag met a 412 about a third of the time. When that read finds a document of the same
 * epoch with a generation at least ours in the twin, a newer writer won (another replica) and the
 * write is done without writing. A 412 means another writer changed the twin in between: the write
 * is tried again the same way, at most {@link MAX_CONFLICTS} times. Throttling (429), server errors and lost answers wait
 * (`Retry-After` when the hub gives one, else a growing backoff) and try again until the connection
 * stops. A 400 is final; its message names the twin's section limit.
 *
 *   const writer = new HubPublisher(deps);
 *   await writer.writeDesired("gw-1", text);       // "" removes the document (devicelet: null)
 *   await writer.command("gw-1", payload);          // 200: the ack goes to deps.emitAck
 */
import type { Logger } from "pino";
import { retryDelay } from "../../src/base/backoff.ts";
import { sleepOn, type Clock } from "../../src/base/clock.ts";
import {
  decodeTwinDocument,
  encodeTwinDocument,
  IOTHUB_MAPPING,
  TWIN_SECTION_LIMIT_BYTES,
} from "../../src/protocol/iothub-twin.ts";
import {
  HubServiceError,
  isTransient,
  PreconditionFailed,
  type HubService,
  type ServiceTwin,
} from "./hub-service.ts";
import { documentVersion, type TwinView } from "./twin-view.ts";

/** Conflicting writers (412) tolerated for one desired write before it fails. */
export const MAX_CONFLICTS = 5;
/** Throttled method calls tried again before the command fails (the queue keeps it). */
const MAX_THROTTLED_METHODS = 5;

export interface HubPublisherDeps {
  readonly service: HubService;
  /** Runs a service call, recording the hub's health from its outcome. */
  readonly call: <T>(run: () => Promise<T>) => Promise<T>;
  /** Takes a twin read or written into the cache (and emits what changed); returns the new view. */
  readonly absorb: (twin: ServiceTwin) => TwinView;
  readonly view: (deviceId: string) => TwinView | undefined;
  /** Reads the device's twin quickly for a while (hub-connection.ts). */
  readonly watch: (deviceId: string) => void;
  /** A command's first ack, returned in the method's answer. */
  readonly emitAck: (deviceId: string, text: string) => void;
  readonly methodResponseTimeoutSeconds: number;
  /** Aborts when the connection stops: pending retries end. */
  readonly signal: AbortSignal;
  readonly clock: Clock;
  readonly logger: Logger;
}

/** The twin already holds this generation of the document or a newer one: nothing to write. */
class NewerInTwin extends Error {
  readonly generation: number;
  constructor(generation: number) {
    super(`the twin holds generation ${generation} already`);
    this.generation = generation;
  }
}

export class HubPublisher {
  readonly #d: HubPublisherDeps;
  /** The tail of each device's chain of desired writes. */
  readonly #writes = new Map<string, Promise<void>>();
  /** Per device, its desired writes whose turn in the budget has not come yet. */
  readonly #waiting = new Map<string, number>();

  constructor(deps: HubPublisherDeps) {
    this.#d = deps;
  }

  /** Writes `text` as the device's desired document, after any write still under way for it. */
  writeDesired(deviceId: string, text: string): Promise<void> {
    const turn = this.#turn(deviceId);
    turn.wait();
    const previous = this.#writes.get(deviceId) ?? Promise.resolve();
    const next = previous.catch(() => undefined).then(() => this.#writeDesired(deviceId, text, turn));
    const tail = next.catch(() => undefined).finally(turn.go);
    this.#writes.set(deviceId, tail);
    void tail.then(() => {
      if (this.#writes.get(deviceId) === tail) this.#writes.delete(deviceId);
    });
    return next;
  }

  /**
   * Whether a desired write of the device waits for its turn: behind its own earlier writes, in
   * the twin-update budget, or out the hub's throttling (429). Once a write's call went out and did
   * not come back throttled, it is not waiting: a hub that does not answer is not waiting in line.
   */
  waitingForTurn(deviceId: string): boolean {
    return this.#waiting.has(deviceId);
  }

  /** One desired write's place in {@link waitingForTurn}: `wait` and `go` may be called repeatedly. */
  #turn(deviceId: string): { readonly wait: () => void; readonly go: () => void } {
    let waiting = false;
    const set = (next: boolean) => {
      if (next === waiting) return;
      waiting = next;
      const count = (this.#waiting.get(deviceId) ?? 0) + (next ? 1 : -1);
      if (count > 0) this.#waiting.set(deviceId, count);
      else this.#waiting.delete(deviceId);
    };
    return { wait: () => set(true), go: () => set(false) };
  }

  async #writeDesired(
    deviceId: string,
    text: string,
    turn: { readonly wait: () => void; readonly go: () => void },
  ): Promise<void> {
    const { service, call, logger } = this.#d;
    const ours = documentVersion(text);
    let conflicts = 0;
    let failures = 0;
    for (;;) {
      this.#stopped();
      try {
        const view =
          this.#d.view(deviceId) ?? this.#d.absorb(await call(() => service.getTwin(deviceId, "urgent")));
        const value = text === "" ? null : encodeTwinDocument(text, view.desiredParts);
        // The twin is read when the write's turn in the budget came, not when it joined the queue:
        // seconds may pass in between, and a device reports about three times per document.
        const freshEtag = async () => {
          // Still in line until the read is done. It goes ahead of the watches' reads in the
          // twin-read budget: a thousand watched devices queue reads for many seconds.
          const twin = await call(() => service.getTwin(deviceId, "urgent"));
          turn.go();
          this.#d.absorb(twin);
          const theirs = documentVersion(
            decodeTwinDocument(twin.properties.desired[IOTHUB_MAPPING.desiredKey]),
          );
          if (ours && theirs && theirs.epoch === ours.epoch && theirs.generation >= ours.generation)
            throw new NewerInTwin(theirs.generation);
          return twin.etag;
        };
        const twin = await call(() =>
          service.patchTwinDesired(deviceId, { [IOTHUB_MAPPING.desiredKey]: value }, freshEtag),
        );
        this.#d.absorb(twin);
        this.#d.watch(deviceId);
        return;
      } catch (err) {
        // Throttled: back in line until the hub lets the next attempt through.
        if (err instanceof HubServiceError && err.status === 429) turn.wait();
        else turn.go();
        if (err instanceof NewerInTwin) {
          logger.debug(
            { device: deviceId, ours: ours?.generation, theirs: err.generation },
            "a newer desired document is already in the twin; not writing",
          );
          this.#d.watch(deviceId);
          return;
        }
        if (err instanceof PreconditionFailed) {
          conflicts += 1;
          if (conflicts > MAX_CONFLICTS)
            throw new Error(
              `desired document for ${deviceId} not written: the twin changed under ${conflicts} writes in a row (412)`,
              { cause: err },
            );
          logger.debug({ device: deviceId, conflicts }, "twin changed by another writer; reading it again");
          continue;
        }
        if (err instanceof HubServiceError && err.status === 400)
          throw new Error(
            `desired document for ${deviceId} refused by IoT Hub (${err.message}); a twin's desired section holds at most ${TWIN_SECTION_LIMIT_BYTES} bytes as compact JSON`,
            { cause: err },
          );
        if (!isTransient(err)) throw err;
        failures += 1;
        await this.#wait(err, failures);
      }
    }
  }

  /**
   * Invokes `devicelet.command`. 200: the device's first ack is emitted as an inbound ack. 202:
   * the device took it and answers later. Anything else rejects (the command queue keeps it).
   */
  async command(deviceId: string, payload: Buffer): Promise<void> {
    const answer = await this.#invoke(deviceId, IOTHUB_MAPPING.commandMethod, payload);
    this.#d.watch(deviceId);
    if (answer.status === 200) {
      this.#d.emitAck(deviceId, JSON.stringify(answer.payload));
      return;
    }
    if (answer.status === 202) return;
    throw new Error(
      `device ${deviceId} answered ${IOTHUB_MAPPING.commandMethod} with ${answer.status}: ${JSON.stringify(answer.payload)}`,
    );
  }

  /** Invokes `devicelet.notice`; rejects unless the device answered 200. */
  async notice(deviceId: string, payload: Buffer): Promise<void> {
    const answer = await this.#invoke(deviceId, IOTHUB_MAPPING.noticeMethod, payload);
    if (answer.status !== 200)
      throw new Error(`device ${deviceId} answered ${IOTHUB_MAPPING.noticeMethod} with ${answer.status}`);
  }

  async #invoke(
    deviceId: string,
    method: string,
    payload: Buffer,
  ): Promise<{ status: number; payload: unknown }> {
    let body: unknown;
    try {
      body = JSON.parse(payload.toString("utf8"));
    } catch {
      throw new Error(`${method} payload for ${deviceId} is not JSON`);
    }
    const timeout = Math.max(5, this.#d.methodResponseTimeoutSeconds);
    for (let throttled = 0; ;) {
      this.#stopped();
      try {
        return await this.#d.call(() => this.#d.service.invokeMethod(deviceId, method, body, timeout));
      } catch (err) {
        // Only a throttled call is known not to have reached the device: the rest fail to the queue.
        if (!(err instanceof HubServiceError && err.status === 429) || ++throttled > MAX_THROTTLED_METHODS)
          throw err;
        await this.#wait(err, throttled);
      }
    }
  }

  async #wait(err: unknown, failures: number): Promise<void> {
    const asked = err instanceof HubServiceError ? err.retryAfterMs : undefined;
    const delay = retryDelay({ failures, baseMs: 250, maxMs: 30_000, atLeastMs: asked });
    this.#d.logger.debug(
      { err: (err as Error).message, delayMs: Math.round(delay) },
      "iothub call failed; waiting",
    );
    await sleepOn(this.#d.clock, delay, this.#d.signal);
  }

  #stopped(): void {
    if (this.#d.signal.aborted) throw new Error("the IoT Hub connection is stopped");
  }
}
