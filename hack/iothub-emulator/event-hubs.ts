/**
 * The emulator's built-in Event Hubs-compatible endpoint: an AMQP 1.0 server (rhea) over TLS and
 * over WebSockets (`/$servicebus/websocket`, subprotocol `AMQPWSB10`, the client's
 * `webSocketOptions` transport) that the unmodified `EventHubConsumerClient` of
 * `@azure/event-hubs` reads from. Events are kept in memory per partition (bounded by count), so
 * a consumer from `earliestEventPosition` gets the history and one from `latestEventPosition` only
 * what comes after its link attached.
 *
 * What the client needs, as `@azure/core-amqp` and `@azure/event-hubs` (v6) speak it:
 * - SASL ANONYMOUS, then claims-based security: a `put-token` request on `$cbs` whose body is a
 *   Service Bus SAS token (`sr` = URL-encoded audience, `sig` = HMAC-SHA256 under the policy key's
 *   UTF-8 bytes, not the base64-decoded key IoT Hub itself uses) for an audience under
 *   `sb://{namespace}.servicebus.windows.net/{hub}`. A bad token answers 401, which the client
 *   raises as an error; links to entities no accepted claim covers are refused.
 * - `$management` READ requests for `com.microsoft:eventhub` and `com.microsoft:partition`.
 * - Receiver links on `{hub}/ConsumerGroups/{group}/Partitions/{id}` with the
 *   `apache.org:selector-filter:string` filter (`amqp.annotation.x-opt-offset`, `-sequence-number`
 *   or `-enqueued-time`, `>` or `>=`) and the optional owner level (`com.microsoft:epoch`): a higher
 *   owner level takes the partition from the others (`amqp:link:stolen`), a lower one is refused.
 * - Deliveries only while the link has credit (the client grants it), with the annotations
 *   `x-opt-sequence-number`, `x-opt-offset`, `x-opt-enqueued-time` and what the event carries.
 *
 * ```ts
 * const endpoint = await startEventHubsEndpoint({ host, port: 0, cert, key, namespace, hubName, policies });
 * endpoint.append({ deviceId: "dev-1", source: "Telemetry", body, properties: {}, annotations: {} });
 * endpoint.dropConnections(); // the clients see their connection lost and reconnect
 * await endpoint.close();
 * ```
 */
import { createHash, createHmac, randomUUID, timingSafeEqual } from "node:crypto";
import https from "node:https";
import type { AddressInfo, Socket } from "node:net";
import tls from "node:tls";
import rhea, {
  type AmqpError,
  type Connection,
  type ConnectionOptions,
  type EventContext,
  type Message,
  type Receiver,
  type Sender,
} from "rhea";
import { WebSocketServer, type WebSocket } from "ws";
import type { HubChange } from "./hub.ts";
import type { DeviceMessage } from "./mqtt.ts";

/** An event as a route delivers it to the built-in endpoint. */
export interface EndpointEvent {
  readonly deviceId: string;
  /** `iothub-message-source`: `Telemetry`, `twinChangeEvents`, `deviceConnectionStateEvents`. */
  readonly source: string;
  readonly body: Buffer;
  /** Application properties. */
  readonly properties: Readonly<Record<string, string>>;
  /** Message annotations besides the ones the endpoint sets (sequence number, offset, times, source). */
  readonly annotations: Readonly<Record<string, string>>;
  /** AMQP properties section: `message_id`, `correlation_id`, `content_type`, `content_encoding`, `user_id`. */
  readonly amqpProperties?: Readonly<Record<string, string>>;
}

interface StoredEvent {
  readonly sequenceNumber: number;
  readonly offset: number;
  readonly enqueuedAtMs: number;
  readonly event: EndpointEvent;
}

interface PartitionReader {
  readonly sender: Sender;
  readonly ownerLevel: number | undefined;
  readonly consumerGroup: string;
  /** The next sequence number to deliver. */
  cursor: number;
  /** A pump waits for the link's attach to be written. */
  deferred: boolean;
  /** Deliveries handed to rhea on this link. */
  sent: number;
}

