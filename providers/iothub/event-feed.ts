/**
 * {@link EventFeed} on the hub's built-in Event Hubs-compatible endpoint, read with
 * `@azure/event-hubs`' `EventHubConsumerClient` from every partition of one consumer group.
 *
 * Guarantees:
 * - `start` resolves once every partition's receiver is reading (its first batch, possibly empty,
 *   came back), and rejects only when the signal aborts (or `stop` is called) first: until then a
 *   hub it cannot reach is logged, shown by `health()` and retried with backoff (0.5 s doubling to
 *   30 s). Events enqueued after `start` was called are delivered: at first start the "latest"
 *   position is pinned to each partition's last sequence number, so it does not depend on when
 *   the links attach.
 * - No gaps and no duplicates across reconnects: the SDK reattaches a lost link after the last
 *   event it handed over, the feed checkpoints each batch in the client's in-memory store (a pump
 *   the processor restarts resumes there) and keeps the last sequence number per partition, so a
 *   `stop` and a later `start` resume where reading stopped (within the hub's retention).
 * - Errors are logged; the SDK retries with exponential backoff; `health()` says whether every
 *   partition is being read. `stop` closes the client and its sockets; it is idempotent.
 *
 * ```ts
 * const feed = new EventHubsFeed({ endpoint: { connectionString: builtInEndpoint }, logger });
 * await feed.start(signal, (event) => console.log(event.deviceId, event.source));
 * await feed.stop();
 * ```
 */
import {
  EventHubConsumerClient,
  RetryMode,
  earliestEventPosition,
  type EventPosition,
  type ReceivedEventData,
  type Subscription,
} from "@azure/event-hubs";
import type { Logger } from "pino";
import { WebSocket } from "ws";
import { retryDelay } from "../../src/base/backoff.ts";
import { sleepOn, systemClock, type Clock } from "../../src/base/clock.ts";
import type { EventFeed, HubEvent } from "./event-feed-types.ts";

export interface EventHubsFeedOptions {
  /**
   * The built-in endpoint's connection string
   * (`Endpoint=sb://…;SharedAccessKeyName=…;SharedAccessKey=…;EntityPath={hub}`), or the parts of it.
   */
  readonly endpoint:
    | { readonly connectionString: string }
    | {
        /** `{namespace}.servicebus.windows.net` or just the namespace. */
        readonly namespace: string;
        readonly eventHubName: string;
        readonly policyName: string;
        readonly key: string;
      };
  /** Default `$Default`. */
  readonly consumerGroup?: string;
  /**
   * `amqp` (AMQP over TLS, port 5671) or `websockets` (AMQP over WebSockets, port 443, for
   * networks that only let HTTPS out). Default `amqp`, or `websockets` when `ca` is given.
   */
  readonly transport?: "amqp" | "websockets";
  /**
   * Where to connect instead of the connection string's host: `amqps://host:port` for AMQP,
   * `https://host:port` for WebSockets (the SDK keeps naming the hub's namespace in tokens).
   */
  readonly customEndpointAddress?: string;
  /**
   * PEM of a CA to trust besides the system's (a private or emulated endpoint). The SDK takes a CA
   * only on its WebSocket transport: it builds its AMQP-over-TLS options itself, without `ca`.
   */
  readonly ca?: string;
  /** Where reading starts when no position is known for a partition. Default `latest`. */
  readonly startPosition?: "latest" | "earliest";
  /** How long a receive waits before reporting an empty batch (readiness); default 1 s. */
  readonly maxWaitTimeInSeconds?: number;
  readonly logger: Logger;
  /** For the waits between start attempts; default the system clock. */
  readonly clock?: Clock;
}

export class EventHubsFeed implements EventFeed {
  readonly #o: EventHubsFeedOptions;
  readonly #log: Logger;
  /** The last sequence number handed over (or pinned at first start), per partition. */
  readonly #lastSequenceNumber = new Map<string, number>();
  readonly #reading = new Set<string>();
  #partitionIds: readonly string[] = [];
  #client: EventHubConsumerClient | undefined;
  #subscription: Subscription | undefined;
  #lastError = "";
  /** Set from `start` until `stop` finished: aborts a start in progress. */
  #halt: AbortController | undefined;
  #stopping: Promise<void> | undefined;
  readonly #clock: Clock;

