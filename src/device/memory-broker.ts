/**
 * An in-memory MQTT broker for unit tests of the device side: enough of MQTT for the protocol
 * (QoS 1 in order, retained messages, a zero-byte retained publish clearing one, `+`/`#` filters,
 * wills on an abrupt drop) and nothing more. Delivery is asynchronous (microtasks) and in order,
 * like a network. Integration tests use the real Mosquitto instead.
 *
 *   const broker = new MemoryBroker();
 *   const session = new DeviceSession({ link: broker.link(), ... });
 *   broker.publish(topics.desired("dev-1"), encodeMessage(doc), { retain: true });  // as devicelet
 *   broker.retainedJson(topics.reported("dev-1"));
 */
import type { DeviceLink, LinkHandlers, PublishOptions } from "./link.ts";

export interface BrokerMessage {
  readonly topic: string;
  readonly payload: Buffer;
  readonly retain: boolean;
}

interface Subscriber {
  readonly filters: Set<string>;
  deliver(topic: string, payload: Buffer): void;
}

/** MQTT topic filter match (MQTT 3.1.1 §4.7): `+` one level, `#` the rest. */
export function topicMatches(filter: string, topic: string): boolean {
  const f = filter.split("/");
  const t = topic.split("/");
  for (let i = 0; i < f.length; i++) {
    if (f[i] === "#") return true;
    if (i >= t.length || (f[i] !== "+" && f[i] !== t[i])) return false;
  }
  return f.length === t.length;
}

export class MemoryBroker {
  readonly retained = new Map<string, Buffer>();
  /** Every message published through the broker, wills included, in order. */
  readonly published: BrokerMessage[] = [];
  /** Subscriptions and publishes in the order the broker saw them (`subscribe a/b`, `publish a/c`). */
  readonly trace: string[] = [];
  readonly #subscribers = new Set<Subscriber>();

  /** A new client connection for one device. */
  link(options: { protocolVersion?: 4 | 5 } = {}): DeviceLink {
    return new MemoryLink(this, options.protocolVersion ?? 5);
  }

  /** Publishes as a client would (devicelet's side in tests). */
  publish(topic: string, payload: Buffer | string, options: { retain?: boolean } = {}): void {
    const buffer = typeof payload === "string" ? Buffer.from(payload) : payload;
    const retain = options.retain ?? false;
    this.published.push({ topic, payload: buffer, retain });
    this.trace.push(`publish ${topic}`);
    if (retain) {
      if (buffer.length === 0) this.retained.delete(topic);
      else this.retained.set(topic, buffer);
    }
    for (const sub of this.#subscribers) {
      if ([...sub.filters].some((f) => topicMatches(f, topic))) sub.deliver(topic, buffer);
    }
  }

  /** Observes messages matching `filter` (retained ones first); returns the unsubscribe. */
  watch(filter: string, cb: (topic: string, payload: Buffer) => void): () => void {
    const sub: Subscriber = { filters: new Set([filter]), deliver: (t, p) => queueMicrotask(() => cb(t, p)) };
    this.#subscribers.add(sub);
    this.sendRetained(sub, [filter]);
    return () => this.#subscribers.delete(sub);
  }

  /** The retained message on `topic`, parsed as JSON (cast it to the protocol type you expect). */
  retainedJson(topic: string): Record<string, unknown> | undefined {
    const payload = this.retained.get(topic);
    return payload ? (JSON.parse(payload.toString("utf8")) as Record<string, unknown>) : undefined;
  }

  /** Parsed JSON of every message published on `topic`, in order. */
  messagesOn<T = Record<string, unknown>>(topic: string): T[] {
    return this.published
      .filter((m) => m.topic === topic)
      .map((m) => JSON.parse(m.payload.toString("utf8")) as T);
  }

  /** @internal */ attach(sub: Subscriber): void {
    this.#subscribers.add(sub);
  }
  /** @internal */ detach(sub: Subscriber): void {
    this.#subscribers.delete(sub);
  }
  /** @internal */ sendRetained(sub: Subscriber, filters: readonly string[]): void {
    for (const [topic, payload] of this.retained) {
      if (filters.some((f) => topicMatches(f, topic))) sub.deliver(topic, payload);
    }
  }
}

class MemoryLink implements DeviceLink {
  readonly protocolVersion: 4 | 5;
  readonly #broker: MemoryBroker;
  #handlers: LinkHandlers | undefined;
  #up = false;
  #connecting = false;
  #will: { topic: string; payload: Buffer } | undefined;
  readonly #sub: Subscriber;

  constructor(broker: MemoryBroker, protocolVersion: 4 | 5) {
    this.#broker = broker;
    this.protocolVersion = protocolVersion;
    this.#sub = {
      filters: new Set(),
      deliver: (topic, payload) =>
        queueMicrotask(() => {
          if (this.#up) this.#handlers?.onMessage(topic, payload);
        }),
    };
  }

  get up(): boolean {
    return this.#up;
  }

  open(handlers: LinkHandlers): void {
    if (this.#handlers) throw new Error("memory link already open");
    this.#handlers = handlers;
    this.#connect();
  }

  publish(topic: string, payload: Buffer, options: PublishOptions): Promise<void> {
    if (!this.#up) return Promise.reject(new Error("memory link is down"));
    this.#broker.publish(topic, payload, { retain: options.retain });
    return Promise.resolve();
  }

  subscribe(filters: readonly string[]): Promise<void> {
    if (!this.#up) return Promise.reject(new Error("memory link is down"));
    for (const f of filters) {
      this.#sub.filters.add(f);
      this.#broker.trace.push(`subscribe ${f}`);
    }
    // SUBACK first, then the retained messages (MQTT 3.1.1 §3.8.4).
    queueMicrotask(() => this.#broker.sendRetained(this.#sub, filters));
    return Promise.resolve();
  }

  disconnect(options: { abrupt: boolean }): Promise<void> {
    this.#connecting = false;
    if (!this.#up) return Promise.resolve();
    this.#up = false;
    this.#broker.detach(this.#sub);
    this.#sub.filters.clear();
    if (options.abrupt && this.#will)
      this.#broker.publish(this.#will.topic, this.#will.payload, { retain: true });
    this.#handlers?.onDown();
    return Promise.resolve();
  }

  reconnect(): void {
    if (!this.#up) this.#connect();
  }

  close(): Promise<void> {
    return this.disconnect({ abrupt: false });
  }

  #connect(): void {
    if (this.#connecting) return;
    this.#connecting = true;
    queueMicrotask(() => {
      if (!this.#connecting) return;
      this.#connecting = false;
      const will = this.#handlers?.will();
      this.#will = will ? { topic: will.topic, payload: will.payload } : undefined;
      this.#up = true;
      this.#broker.attach(this.#sub);
      this.#handlers?.onUp();
    });
  }
}
