/**
 * Robustness of the codec: random bytes, random JSON and mutated valid messages, fed to every
 * decoder on right and wrong topics. Nothing ever throws; every input is accepted (and then
 * re-encodes to an equal message) or refused with one of the documented reasons.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  decodeBridge,
  decodeFromDevice,
  decodeToDevice,
  desiredContentHash,
  encodeMessage,
  type DecodeResult,
  type RejectReason,
} from "./codec.ts";
import { topics } from "./topics.ts";
import type {
  BridgeMessage,
  BridgeToDevice,
  DesiredDocument,
  DesiredPod,
  DeviceToBridge,
  Tombstone,
} from "./types.ts";

const REASONS: readonly RejectReason[] = [
  "empty",
  "oversized",
  "not-json",
  "schema",
  "wrong-device",
  "unknown-topic",
  "unsupported-protocol",
];
const ID = "dev-1";
const runs = { numRuns: 400 };

// ---- valid messages --------------------------------------------------------------------------

const token = fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9._-]{0,12}$/);
const dns = fc.stringMatching(/^[a-z0-9]([-a-z0-9]{0,8}[a-z0-9])?$/);
const time = fc
  .date({ min: new Date("2000-01-01T00:00:00Z"), max: new Date("2100-01-01T00:00:00Z"), noInvalidDate: true })
  .map((d) => d.toISOString());
const sha = fc.stringMatching(/^[0-9a-f]{64}$/);
const seq = fc.nat({ max: 1_000_000 });
const reason = fc.stringMatching(/^[A-Z][A-Za-z0-9]{0,10}$/);
const text = fc.string({ maxLength: 40 });
const opt = <T>(arb: fc.Arbitrary<T>) => fc.option(arb, { nil: undefined });
const base = <K extends string>(kind: K) => ({
  protocol: fc.constant(1 as const),
  kind: fc.constant(kind),
  deviceId: fc.constant(ID),
});
const origin = { bootId: token, seq };

const file = fc.oneof(
  fc.record(
    {
      path: dns.map((n) => `/etc/${n}`),
      encoding: fc.constantFrom("utf8" as const, "base64" as const),
      content: text,
      mode: opt(fc.nat({ max: 511 })),
    },
    { requiredKeys: ["path", "encoding", "content"] },
  ),
  fc.record({
    path: dns.map((n) => `/opt/${n}`),
    ref: fc.record({ url: dns.map((n) => `https://blobs.example/${n}`), sha256: sha, size: fc.nat() }),
  }),
);
const app = fc.record(
  {
    name: dns,
    image: dns.map((n) => `registry.example/${n}:1`),
    command: fc.array(text, { maxLength: 3 }),
    args: fc.array(text, { maxLength: 3 }),
    env: fc.dictionary(fc.stringMatching(/^[A-Z_]{1,8}$/), text, { maxKeys: 3 }),
    files: fc.array(file, { maxLength: 2 }),
    ports: fc.array(
      fc.record({
        containerPort: fc.integer({ min: 1, max: 65535 }),
        protocol: fc.constantFrom("TCP", "UDP"),
      }),
      { maxLength: 2 },
    ),
  },
  { requiredKeys: ["name", "image", "command", "args", "env", "files"] },
);
const desiredPod: fc.Arbitrary<DesiredPod> = fc.record({
  uid: token,
  namespace: dns,
  name: dns,
  hash: sha,
  restartPolicy: fc.constantFrom("Always" as const, "OnFailure" as const, "Never" as const),
  terminationGracePeriodSeconds: fc.nat({ max: 3600 }),
  apps: fc.array(app, { minLength: 1, maxLength: 2 }),
});
const tombstone: fc.Arbitrary<Tombstone> = fc.record({
  uid: token,
  namespace: dns,
  name: dns,
  deleted: fc.constant(true as const),
  gracePeriodSeconds: fc.nat({ max: 60 }),
});
const desired: fc.Arbitrary<DesiredDocument> = fc
  .record({
    ...base("desired"),
    epoch: token,
    generation: fc.integer({ min: 1, max: 1e9 }),
    issuedAt: time,
    pods: fc.array(desiredPod, { maxLength: 2 }),
    tombstones: fc.array(tombstone, { maxLength: 2 }),
  })
  .map((d) => ({ ...d, contentHash: desiredContentHash(d.pods, d.tombstones) }));
const command = fc.record({
  ...base("command"),
  commandId: token,
  command: fc.constant("restart-app" as const),
  podUid: token,
  app: dns,
  args: fc.array(text, { maxLength: 2 }),
  issuedAt: time,
  expiresAt: time,
});
const capabilities = fc.record({
  maxMessageBytes: fc.integer({ min: 1024, max: 1 << 20 }),
  encodings: fc.constant(["json" as const]),
  runtime: fc.constantFrom("process" as const, "firmware" as const),
  logs: fc.boolean(),
  exec: fc.boolean(),
});
const presence = fc.oneof(
  fc.record({
    ...base("presence"),
    ...origin,
    state: fc.constant("online" as const),
    sentAt: time,
    device: fc.record({
      deviceClass: dns,
      os: dns,
      arch: dns,
      capacity: fc.constant({ cpu: "1", memory: "64Mi" }),
      capabilities,
    }),
  }),
  fc.record({
    ...base("presence"),
    ...origin,
    state: fc.constantFrom("offline" as const, "lost" as const),
    sentAt: time,
  }),
  fc.record({
    ...base("presence"),
    ...origin,
    state: fc.constant("sleeping" as const),
    sentAt: time,
    wakeAt: time,
  }),
);
const appState = fc.oneof(
  fc.record({ state: fc.constant("waiting" as const), reason }),
  fc.record({ state: fc.constant("running" as const), startedAt: time }),
  fc.record({
    state: fc.constant("terminated" as const),
    exitCode: fc.integer({ min: -255, max: 255 }),
    reason,
    finishedAt: time,
  }),
);
const reported = fc.record({
  ...base("reported"),
  ...origin,
  observedAt: time,
  epoch: fc.option(token, { nil: null }),
  observedGeneration: fc.nat(),
  appliedGeneration: fc.nat(),
  pods: fc.array(
    fc.record({
      uid: token,
      hash: sha,
      phase: fc.constantFrom("Pending" as const, "Running" as const, "Succeeded" as const, "Failed" as const),
      apps: fc.array(
        fc.record({ name: dns, image: dns, status: appState, ready: fc.boolean(), restartCount: fc.nat() }),
        { maxLength: 2 },
      ),
    }),
    { maxLength: 2 },
  ),
});
const ack = fc.oneof(
  fc.record({
    ...base("ack"),
    ...origin,
    epoch: token,
    generation: fc.integer({ min: 1, max: 1e9 }),
    stage: fc.constantFrom("received" as const, "applied" as const),
  }),
  fc.record({
    ...base("command-ack"),
    ...origin,
    commandId: token,
    stage: fc.constantFrom("received" as const, "done" as const, "failed" as const, "expired" as const),
  }),
);
const event = fc.record({
  ...base("event"),
  ...origin,
  type: fc.constantFrom("Normal" as const, "Warning" as const),
  reason,
  message: text,
  at: time,
});
const bridge: fc.Arbitrary<BridgeMessage> = fc.record({
  protocol: fc.constant(1 as const),
  kind: fc.constant("bridge" as const),
  state: fc.constantFrom("online" as const, "offline" as const),
  instance: dns,
  sentAt: time,
});

type Framed = { topic: string; message: DeviceToBridge | BridgeToDevice | BridgeMessage };
const framed: fc.Arbitrary<Framed> = fc.oneof(
  desired.map((message) => ({ topic: topics.desired(ID), message })),
  command.map((message) => ({ topic: topics.command(ID, message.commandId), message })),
  presence.map((message) => ({ topic: topics.state(ID), message })),
  reported.map((message) => ({ topic: topics.reported(ID), message })),
  ack.map((message) => ({ topic: topics.ack(ID), message })),
  event.map((message) => ({ topic: topics.evt(ID), message })),
  bridge.map((message) => ({ topic: topics.bridge(), message })),
);

// ---- mutations ---------------------------------------------------------------------------------

type Json = unknown;
const paths = (value: Json, prefix: (string | number)[] = []): (string | number)[][] => {
  if (Array.isArray(value)) return [prefix, ...value.flatMap((v, i) => paths(v, [...prefix, i]))];
  if (typeof value === "object" && value !== null) {
    return [prefix, ...Object.entries(value).flatMap(([k, v]) => paths(v, [...prefix, k]))];
  }
  return [prefix];
};
const DROP = { drop: true } as const;
/** A change to one node: returns the new value, or {@link DROP} to delete the key or item. */
type Change = (old: Json) => Json;
/** A copy of `value` with `change` applied at `path`. */
function replaceAt(value: Json, path: readonly (string | number)[], change: Change): Json {
  const [head, ...rest] = path;
  if (head === undefined) {
    const next = change(value);
    return next === DROP ? undefined : next;
  }
  if (Array.isArray(value)) {
    if (rest.length > 0) return value.map((v: Json, i) => (i === head ? replaceAt(v, rest, change) : v));
    const next = change(value[head as number]);
    return next === DROP
      ? value.filter((_, i) => i !== head)
      : value.map((v: Json, i) => (i === head ? next : v));
  }
  const entries =
    typeof value === "object" && value !== null ? Object.entries(value as Record<string, Json>) : [];
  const key = String(head);
  const old = entries.find(([k]) => k === key)?.[1];
  const next = rest.length > 0 ? replaceAt(old, rest, change) : change(old);
  const others = entries.filter(([k]) => k !== key);
  return Object.fromEntries(next === DROP ? others : [...others, [key, next]]);
}
const huge = "x".repeat(300_000);
const mutation: fc.Arbitrary<Change> = fc.oneof(
  fc.constant((): Json => DROP),
  fc.jsonValue({ maxDepth: 2 }).map((v) => (): Json => v),
  fc.constantFrom<() => Json>(
    () => huge,
    () => "y".repeat(5000),
    () => -1,
    () => 1.5,
    () => null,
    () => [],
    () => ({}),
    () => "other-device",
    () => 2,
  ),
  fc.string({ maxLength: 8 }).map(
    (k) =>
      (old: Json): Json =>
        typeof old === "object" && old !== null && !Array.isArray(old) ? { ...old, [k || "extra"]: 1 } : old,
  ),
);
const wrongTopic = fc.constantFrom(
  topics.desired(ID),
  topics.state(ID),
  topics.reported(ID),
  topics.ack(ID),
  topics.evt(ID),
  topics.command(ID, "c1"),
  topics.state("someone-else"),
  topics.desired("someone-else"),
  topics.bridge(),
  "devicelet/v1/dev-1",
  "other/v1/dev-1/state",
);

