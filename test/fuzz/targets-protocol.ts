/**
 * Fuzz targets on the device-facing side: the codec's decoders for every topic and kind, and the
 * MQTT provider's inbound handler fed through its real entry point (`Inbound.handle`) with the
 * provider's real registry, desired store, command queue and status coalescer behind it; only the
 * broker is replaced by a publish that records nothing.
 *
 * Seeds are the `examples` of every schema in schemas/ (valid messages), mutated as values and as
 * bytes, plus bytes made from nothing, on right and wrong topics.
 */
import { readFileSync, readdirSync } from "node:fs";
import path from "node:path";
import fc from "fast-check";
import pino from "pino";
import { CommandQueue } from "../../providers/mqtt/commands.ts";
import { DesiredStore } from "../../providers/mqtt/desired.ts";
import { DeviceRegistry } from "../../providers/mqtt/devices.ts";
import { GenerationAllocator } from "../../providers/mqtt/generations.ts";
import { Inbound } from "../../providers/mqtt/inbound.ts";
import { MqttMetrics } from "../../providers/mqtt/metrics.ts";
import { Observations } from "../../providers/mqtt/observations.ts";
import { StatusCoalescer } from "../../providers/mqtt/pod-status.ts";
import { allowListMatcher } from "../../providers/mqtt/schema.ts";
import * as codec from "../../src/protocol/codec.ts";
import type { DecodeResult } from "../../src/protocol/codec.ts";
import { MemoryStore } from "../support/memory-store.ts";
import { generatedBytes, mutatedJsonBytes, toJson, typedMutatedValue } from "./mutate.ts";
import { accepted, HiddenCrash, rejected, type FuzzTarget, type Verdict } from "./target.ts";

const schemasDir = path.resolve(import.meta.dirname, "../../schemas");

/** Every schema's `examples`, by kind. */
export const schemaExamples = (): Map<string, Record<string, unknown>[]> => {
  const byKind = new Map<string, Record<string, unknown>[]>();
  for (const file of readdirSync(schemasDir).filter((f) => f.endsWith(".json"))) {
    const schema = JSON.parse(readFileSync(path.join(schemasDir, file), "utf8")) as { examples?: unknown[] };
    for (const example of schema.examples ?? []) {
      const kind = (example as { kind?: unknown }).kind;
      if (typeof kind !== "string") continue;
      byKind.set(kind, [...(byKind.get(kind) ?? []), example as Record<string, unknown>]);
    }
  }
  return byKind;
};

const examples = schemaExamples();
const of = (...kinds: string[]) => kinds.flatMap((k) => examples.get(k) ?? []);
const DEVICE = "gw-1";

/** A codec answer as a verdict; a rejection that wraps a caught exception is a crash. */
const decoded = (result: DecodeResult<unknown>): Verdict => {
  if (result.ok) return accepted;
  if (result.detail.startsWith("could not be checked")) throw new HiddenCrash(result.detail);
  if (result.detail === "") throw new HiddenCrash(`rejected (${result.reason}) without a detail`);
  return rejected(result.reason);
};

/** Mutated seeds (some keeping their types, so they get past the schema), and bytes from nothing. */
const bytesFor = (seeds: readonly unknown[]) =>
  fc.oneof(
    { arbitrary: mutatedJsonBytes(seeds), weight: 4 },
    {
      arbitrary: typedMutatedValue(seeds).map((v) => Buffer.from(toJson(v) ?? "", "utf8")),
      weight: 2,
    },
    { arbitrary: generatedBytes, weight: 1 },
  );

/** Right topics mostly; sometimes another device's, an unknown sub-topic, or junk. */
const topicFor = (right: readonly string[]) =>
  fc.oneof(
    { arbitrary: fc.constantFrom(...right), weight: 8 },
    {
      arbitrary: fc.constantFrom(
        "devicelet/v1/gw-2/state",
        "devicelet/v1/GW-1/reported",
        "devicelet/v1/gw-1/desired",
        "devicelet/v1/gw-1/cmd/../x",
        "devicelet/v1/_bridge/state",
        "devicelet/v2/gw-1/state",
        "devicelet/v1/gw-1/state/extra",
        "devicelet/v1//ack",
        "",
        "/",
        "#",
      ),
      weight: 1,
    },
    { arbitrary: fc.string({ maxLength: 80 }), weight: 1 },
  );

const fromDeviceTopics = ["state", "reported", "ack", "evt"].map((s) => `devicelet/v1/${DEVICE}/${s}`);
const deviceSeeds = of("presence", "reported", "ack", "command-ack", "event");

const fromDevice: FuzzTarget<{ topic: string; payload: Uint8Array }> = {
  name: "codec.decodeFromDevice",
  input: fc.record({ topic: topicFor(fromDeviceTopics), payload: bytesFor(deviceSeeds) }),
  run: ({ topic, payload }) => decoded(codec.decodeFromDevice(topic, payload)),
};

const toDevice: FuzzTarget<{ topic: string; payload: Uint8Array }> = {
  name: "codec.decodeToDevice",
  input: fc.record({
    topic: topicFor([
      `devicelet/v1/${DEVICE}/desired`,
      ...of("command").map((c) => `devicelet/v1/${DEVICE}/cmd/${String(c.commandId)}`),
    ]),
    payload: bytesFor(of("desired", "command")),
  }),
  run: ({ topic, payload }) => decoded(codec.decodeToDevice(topic, payload, { deviceId: DEVICE })),
};