  constructor(o: EventHubsFeedOptions) {
    this.#o = o;
    this.#log = o.logger.child({ component: "event-feed" });
    this.#clock = o.clock ?? systemClock;
    if (o.ca !== undefined && o.transport === "amqp") {
      throw new Error(
        "EventHubsFeed: a CA can only be given with transport 'websockets' (the SDK passes no CA to AMQP over TLS)",
      );
    }
  }

  async start(signal: AbortSignal, onEvent: (event: HubEvent) => void): Promise<void> {
    if (this.#halt !== undefined) throw new Error("EventHubsFeed is already started");
    signal.throwIfAborted();
    const halt = new AbortController();
    this.#halt = halt;
    this.#stopping = undefined;
    this.#lastError = "";
    const onAbort = () => void this.stop();
    signal.addEventListener("abort", onAbort, { once: true });
    const ended = AbortSignal.any([signal, halt.signal]);
    const ready = Promise.withResolvers<undefined>();
    try {
      for (let failures = 1; ; failures += 1) {
        try {
          await this.#subscribe(ended, onEvent, () => ready.resolve(undefined));
          break;
        } catch (error) {
          if (ended.aborted) throw error;
          this.#lastError = error instanceof Error ? error.message : String(error);
          const delayMs = retryDelay({ failures, baseMs: 500, maxMs: 30_000 });
          this.#log.warn({ err: error, delayMs }, "cannot read the hub's event stream yet; retrying");
          await this.#closeClient();
          await sleepOn(this.#clock, delayMs, ended);
          ended.throwIfAborted();
        }
      }
      const aborted = new Promise<never>((_, reject) => {
        ended.addEventListener("abort", () => reject(new Error("EventHubsFeed stopped while starting")), {
          once: true,
        });
      });
      aborted.catch(() => undefined);
      await Promise.race([ready.promise, aborted]);
      this.#log.info({ partitions: this.#partitionIds.length }, "reading the hub's event stream");
    } catch (error) {
      signal.removeEventListener("abort", onAbort);
      await this.stop();
      throw ended.aborted ? new Error("EventHubsFeed: start was aborted", { cause: error }) : error;
    }
  }

  async stop(): Promise<void> {
    this.#halt?.abort();
    this.#stopping ??= this.#closeClient().finally(() => {
      this.#halt = undefined;
    });
    return this.#stopping;
  }