// ---- the property ------------------------------------------------------------------------------

/** Every decoder on `topic`; each answer must be well-formed, and an acceptance must re-encode. */
const seen = new Map<string, number>();
function feed(topic: string, payload: Uint8Array): void {
  const results: DecodeResult<unknown>[] = [
    decodeFromDevice(topic, payload),
    decodeToDevice(topic, payload, { deviceId: ID }),
    decodeBridge(payload),
  ];
  const [fromDevice, toDevice, bridgeResult] = results;
  for (const result of results) {
    const outcome = result.ok ? "ok" : result.reason;
    seen.set(outcome, (seen.get(outcome) ?? 0) + 1);
    if (!result.ok) {
      expect(REASONS).toContain(result.reason);
      expect(typeof result.detail).toBe("string");
      expect(result.detail.length).toBeGreaterThan(0);
    }
  }
  if (fromDevice?.ok) {
    const { deviceId, message } = fromDevice.value as { deviceId: string; message: DeviceToBridge };
    expect(decodeFromDevice(topic, encodeMessage(message))).toEqual({
      ok: true,
      value: { deviceId, message },
    });
  }
  if (toDevice?.ok)
    expect(decodeToDevice(topic, encodeMessage(toDevice.value as BridgeToDevice), { deviceId: ID })).toEqual(
      toDevice,
    );
  if (bridgeResult?.ok)
    expect(decodeBridge(encodeMessage(bridgeResult.value as BridgeMessage))).toEqual(bridgeResult);
}