const bridge: FuzzTarget<Uint8Array> = {
  name: "codec.decodeBridge",
  input: bytesFor(of("bridge")),
  run: (payload) => decoded(codec.decodeBridge(payload)),
};

type NoticeDecoder = (topic: string, payload: Uint8Array, o: { deviceId: string }) => DecodeResult<unknown>;
const decodeNotice = (codec as unknown as { decodeNotice?: NoticeDecoder }).decodeNotice;
const notice: FuzzTarget<{ topic: string; payload: Uint8Array }>[] =
  decodeNotice === undefined || of("notice").length === 0
    ? []
    : [
        {
          name: "codec.decodeNotice",
          input: fc.record({
            topic: topicFor([`devicelet/v1/${DEVICE}/notice`]),
            payload: bytesFor(of("notice")),
          }),
          run: ({ topic, payload }) => decoded(decodeNotice(topic, payload, { deviceId: DEVICE })),
        },
      ];

/**
 * The provider's inbound path with its real collaborators. State carries over from input to
 * input (a birth, then reports and acks about it), as it does in a running provider.
 */
interface InboundInput {
  readonly topic: string;
  readonly payload: Uint8Array;
  readonly retained: boolean;
  /** A valid message to send as it is, with a fresh `seq`, so later inputs meet a known device. */
  readonly valid?: Record<string, unknown>;
}

const SUBTOPIC: Readonly<Record<string, string>> = {
  presence: "state",
  reported: "reported",
  ack: "ack",
  "command-ack": "ack",
  event: "evt",
};

function inboundTarget(): FuzzTarget<InboundInput> {
  const silent = pino({ level: "silent" });
  const crashes: string[] = [];
  // The handler catches what its collaborators throw and logs it at error: that is a crash here.
  const logger = pino({ level: "error" }, { write: (line: string) => void crashes.push(line) });
  const store = new MemoryStore();
  const metrics = new MqttMetrics();
  const registry = new DeviceRegistry({ onChange: () => undefined });
  const allocator = new GenerationAllocator({ store, blockSize: 1000 });
  const desired = new DesiredStore({
    allocator,
    publish: () => Promise.resolve(),
    maxBytes: () => 256 * 1024,
    debounceMs: 0,
    publishTimeoutMs: 1000,
    onChange: () => undefined,
    metrics,
    logger: silent,
  });
  const commands = new CommandQueue({
    limit: 10,
    store,
    publish: () => Promise.resolve(),
    isOnline: (id) => registry.effectivePresence(id) === "online",
    onExpired: () => undefined,
    onFailed: () => undefined,
    metrics,
    logger: silent,
  });
  const statuses = new StatusCoalescer({ delayMs: 0, statusesOf: () => [], emit: () => true });
  const inbound = new Inbound({
    allowed: allowListMatcher(["gw-*", "mcu-*"]),
    maxMessageBytes: 256 * 1024,
    registry,
    desired,
    observations: new Observations(),
    commands,
    statuses,
    sessions: { deliver: () => false, deviceAway: () => undefined },
    stats: { record: () => "stale" },
    allocator,
    births: { save: (id, device) => void allocator.saveDevice(id, device).catch(() => undefined) },
    metrics,
    logger,
    recordEvent: () => undefined,
    deleted: () => undefined,
  });
  const seeds = of("presence", "reported", "ack", "command-ack", "event");
  let seq = 1_000;
  return {
    name: "mqtt.Inbound.handle",
    input: fc.oneof(
      {
        arbitrary: fc.record({
          topic: topicFor([...fromDeviceTopics, "devicelet/v1/mcu-7/state", "devicelet/v1/other-1/state"]),
          payload: bytesFor(seeds),
          retained: fc.boolean(),
        }),
        weight: 4,
      },
      {
        arbitrary: fc.record({
          topic: fc.constant(""),
          payload: fc.constant(new Uint8Array()),
          retained: fc.boolean(),
          valid: fc.constantFrom(...seeds),
        }),
        weight: 1,
      },
    ),
    run: (input) => {
      let { topic, payload } = input;
      const { retained, valid } = input;
      if (valid !== undefined) {
        topic = `devicelet/v1/${String(valid.deviceId)}/${SUBTOPIC[String(valid.kind)] ?? "state"}`;
        payload = Buffer.from(JSON.stringify({ ...valid, seq: ++seq }), "utf8");
      }
      const before = metrics.snapshot();
      inbound.handle(topic, Buffer.from(payload), retained);
      if (crashes.length > 0) throw new HiddenCrash(crashes.splice(0).join("\n").slice(0, 2000));
      const after = metrics.snapshot();
      const reason = Object.keys(after.rejected).find(
        (r) =>
          after.rejected[r as keyof typeof after.rejected] !==
          before.rejected[r as keyof typeof before.rejected],
      );
      if (reason !== undefined) return rejected(reason);
      if (after.refusedMessages !== before.refusedMessages) return rejected("refused-device");
      if (after.stale !== before.stale || after.staleWills !== before.staleWills) return rejected("stale");
      // A zero-length payload clears a retained topic: nothing to do, and nothing wrong.
      if (payload.byteLength === 0) return rejected("empty");
      if (after.received === before.received) return rejected("bridge-topic");
      return accepted;
    },
    dispose: () => {
      void desired.stop();
      commands.stop();
      statuses.stop();
    },
  };
}

export const protocolTargets = (): FuzzTarget[] =>
  [fromDevice, toDevice, bridge, ...notice, inboundTarget()] as FuzzTarget[];
