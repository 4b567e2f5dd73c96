/**
 * What HubConnection takes from a reader of the hub's device-to-cloud stream (its Event
 * Hubs-compatible endpoint): device telemetry, twin change events and connection state events,
 * one {@link HubEvent} each. HubConnection turns telemetry tagged `devicelet-kind` into inbound
 * messages and the other two into twin watches; without a feed it learns everything by reading
 * twins (sweeps and watches), only command acks after the method's answer arrive later or never.
 *
 *   const feed: EventFeed = new EventHubsFeed({ ... });
 *   new HubConnection({ ..., events: feed });   // HubConnection starts and stops it
 */

export interface HubEvent {
  readonly deviceId: string;
  /** `Telemetry` | `twinChangeEvents` | `deviceConnectionStateEvents` (the routing source). */
  readonly source: string;
  /** Application properties (`devicelet-kind` on devicelet's telemetry). */
  readonly properties: Record<string, string>;
  readonly body: Buffer;
  /** When the hub enqueued the event (milliseconds since the epoch). */
  readonly enqueuedAtMs: number;
}

export interface EventFeed {
  /** Starts reading; resolves once reading began. Events arrive in order per device. */
  start(signal: AbortSignal, onEvent: (event: HubEvent) => void): Promise<void>;
  /** Stops reading. Idempotent. */
  stop(): Promise<void>;
  health(): { ready: boolean; message: string };
}