  /** Creates the client, pins start positions and subscribes; `onReady` once every partition reads. */
  async #subscribe(
    signal: AbortSignal,
    onEvent: (event: HubEvent) => void,
    onReady: () => void,
  ): Promise<void> {
    const client = this.#createClient();
    this.#client = client;
    this.#partitionIds = await client.getPartitionIds({ abortSignal: signal });
    const positions = await this.#startPositions(client, signal);
    signal.throwIfAborted();
    this.#subscription = client.subscribe(
      {
        processEvents: async (events, context) => {
          this.#reading.add(context.partitionId);
          if (this.#partitionIds.every((id) => this.#reading.has(id))) onReady();
          for (const event of events) this.#deliver(event, context.partitionId, onEvent);
          const last = events.at(-1);
          if (last !== undefined) await context.updateCheckpoint(last);
        },
        processError: (error, context) => {
          this.#lastError = error.message;
          if (context.partitionId !== "") this.#reading.delete(context.partitionId);
          this.#log.warn(
            { err: error, partitionId: context.partitionId },
            "reading the hub's event stream failed; the SDK retries",
          );
          return Promise.resolve();
        },
        processClose: (reason, context) => {
          this.#reading.delete(context.partitionId);
          this.#log.debug({ partitionId: context.partitionId, reason }, "partition reader closed");
          return Promise.resolve();
        },
      },
      {
        startPosition: positions,
        maxWaitTimeInSeconds: this.#o.maxWaitTimeInSeconds ?? 1,
        maxBatchSize: 100,
        skipParsingBodyAsJson: true,
      },
    );
  }

  health(): { ready: boolean; message: string } {
    if (this.#halt === undefined) return { ready: false, message: "not started" };
    const reading = this.#partitionIds.filter((id) => this.#reading.has(id)).length;
    const total = this.#partitionIds.length;
    const ready = total > 0 && reading === total;
    const error = this.#lastError === "" ? "" : `; last error: ${this.#lastError}`;
    return { ready, message: `reading ${reading}/${total} partitions${ready ? "" : error}` };
  }

  async #closeClient(): Promise<void> {
    const client = this.#client;
    const subscription = this.#subscription;
    this.#client = undefined;
    this.#subscription = undefined;
    this.#reading.clear();
    try {
      await subscription?.close();
      await client?.close();
    } catch (error) {
      this.#log.warn({ err: error }, "closing the event hub client failed");
    }
  }

  #createClient(): EventHubConsumerClient {
    const e = this.#o.endpoint;
    const connectionString =
      "connectionString" in e
        ? e.connectionString
        : [
            `Endpoint=sb://${e.namespace.includes(".") ? e.namespace : `${e.namespace}.servicebus.windows.net`}/`,
            `SharedAccessKeyName=${e.policyName}`,
            `SharedAccessKey=${e.key}`,
            `EntityPath=${e.eventHubName}`,
          ].join(";");
    const webSockets =
      (this.#o.transport ?? (this.#o.ca === undefined ? "amqp" : "websockets")) === "websockets";
    return new EventHubConsumerClient(this.#o.consumerGroup ?? "$Default", connectionString, {
      ...(this.#o.customEndpointAddress === undefined
        ? {}
        : { customEndpointAddress: this.#o.customEndpointAddress }),
      ...(webSockets
        ? {
            webSocketOptions: {
              webSocket: WebSocket,
              webSocketConstructorOptions: this.#o.ca === undefined ? {} : { ca: this.#o.ca },
            },
          }
        : {}),
      retryOptions: { mode: RetryMode.Exponential, retryDelayInMs: 500, maxRetryDelayInMs: 30_000 },
    });
  }

  /** Each partition's position: after the last event seen, else `latest` pinned now, or earliest. */
  async #startPositions(
    client: EventHubConsumerClient,
    signal: AbortSignal,
  ): Promise<Record<string, EventPosition>> {
    const positions: Record<string, EventPosition> = {};
    for (const id of this.#partitionIds) {
      let last = this.#lastSequenceNumber.get(id);
      if (last === undefined && this.#o.startPosition !== "earliest") {
        const p = await client.getPartitionProperties(id, { abortSignal: signal });
        if (!p.isEmpty) last = p.lastEnqueuedSequenceNumber;
        if (last !== undefined) this.#lastSequenceNumber.set(id, last);
      }
      positions[id] =
        last === undefined ? earliestEventPosition : { sequenceNumber: last, isInclusive: false };
    }
    return positions;
  }

  #deliver(event: ReceivedEventData, partitionId: string, onEvent: (event: HubEvent) => void): void {
    this.#lastSequenceNumber.set(partitionId, event.sequenceNumber);
    const system: Record<string, unknown> = event.systemProperties ?? {};
    const deviceId = system["iothub-connection-device-id"];
    if (typeof deviceId !== "string") {
      this.#log.warn(
        { partitionId, sequenceNumber: event.sequenceNumber },
        "event without a device id skipped",
      );
      return;
    }
    const properties: Record<string, string> = {};
    for (const [key, value] of Object.entries(event.properties ?? {})) {
      properties[key] = typeof value === "string" ? value : JSON.stringify(value);
    }
    const hubEvent: HubEvent = {
      deviceId,
      source:
        typeof system["iothub-message-source"] === "string" ? system["iothub-message-source"] : "Telemetry",
      properties,
      body: toBuffer(event.body),
      enqueuedAtMs: event.enqueuedTimeUtc.getTime(),
    };
    try {
      onEvent(hubEvent);
    } catch (error) {
      this.#log.error({ err: error, deviceId }, "the event handler threw; the event is skipped");
    }
  }
}

function toBuffer(body: unknown): Buffer {
  if (Buffer.isBuffer(body)) return body;
  if (body instanceof Uint8Array) return Buffer.from(body);
  if (typeof body === "string") return Buffer.from(body);
  return Buffer.from(JSON.stringify(body ?? null));
}