class Partition {
  readonly id: string;
  readonly events: StoredEvent[] = [];
  readonly readers = new Set<PartitionReader>();
  nextSequenceNumber = 0;
  nextOffset = 0;
  readonly #retention: number;

  constructor(id: string, retention: number) {
    this.id = id;
    this.#retention = retention;
  }

  get firstSequenceNumber(): number {
    return this.events[0]?.sequenceNumber ?? this.nextSequenceNumber;
  }

  append(event: EndpointEvent, enqueuedAtMs: number): void {
    this.events.push({
      sequenceNumber: this.nextSequenceNumber,
      offset: this.nextOffset,
      enqueuedAtMs,
      event,
    });
    this.nextSequenceNumber += 1;
    this.nextOffset += event.body.length + 64;
    if (this.events.length > this.#retention) this.events.splice(0, this.events.length - this.#retention);
  }

  at(sequenceNumber: number): StoredEvent | undefined {
    return this.events[sequenceNumber - this.firstSequenceNumber];
  }

  /** The first sequence number a selector filter selects. */
  startOf(filter: SelectorFilter): number {
    const first = this.firstSequenceNumber;
    const clamp = (n: number) => Math.min(Math.max(n, first), this.nextSequenceNumber);
    const firstWhere = (pick: (e: StoredEvent) => boolean) =>
      this.events.find(pick)?.sequenceNumber ?? this.nextSequenceNumber;
    switch (filter.field) {
      case "offset":
        if (filter.value === "@latest") return this.nextSequenceNumber;
        return firstWhere((e) =>
          filter.inclusive ? e.offset >= Number(filter.value) : e.offset > Number(filter.value),
        );
      case "sequence-number":
        return clamp(Number(filter.value) + (filter.inclusive ? 0 : 1));
      case "enqueued-time":
        return firstWhere((e) =>
          filter.inclusive ? e.enqueuedAtMs >= Number(filter.value) : e.enqueuedAtMs > Number(filter.value),
        );
    }
  }
}

interface SelectorFilter {
  readonly field: "offset" | "sequence-number" | "enqueued-time";
  readonly inclusive: boolean;
  readonly value: string;
}

/** `amqp.annotation.x-opt-{field} {>|>=} '{value}'`, as the client writes its event position. */
export function parseSelector(text: string): SelectorFilter | undefined {
  const match = /^amqp\.annotation\.x-opt-(offset|sequence-number|enqueued-time)\s*(>=|>)\s*'([^']*)'$/.exec(
    text.trim(),
  );
  if (match === null) return undefined;
  const [, field, op, value] = match as unknown as [string, SelectorFilter["field"], string, string];
  if (value !== "@latest" && !/^-?\d+$/.test(value)) return undefined;
  return { field, inclusive: op === ">=", value };
}

export interface EventHubsEndpointOptions {
  readonly host: string;
  /** AMQP over TLS. */
  readonly port: number;
  /** AMQP over WebSockets (`wss://{host}:{webSocketPort}/$servicebus/websocket`); default 0. */
  readonly webSocketPort?: number;
  readonly cert: string;
  readonly key: string;
  /** The Event Hubs namespace: the endpoint is `sb://{namespace}.servicebus.windows.net/`. */
  readonly namespace: string;
  /** The event hub's name (IoT Hub uses the hub's name). */
  readonly hubName: string;
  /** Policy name → key, as the connection string's `SharedAccessKey` spells it. */
  readonly policies: ReadonlyMap<string, string>;
  /** Default 2. */
  readonly partitionCount?: number;
  /** Events kept per partition; older ones are dropped. Default 1000. */
  readonly retention?: number;
  /** Consumer groups besides `$Default`. */
  readonly consumerGroups?: readonly string[];
  readonly now?: () => number;
}

export interface EventHubsEndpoint {
  readonly port: number;
  readonly webSocketPort: number;
  /** `sb://{namespace}.servicebus.windows.net/`. */
  readonly endpoint: string;
  readonly partitionIds: readonly string[];
  /** Appends an event to its device's partition and delivers it to readers with credit. */
  append(event: EndpointEvent): void;
  /** The partition a device's events go to. */
  partitionOf(deviceId: string): string;
  /** Client connections open now. */
  connectionCount(): number;
  /** Destroys every client connection's socket, as a network failure would. Returns how many. */
  dropConnections(): number;
  close(): Promise<void>;
}