/** Decodes `payload` with the decoder meant for `message`'s kind, on `topic`. */
const decodeAs = (message: Framed["message"], topic: string, payload: Uint8Array): DecodeResult<unknown> =>
  message.kind === "bridge"
    ? decodeBridge(payload)
    : message.kind === "desired" || message.kind === "command"
      ? decodeToDevice(topic, payload, { deviceId: ID })
      : decodeFromDevice(topic, payload);

describe("codec properties", () => {
  it("valid messages encode and decode to themselves on their topic", () => {
    fc.assert(
      fc.property(framed, ({ topic, message }) => {
        const payload = encodeMessage(message);
        expect(decodeAs(message, topic, payload)).toEqual({
          ok: true,
          value:
            message.kind === "bridge" || message.kind === "desired" || message.kind === "command"
              ? message
              : { deviceId: ID, message },
        });
        feed(topic, payload);
      }),
      runs,
    );
  });

  it("random bytes never throw", () => {
    fc.assert(
      fc.property(wrongTopic, fc.uint8Array({ maxLength: 256 }), (topic, payload) => feed(topic, payload)),
      runs,
    );
  });

  it("random JSON, and objects that look like messages, never throw", () => {
    const lookalike = fc.record({
      protocol: fc.oneof(fc.constant(1), fc.jsonValue()),
      kind: fc.constantFrom(
        "desired",
        "command",
        "presence",
        "reported",
        "ack",
        "command-ack",
        "event",
        "bridge",
      ),
      deviceId: fc.constantFrom(ID, "x", "someone-else"),
      extra: fc.jsonValue({ maxDepth: 2 }),
    });
    fc.assert(
      fc.property(wrongTopic, fc.oneof(fc.jsonValue(), lookalike), (topic, value) =>
        feed(topic, Buffer.from(JSON.stringify(value))),
      ),
      runs,
    );
  });

  it("mutated valid messages never throw, on their own topic or another", () => {
    const mutated = framed.chain(({ topic, message }) => {
      const all = paths(message);
      return fc.record({
        topic: fc.oneof({ arbitrary: fc.constant(topic), weight: 3 }, { arbitrary: wrongTopic, weight: 1 }),
        value: fc
          .array(fc.tuple(fc.nat({ max: all.length - 1 }), mutation), { minLength: 1, maxLength: 3 })
          .map((changes) => changes.reduce<Json>((v, [i, f]) => replaceAt(v, all[i] ?? [], f), message)),
      });
    });
    seen.clear();
    fc.assert(
      fc.property(mutated, ({ topic, value }) => {
        const json = JSON.stringify(value) as string | undefined;
        feed(topic, Buffer.from(json ?? ""));
      }),
      runs,
    );
    // The mutations reach past the parser: some survive, most fail the schema, some the size limit.
    for (const outcome of ["ok", "schema", "unknown-topic", "oversized"])
      expect(seen.get(outcome)).toBeGreaterThan(0);
  });

  it("any other integer protocol version is `unsupported-protocol`, whatever else is wrong", () => {
    fc.assert(
      fc.property(
        framed,
        fc.integer().filter((v) => v !== 1),
        fc.jsonValue(),
        ({ topic, message }, protocol, junk) => {
          const payload = Buffer.from(JSON.stringify({ ...message, protocol, junk }));
          expect(decodeAs(message, topic, payload)).toMatchObject({
            ok: false,
            reason: "unsupported-protocol",
          });
        },
      ),
      runs,
    );
  });

  it("a valid device message under another device's id is always `wrong-device`", () => {
    const fromDevices = fc.oneof(presence, reported, ack, event);
    fc.assert(
      fc.property(
        fromDevices,
        dns.filter((d) => d !== ID),
        (message, other) => {
          const sub =
            message.kind === "presence"
              ? "state"
              : message.kind === "event"
                ? "evt"
                : message.kind.replace("command-", "");
          const result = decodeFromDevice(`devicelet/v1/${other}/${sub}`, encodeMessage(message));
          expect(result).toMatchObject({ ok: false, reason: "wrong-device" });
        },
      ),
      runs,
    );
  });
});