const CBS = "$cbs";
const MANAGEMENT = "$management";
const EPOCH_PROPERTY = "com.microsoft:epoch";
const SELECTOR_FILTER = "apache.org:selector-filter:string";

interface ConnectionState {
  /** Audiences (lower-cased, without a trailing `/`) a valid token was put for. */
  readonly claims: Set<string>;
  /** Reply links (the client's receivers) by link name: where `reply_to` points. */
  readonly replyLinks: Map<string, Sender>;
}

export async function startEventHubsEndpoint(o: EventHubsEndpointOptions): Promise<EventHubsEndpoint> {
  const now = o.now ?? Date.now;
  const endpoint = `sb://${o.namespace}.servicebus.windows.net/`;
  const entityAudience = `${endpoint}${o.hubName}`.toLowerCase();
  const createdAt = new Date(now());
  const partitions = Array.from(
    { length: o.partitionCount ?? 2 },
    (_, i) => new Partition(String(i), o.retention ?? 1000),
  );
  const consumerGroups = new Set(["$default", ...(o.consumerGroups ?? []).map((g) => g.toLowerCase())]);
  const states = new WeakMap<Connection, ConnectionState>();
  const sockets = new Set<tls.TLSSocket>();
  const readers = new WeakMap<Sender, { partition: Partition; reader: PartitionReader }>();

  const container = rhea.create_container({ id: `${o.namespace}-eventhubs` });
  (container.sasl_server_mechanisms as { enable_anonymous(): void }).enable_anonymous();

  const stateOf = (connection: Connection): ConnectionState => {
    let state = states.get(connection);
    if (state === undefined) {
      state = { claims: new Set(), replyLinks: new Map() };
      states.set(connection, state);
    }
    return state;
  };

  /** Whether a claim put on this connection covers `audience`. */
  const authorized = (connection: Connection, audience: string) => {
    const wanted = audience.toLowerCase();
    for (const claim of stateOf(connection).claims) {
      if (wanted === claim || wanted.startsWith(`${claim}/`)) return true;
    }
    return false;
  };

  /** The audience a valid token grants, or why it is refused. */
  const checkToken = (token: unknown, audience: string): { ok: true } | { ok: false; why: string } => {
    if (typeof token !== "string") return { ok: false, why: "the token is not a string" };
    const parsed = parseServiceBusToken(token);
    if (parsed === undefined) return { ok: false, why: "the token is not a shared access signature" };
    const key = o.policies.get(parsed.policy);
    if (key === undefined) return { ok: false, why: `unknown policy '${parsed.policy}'` };
    if (parsed.expiry * 1000 <= now()) return { ok: false, why: "the token has expired" };
    if (!parsed.signedWith(key)) return { ok: false, why: "the signature does not match the policy key" };
    const resource = parsed.resource.toLowerCase().replace(/\/+$/, "");
    const target = audience.toLowerCase().replace(/\/+$/, "");
    if (!(target === resource || target.startsWith(`${resource}/`)))
      return { ok: false, why: `the token is for '${parsed.resource}', not '${audience}'` };
    if (!(target === entityAudience || target.startsWith(`${entityAudience}/`)))
      return { ok: false, why: `'${audience}' is not an entity of this namespace` };
    return { ok: true };
  };

  const reply = (
    connection: Connection,
    request: Message,
    status: number,
    description: string,
    body?: Record<string, unknown>,
  ) => {
    const replyTo = typeof request.reply_to === "string" ? request.reply_to : "";
    const link = stateOf(connection).replyLinks.get(replyTo);
    if (link === undefined) return;
    const response = {
      correlation_id: request.message_id as unknown,
      application_properties: { "status-code": status, "status-description": description },
      ...(body === undefined ? {} : { body }),
    };
    link.send(response as Message);
  };

  const onCbsRequest = (connection: Connection, request: Message) => {
    const props = (request.application_properties ?? {}) as Record<string, unknown>;
    if (props.operation !== "put-token") {
      reply(connection, request, 400, `unsupported operation '${String(props.operation)}'`);
      return;
    }
    const audience = typeof props.name === "string" ? props.name : "";
    const check = checkToken(request.body, audience);
    if (!check.ok) {
      reply(connection, request, 401, `Unauthorized: ${check.why}`);
      return;
    }
    stateOf(connection).claims.add(audience.toLowerCase().replace(/\/+$/, ""));
    reply(connection, request, 202, "Accepted");
  };

  const onManagementRequest = (connection: Connection, request: Message) => {
    const props = (request.application_properties ?? {}) as Record<string, unknown>;
    const check = checkToken(props.security_token, entityAudience);
    if (!check.ok) {
      reply(connection, request, 401, `Unauthorized: ${check.why}`);
      return;
    }
    if (
      props.operation !== "READ" ||
      typeof props.name !== "string" ||
      props.name.toLowerCase() !== o.hubName.toLowerCase()
    ) {
      reply(connection, request, 404, `no entity '${String(props.name)}' for '${String(props.operation)}'`);
      return;
    }
    if (props.type === "com.microsoft:eventhub") {
      reply(connection, request, 200, "OK", {
        name: o.hubName,
        type: "com.microsoft:eventhub",
        created_at: createdAt,
        partition_count: partitions.length,
        partition_ids: partitions.map((p) => p.id),
      });
      return;
    }
    const partition = partitions.find((p) => p.id === props.partition);
    if (props.type !== "com.microsoft:partition" || partition === undefined) {
      reply(connection, request, 404, `no partition '${String(props.partition)}'`);
      return;
    }
    const last = partition.at(partition.nextSequenceNumber - 1);
    reply(connection, request, 200, "OK", {
      name: o.hubName,
      type: "com.microsoft:partition",
      partition: partition.id,
      begin_sequence_number: rhea.types.wrap_long(partition.firstSequenceNumber),
      last_enqueued_sequence_number: rhea.types.wrap_long(partition.nextSequenceNumber - 1),
      last_enqueued_offset: last === undefined ? "-1" : String(last.offset),
      last_enqueued_time_utc: new Date(last?.enqueuedAtMs ?? 0),
      is_partition_empty: partition.events.length === 0,
    });
  };

  /** Sends what the reader's credit allows, oldest first. */
  const pump = (partition: Partition, reader: PartitionReader) => {
    if (attachPending(reader.sender)) {
      // A reader may grant credit in the frames that carry its attach; rhea writes a session's
      // transfers before its links' attach frames, so wait until this link's attach is out.
      if (!reader.deferred) {
        reader.deferred = true;
        setImmediate(() => {
          reader.deferred = false;
          if (partition.readers.has(reader)) pump(partition, reader);
        });
      }
      return;
    }
    if (reader.cursor < partition.firstSequenceNumber) reader.cursor = partition.firstSequenceNumber;
    // rhea counts credit down only when it writes a transfer (on a later tick), and a session
    // writes its deliveries in order: one queued beyond the credit would hold back every link of
    // the session (the `$management` replies among them). So count what is queued but unwritten.
    const link = reader.sender as unknown as { credit: number; delivery_count: number };
    while (reader.sender.sendable() && reader.cursor < partition.nextSequenceNumber) {
      const queued = reader.sent - link.delivery_count;
      if (link.credit - queued <= 0) break;
      const stored = partition.at(reader.cursor);
      reader.cursor += 1;
      if (stored === undefined) continue;
      reader.sender.send(toAmqp(stored));
      reader.sent += 1;
    }
  };

  const openReader = (context: EventContext, sender: Sender, address: string) => {
    const match = /^([^/]+)\/ConsumerGroups\/([^/]+)\/Partitions\/([^/]+)$/i.exec(address);
    const refuse = (condition: string, description: string) => {
      const error: AmqpError = { condition, description };
      sender.close(error);
    };
    if (match === null) {
      refuse("amqp:not-found", `no entity at '${address}'`);
      return;
    }
    const [, hub = "", group = "", partitionId = ""] = match;
    const partition = partitions.find((p) => p.id === partitionId);
    if (hub.toLowerCase() !== o.hubName.toLowerCase() || partition === undefined) {
      refuse("amqp:not-found", `no entity at '${address}'`);
      return;
    }
    if (!consumerGroups.has(group.toLowerCase())) {
      refuse("amqp:not-found", `no consumer group '${group}'`);
      return;
    }
    if (!authorized(context.connection, `${endpoint}${address}`)) {
      refuse("amqp:unauthorized-access", `no claim covers '${address}'; put a token on $cbs first`);
      return;
    }
    const remote = remoteAttach(sender);
    const filterValue = remote.source?.filter?.[SELECTOR_FILTER];
    const filterText = describedValue(filterValue);
    const filter =
      filterText === undefined
        ? { field: "offset", inclusive: false, value: "-1" }
        : parseSelector(filterText);
    if (filter === undefined) {
      refuse("amqp:not-implemented", `unsupported selector filter '${String(filterText)}'`);
      return;
    }
    const epoch = remote.properties?.[EPOCH_PROPERTY];
    const ownerLevel = typeof epoch === "number" ? epoch : undefined;
    const sameGroup = [...partition.readers].filter((r) => r.consumerGroup === group.toLowerCase());
    const highest = Math.max(...sameGroup.map((r) => r.ownerLevel ?? -1), -1);
    if (sameGroup.some((r) => r.ownerLevel !== undefined) && (ownerLevel ?? -1) < highest) {
      refuse(
        "com.microsoft:receiver-disconnected",
        `a receiver with owner level ${highest} reads partition ${partition.id}`,
      );
      return;
    }
    if (ownerLevel !== undefined) {
      for (const other of sameGroup) {
        if ((other.ownerLevel ?? -1) <= ownerLevel && other.ownerLevel !== ownerLevel) {
          partition.readers.delete(other);
          other.sender.close({
            condition: "amqp:link:stolen",
            description: `a receiver with owner level ${ownerLevel} took partition ${partition.id}`,
          });
        }
      }
    }
    sender.set_source({ address, filter: remote.source?.filter });
    const reader: PartitionReader = {
      sender,
      ownerLevel,
      consumerGroup: group.toLowerCase(),
      cursor: partition.startOf(filter as SelectorFilter),
      deferred: false,
      sent: 0,
    };
    partition.readers.add(reader);
    readers.set(sender, { partition, reader });
  };

  container.on("sender_open", (context: EventContext) => {
    const sender = context.sender;
    if (sender === undefined) return;
    const address = remoteAttach(sender).source?.address ?? "";
    if (address === CBS || address.endsWith(MANAGEMENT)) {
      stateOf(context.connection).replyLinks.set(sender.name, sender);
      sender.set_source({ address });
      return;
    }
    openReader(context, sender, address);
  });
  container.on("receiver_open", (context: EventContext) => {
    const receiver: Receiver | undefined = context.receiver;
    if (receiver === undefined) return;
    const address = remoteAttachOf(receiver).target?.address ?? "";
    if (address !== CBS && !address.endsWith(MANAGEMENT)) {
      receiver.close({ condition: "amqp:not-implemented", description: "this endpoint only sends events" });
      return;
    }
    if (address.endsWith(MANAGEMENT) && !authorized(context.connection, `${entityAudience}/${MANAGEMENT}`)) {
      // The client puts a token for the management audience before it attaches.
      receiver.close({ condition: "amqp:unauthorized-access", description: "no claim covers $management" });
      return;
    }
    receiver.set_target({ address });
  });
  container.on("message", (context: EventContext) => {
    const { message, receiver } = context;
    if (message === undefined || receiver === undefined) return;
    const address = remoteAttachOf(receiver).target?.address ?? "";
    if (address === CBS) onCbsRequest(context.connection, message);
    else onManagementRequest(context.connection, message);
  });
  container.on("sendable", (context: EventContext) => {
    const entry = context.sender === undefined ? undefined : readers.get(context.sender);
    if (entry !== undefined) pump(entry.partition, entry.reader);
  });
  const forget = (context: EventContext) => {
    const sender = context.sender;
    const entry = sender === undefined ? undefined : readers.get(sender);
    entry?.partition.readers.delete(entry.reader);
  };
  container.on("sender_close", forget);
  container.on("sender_error", forget);
  container.on("disconnected", (context: EventContext) => {
    for (const partition of partitions) {
      for (const reader of partition.readers) {
        if (reader.sender.connection === context.connection) partition.readers.delete(reader);
      }
    }
  });
  // Errors of one client connection (a reset socket) must not take the endpoint down.
  container.on("error", () => undefined);
  container.on("connection_error", () => undefined);

  const server = tls.createServer({ cert: o.cert, key: o.key }, (socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => socket.destroy());
    // rhea's typings omit `accept`, the server side of `connect`.
    // Empty options: the container's id names this side; absent options would read rhea's defaults file.
    const connection = container.create_connection({} as ConnectionOptions) as Connection & {
      accept(socket: tls.TLSSocket): void;
    };
    connection.accept(socket);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(o.port, o.host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;

  // AMQP over WebSockets, as the SDK speaks it with `webSocketOptions`: subprotocol AMQPWSB10 on
  // the path `/$servicebus/websocket`, one AMQP connection per WebSocket.
  const webSockets = new Set<WebSocket>();
  const httpsServer = https.createServer({ cert: o.cert, key: o.key });
  const wss = new WebSocketServer({
    server: httpsServer,
    path: "/$servicebus/websocket",
    handleProtocols: (protocols) => (protocols.has("AMQPWSB10") ? "AMQPWSB10" : false),
  });
  wss.on("connection", (ws) => {
    webSockets.add(ws);
    ws.on("close", () => webSockets.delete(ws));
    // rhea adapts a WebSocket to the socket interface it reads (its typings say net.Socket).
    container.websocket_accept(ws as unknown as Socket, {});
  });
  await new Promise<void>((resolve, reject) => {
    httpsServer.once("error", reject);
    httpsServer.listen(o.webSocketPort ?? 0, o.host, () => resolve());
  }).catch((error: unknown) => {
    server.close();
    throw error;
  });
  const webSocketPort = (httpsServer.address() as AddressInfo).port;

  const partitionOf = (deviceId: string) => {
    const hash = createHash("sha256").update(deviceId).digest().readUInt32BE(0);
    return String(hash % partitions.length);
  };

  return {
    port,
    webSocketPort,
    endpoint,
    partitionIds: partitions.map((p) => p.id),
    partitionOf,
    append(event) {
      const partition = partitions[Number(partitionOf(event.deviceId))];
      if (partition === undefined) return;
      partition.append(event, now());
      for (const reader of partition.readers) pump(partition, reader);
    },
    connectionCount: () => sockets.size + webSockets.size,
    dropConnections() {
      const count = sockets.size + webSockets.size;
      for (const socket of sockets) socket.destroy();
      for (const ws of webSockets) ws.terminate();
      return count;
    },
    async close() {
      const closed = Promise.all([
        new Promise<void>((resolve) => server.close(() => resolve())),
        new Promise<void>((resolve) => wss.close(() => resolve())),
        new Promise<void>((resolve) => httpsServer.close(() => resolve())),
      ]);
      for (const socket of sockets) socket.destroy();
      for (const ws of webSockets) ws.terminate();
      httpsServer.closeAllConnections();
      await closed;
    },
  };
}

function toAmqp(stored: StoredEvent): Message {
  const { event } = stored;
  const enqueued = new Date(stored.enqueuedAtMs);
  const properties = event.amqpProperties ?? {};
  return {
    ...properties,
    ...(properties.user_id === undefined ? {} : { user_id: Buffer.from(properties.user_id) }),
    message_annotations: {
      ...event.annotations,
      "iothub-connection-device-id": event.deviceId,
      "iothub-enqueuedtime": enqueued,
      "iothub-message-source": event.source,
      "x-opt-sequence-number": rhea.types.wrap_long(stored.sequenceNumber),
      "x-opt-offset": String(stored.offset),
      "x-opt-enqueued-time": enqueued,
    },
    application_properties: { ...event.properties },
    body: rhea.message.data_section(event.body) as unknown,
  } as Message;
}

interface RemoteAttach {
  source?: { address?: string; filter?: Record<string, unknown> };
  target?: { address?: string };
  properties?: Record<string, unknown>;
}

/** The peer's attach frame (rhea keeps it on `remote.attach`, which its typings do not name). */
function remoteAttach(link: Sender): RemoteAttach {
  return (link as unknown as { remote: { attach?: RemoteAttach } }).remote.attach ?? {};
}
function remoteAttachOf(link: Receiver): RemoteAttach {
  return (link as unknown as { remote: { attach?: RemoteAttach } }).remote.attach ?? {};
}

/**
 * Whether rhea has yet to write the link's attach frame: an open request not yet processed
 * (`state.need_open()` would consume it; the typings do not name `state`).
 */
function attachPending(link: Sender): boolean {
  return (link as unknown as { state: { open_requests: number } }).state.open_requests > 0;
}

/** The string inside a described filter value, as rhea decodes it. */
function describedValue(value: unknown): string | undefined {
  if (typeof value === "string") return value;
  if (typeof value === "object" && value !== null && "value" in value) {
    const inner = value.value;
    if (typeof inner === "string") return inner;
    if (typeof inner === "object" && inner !== null && "value" in inner) {
      const innermost = inner.value;
      return typeof innermost === "string" ? innermost : undefined;
    }
  }
  return undefined;
}

/**
 * A Service Bus SAS token: `SharedAccessSignature sr={url-encoded audience}&sig={url-encoded
 * base64 HMAC-SHA256 of "{sr}\n{se}"}&se={expiry}&skn={policy}`. Unlike IoT Hub's own tokens, the
 * HMAC key is the policy key's text (its UTF-8 bytes), as `@azure/core-amqp` signs.
 */
function parseServiceBusToken(
  token: string,
): { resource: string; expiry: number; policy: string; signedWith(key: string): boolean } | undefined {
  const prefix = "SharedAccessSignature ";
  if (!token.startsWith(prefix)) return undefined;
  const fields = new Map(
    token
      .slice(prefix.length)
      .split("&")
      .map((part) => [part.slice(0, part.indexOf("=")), part.slice(part.indexOf("=") + 1)] as const),
  );
  const sr = fields.get("sr");
  const sig = fields.get("sig");
  const skn = fields.get("skn");
  const se = Number(fields.get("se"));
  if (sr === undefined || sig === undefined || skn === undefined || !Number.isSafeInteger(se))
    return undefined;
  try {
    const resource = decodeURIComponent(sr);
    const signature = Buffer.from(decodeURIComponent(sig), "base64");
    return {
      resource,
      expiry: se,
      policy: decodeURIComponent(skn),
      signedWith(key) {
        const expected = createHmac("sha256", Buffer.from(key, "utf8")).update(`${sr}\n${se}`).digest();
        return expected.length === signature.length && timingSafeEqual(expected, signature);
      },
    };
  } catch {
    return undefined;
  }
}

const trusted = new Set<string>();

/**
 * Adds a CA to the certificates every TLS connection of this process trusts by default (Node's
 * `tls.setDefaultCACertificates`). Process wide, and needed only for AMQP over TLS: the
 * `@azure/event-hubs` client builds those TLS options itself and passes no `ca` through. Its
 * WebSocket transport does take one (`webSocketOptions.webSocketConstructorOptions.ca`), which is
 * what devicelet's EventHubsFeed uses; this is for tests of the client's default transport.
 */
export function trustCertificateAuthorityProcessWide(ca: string): void {
  if (trusted.has(ca)) return;
  trusted.add(ca);
  tls.setDefaultCACertificates([...tls.getCACertificates("default"), ca]);
}

// --- routing: what the hub appends --------------------------------------------------------------

/** Which non-telemetry sources are routed to the built-in endpoint (a real hub needs a route each). */
export interface Routes {
  readonly twinChangeEvents?: boolean;
  readonly deviceConnectionStateEvents?: boolean;
}

/** MQTT property-bag keys of IoT Hub's system properties → the AMQP properties they become. */
const SYSTEM_PROPERTIES: Readonly<Record<string, string>> = {
  "$.mid": "message_id",
  "$.cid": "correlation_id",
  "$.ct": "content_type",
  "$.ce": "content_encoding",
  "$.uid": "user_id",
};

/**
 * A device-to-cloud message as the built-in endpoint delivers it: application properties from the
 * topic's property bag, the `$.`-prefixed system properties in the AMQP properties section, and
 * the `iothub-connection-*` annotations IoT Hub stamps (SAS authentication here).
 */
export function routeDeviceMessage(message: DeviceMessage, o: { generationId: string }): EndpointEvent {
  const properties: Record<string, string> = {};
  const amqpProperties: Record<string, string> = {};
  for (const [key, value] of Object.entries(message.properties)) {
    const system = SYSTEM_PROPERTIES[key];
    if (system !== undefined) amqpProperties[system] = value;
    else if (!key.startsWith("$.")) properties[key] = value;
  }
  return {
    deviceId: message.deviceId,
    source: "Telemetry",
    body: message.body,
    properties,
    amqpProperties,
    annotations: {
      "iothub-connection-auth-method": JSON.stringify({
        scope: "device",
        type: "sas",
        issuer: "iothub",
        acceptingIpFilterRule: null,
      }),
      "iothub-connection-auth-generation-id": o.generationId,
    },
  };
}

let connectionStateCounter = 0;

/**
 * The non-telemetry event a hub change routes to, or undefined when its source is not routed.
 * Shapes follow Microsoft's "IoT Hub non-telemetry event schemas": a JSON body (`content-type`
 * `application/json`, `content-encoding` `utf-8`), application properties `hubName`, `deviceId`,
 * `operationTimestamp`, `iothub-message-schema` and `opType`, and `user-id` the hub's name. The
 * twin body is `{ version, tags?, properties: { desired?, reported? } }` with each section's patch
 * and its new `$version` (no `$metadata`); the connection state body is `{ sequenceNumber }`.
 */
export function routeChange(
  change: HubChange,
  o: { routes: Routes; hubName: string; now: number },
): EndpointEvent | undefined {
  const common = (schema: string, opType: string) => ({
    deviceId: change.deviceId,
    properties: {
      hubName: o.hubName,
      deviceId: change.deviceId,
      operationTimestamp: new Date(o.now).toISOString(),
      "iothub-message-schema": schema,
      opType,
    },
    annotations: {},
    amqpProperties: {
      content_type: "application/json",
      content_encoding: "utf-8",
      user_id: o.hubName,
      correlation_id: randomUUID(),
    },
  });
  if (change.kind === "twin") {
    if (o.routes.twinChangeEvents !== true) return undefined;
    const sections = {
      ...(change.desired === undefined ? {} : { desired: change.desired }),
      ...(change.reported === undefined ? {} : { reported: change.reported }),
    };
    const body = {
      version: change.version,
      ...(change.tags === undefined ? {} : { tags: change.tags }),
      ...(Object.keys(sections).length === 0 ? {} : { properties: sections }),
    };
    return {
      ...common("twinChangeNotification", change.opType),
      source: "twinChangeEvents",
      body: Buffer.from(JSON.stringify(body)),
    };
  }
  if (o.routes.deviceConnectionStateEvents !== true) return undefined;
  connectionStateCounter += 1;
  const sequenceNumber = connectionStateCounter.toString(16).toUpperCase().padStart(56, "0");
  return {
    ...common(
      "deviceConnectionStateNotification",
      change.connected ? "deviceConnected" : "deviceDisconnected",
    ),
    source: "deviceConnectionStateEvents",
    body: Buffer.from(JSON.stringify({ sequenceNumber })),
  };
}
