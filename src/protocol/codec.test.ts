import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import {
  DEFAULT_MAX_MESSAGE_BYTES,
  decodeBridge,
  decodeFromDevice,
  decodeToDevice,
  desiredContentHash,
  encodeMessage,
  type DecodeResult,
} from "./codec.ts";
import { topics } from "./topics.ts";
import ackSchema from "../../schemas/ack.json" with { type: "json" };
import bridgeSchema from "../../schemas/bridge.json" with { type: "json" };
import commandSchema from "../../schemas/command.json" with { type: "json" };
import desiredSchema from "../../schemas/desired.json" with { type: "json" };
import eventSchema from "../../schemas/event.json" with { type: "json" };
import presenceSchema from "../../schemas/presence.json" with { type: "json" };
import reportedSchema from "../../schemas/reported.json" with { type: "json" };
import type {
  AckMessage,
  BridgeMessage,
  CommandMessage,
  DesiredDocument,
  DesiredPod,
  DeviceEventMessage,
  PresenceMessage,
  ReportedDocument,
  Tombstone,
} from "./types.ts";

const T = "2026-03-01T12:00:00.000Z";
const H = "a".repeat(64);
const bytes = (value: unknown) => Buffer.from(typeof value === "string" ? value : JSON.stringify(value));
// The fixtures are the schemas' own examples (schemas/*.json `examples`), so those stay valid too.
const example = (schema: { examples: readonly unknown[] }, index = 0): unknown => {
  const value = schema.examples[index];
  if (value === undefined) throw new Error(`no example ${index}`);
  return structuredClone(value);
};
const detailOf = (result: DecodeResult<unknown>) => (result.ok ? "(accepted)" : result.detail);
const doc = example(desiredSchema) as DesiredDocument;
const ID = doc.deviceId;
const pod = doc.pods[0] as DesiredPod;
const tombstone = doc.tombstones[0] as Tombstone;
const desired = (over: Partial<DesiredDocument> = {}): DesiredDocument => {
  const pods = over.pods ?? doc.pods;
  const tombstones = over.tombstones ?? doc.tombstones;
  return { ...doc, pods, tombstones, contentHash: desiredContentHash(pods, tombstones), ...over };
};
const command = example(commandSchema) as CommandMessage;
const birth = example(presenceSchema, 0) as PresenceMessage;
const will = example(presenceSchema, 1) as PresenceMessage;
const reported = example(reportedSchema) as ReportedDocument;
const ack = example(ackSchema, 1) as AckMessage;
const commandAck = example(ackSchema, 3) as AckMessage;
const event = example(eventSchema) as DeviceEventMessage;
const bridge = example(bridgeSchema) as BridgeMessage;
const CID = command.commandId;

describe("round trips", () => {
  it.each([
    ["state", birth],
    ["state", will],
    ["state", { ...will, state: "sleeping", wakeAt: "2026-03-01T13:00:00Z" }],
    ["reported", reported],
    ["reported", { ...reported, epoch: null, observedGeneration: 0, appliedGeneration: 0, pods: [] }],
    ["ack", ack],
    ["ack", example(ackSchema, 2) as AckMessage],
    ["ack", commandAck],
    ["evt", event],
  ] as const)("decodeFromDevice(%s) accepts what encodeMessage wrote", (sub, message) => {
    const result = decodeFromDevice(`devicelet/v1/${ID}/${sub}`, encodeMessage(message));
    expect(result).toEqual({ ok: true, value: { deviceId: ID, message } });
  });

  it("decodeToDevice accepts desired documents and commands on their topics", () => {
    expect(decodeToDevice(topics.desired(ID), encodeMessage(desired()), { deviceId: ID })).toEqual({
      ok: true,
      value: desired(),
    });
    const cmd = decodeToDevice(topics.command(ID, CID), encodeMessage(command), { deviceId: ID });
    expect(cmd).toEqual({ ok: true, value: command });
  });

  it("decodeBridge accepts the bridge presence, from a plain Uint8Array too", () => {
    expect(decodeBridge(new Uint8Array(encodeMessage(bridge)))).toEqual({ ok: true, value: bridge });
  });
});

describe("rejections", () => {
  const fromDevice = (sub: string, value: unknown, maxBytes?: number) =>
    decodeFromDevice(
      `devicelet/v1/${ID}/${sub}`,
      bytes(value),
      maxBytes === undefined ? undefined : { maxBytes },
    );

  it("a zero-length payload is `empty` (a cleared retained message) on every decoder", () => {
    const none = new Uint8Array(0);
    expect(decodeFromDevice(topics.reported(ID), none)).toMatchObject({ ok: false, reason: "empty" });
    expect(decodeToDevice(topics.desired(ID), none, { deviceId: ID })).toMatchObject({
      ok: false,
      reason: "empty",
    });
    expect(decodeBridge(none)).toMatchObject({ ok: false, reason: "empty" });
  });

  it("checks the size before parsing", () => {
    const big = Buffer.alloc(DEFAULT_MAX_MESSAGE_BYTES + 1, "{");
    expect(decodeFromDevice(topics.state(ID), big)).toMatchObject({ ok: false, reason: "oversized" });
    expect(fromDevice("state", birth, 100)).toMatchObject({ ok: false, reason: "oversized" });
    const doc = encodeMessage(desired());
    expect(decodeToDevice(topics.desired(ID), doc, { deviceId: ID, maxBytes: doc.length - 1 })).toMatchObject(
      {
        reason: "oversized",
      },
    );
    expect(decodeToDevice(topics.desired(ID), doc, { deviceId: ID, maxBytes: doc.length }).ok).toBe(true);
  });

  it("refuses what is not JSON, including bytes that are not UTF-8", () => {
    expect(fromDevice("state", "{")).toMatchObject({ ok: false, reason: "not-json" });
    expect(decodeFromDevice(topics.state(ID), Uint8Array.of(0x7b, 0xff, 0x7d))).toMatchObject({
      reason: "not-json",
    });
    expect(decodeBridge(bytes("nope"))).toMatchObject({ reason: "not-json" });
  });

  it("refuses JSON that is not an object as `schema`", () => {
    for (const value of [[], 1, '"x"', null, true]) {
      const result = fromDevice("state", value);
      expect(result).toMatchObject({ ok: false, reason: "schema" });
      expect(detailOf(result)).toMatch(/^\/ must be object/);
    }
  });

  it("refuses other protocol versions before looking further", () => {
    expect(fromDevice("state", { ...birth, protocol: 2 })).toMatchObject({ reason: "unsupported-protocol" });
    expect(fromDevice("state", { protocol: 3, anything: true })).toMatchObject({
      reason: "unsupported-protocol",
    });
    expect(decodeBridge(bytes({ ...bridge, protocol: 0 }))).toMatchObject({ reason: "unsupported-protocol" });
    expect(fromDevice("state", { ...birth, protocol: "1" })).toMatchObject({ reason: "schema" });
  });

  it("refuses a device speaking for another device", () => {
    const result = decodeFromDevice(topics.reported("other"), encodeMessage(reported));
    expect(result).toMatchObject({ ok: false, reason: "wrong-device" });
    expect(decodeToDevice(topics.desired(ID), encodeMessage(desired()), { deviceId: "other" })).toMatchObject(
      {
        reason: "wrong-device",
      },
    );
    expect(
      decodeToDevice(topics.desired("other"), encodeMessage(desired()), { deviceId: "other" }),
    ).toMatchObject({
      reason: "wrong-device",
    });
  });

  it.each([
    "devicelet/v1/gw-1/desired",
    `devicelet/v1/gw-1/cmd/${CID}`,
    "devicelet/v1/gw-1/state/extra",
    "devicelet/v2/gw-1/state",
    "devicelet/v1/+/state",
    "devicelet/v1/GW/state",
    "devicelet/v1/_bridge/state",
    "devicelet/v1/gw-1/toString",
    "",
  ])("decodeFromDevice refuses topic %j", (topic) => {
    expect(decodeFromDevice(topic, encodeMessage(birth))).toMatchObject({
      ok: false,
      reason: "unknown-topic",
    });
  });

  it.each([
    "devicelet/v1/gw-1/state",
    "devicelet/v1/gw-1/cmd",
    "devicelet/v1/gw-1/cmd/a/b",
    "devicelet/v1/gw-1/cmd/+",
  ])("decodeToDevice refuses topic %j", (topic) => {
    expect(decodeToDevice(topic, encodeMessage(command), { deviceId: ID })).toMatchObject({
      reason: "unknown-topic",
    });
  });

  it("requires the kind the topic carries", () => {
    expect(fromDevice("reported", birth)).toMatchObject({ reason: "schema" });
    expect(detailOf(fromDevice("reported", birth))).toMatch(/^\/kind/);
    expect(fromDevice("evt", ack)).toMatchObject({ reason: "schema" });
    expect(decodeToDevice(topics.command(ID, CID), encodeMessage(desired()), { deviceId: ID })).toMatchObject(
      {
        reason: "schema",
      },
    );
    expect(decodeBridge(encodeMessage(birth))).toMatchObject({ reason: "schema" });
  });

  it("requires a command's id to match its topic", () => {
    const result = decodeToDevice(topics.command(ID, "c-2"), encodeMessage(command), { deviceId: ID });
    expect(result).toMatchObject({ reason: "schema" });
    expect(detailOf(result)).toContain("/commandId");
  });

  it("names the first schema error path", () => {
    const bad = {
      ...reported,
      pods: [{ ...reported.pods[0], apps: [{ ...reported.pods[0]?.apps[0], name: "Bad_Name" }] }],
    };
    expect(fromDevice("reported", bad)).toMatchObject({ reason: "schema" });
    expect(detailOf(fromDevice("reported", bad))).toMatch(/^\/pods\/0\/apps\/0\/name must match pattern/);
    expect(fromDevice("evt", { ...event, extra: 1 })).toMatchObject({
      detail: '/ must NOT have additional properties ("extra")',
    });
    expect(fromDevice("state", { ...will, device: birth.device })).toMatchObject({
      detail: "/device is not allowed here",
    });
  });

  it.each([
    ["a birth without the device description", { ...birth, device: undefined }],
    ["a wake time on anything but sleeping", { ...birth, wakeAt: T }],
    ["a negative seq", { ...will, seq: -1 }],
    ["a time that is not RFC 3339", { ...will, sentAt: "yesterday" }],
    ["a bootId with a slash", { ...will, bootId: "a/b" }],
    [
      "a maxMessageBytes below 1 KiB",
      {
        ...birth,
        device: { ...birth.device, capabilities: { ...birth.device?.capabilities, maxMessageBytes: 10 } },
      },
    ],
  ])("presence: refuses %s", (_, message) => {
    expect(fromDevice("state", message)).toMatchObject({ ok: false, reason: "schema" });
  });

  it("acks: a rejection needs a reason and a message; command acks need a known stage", () => {
    expect(fromDevice("ack", { ...ack, stage: "rejected" })).toMatchObject({ reason: "schema" });
    expect(fromDevice("ack", { ...commandAck, stage: "applied" })).toMatchObject({ reason: "schema" });
    expect(fromDevice("ack", { ...ack, generation: 0 })).toMatchObject({ reason: "schema" });
  });

  it("reported app states are checked per kind", () => {
    const withState = (status: unknown) => ({
      ...reported,
      pods: [{ ...reported.pods[0], apps: [{ ...reported.pods[0]?.apps[0], status }] }],
    });
    expect(fromDevice("reported", withState({ state: "running" }))).toMatchObject({ reason: "schema" });
    expect(fromDevice("reported", withState({ state: "running", startedAt: T, exitCode: 0 }))).toMatchObject({
      reason: "schema",
    });
    expect(
      fromDevice("reported", withState({ state: "terminated", exitCode: 1, reason: "Error", finishedAt: T }))
        .ok,
    ).toBe(true);
    expect(fromDevice("reported", withState({ state: "sleeping" }))).toMatchObject({ reason: "schema" });
  });
});

describe("desired documents and commands", () => {
  const toDevice = (doc: unknown) => decodeToDevice(topics.desired(ID), bytes(doc), { deviceId: ID });
  const withFile = (file: unknown) => {
    const p = { ...pod, apps: [{ ...pod.apps[0], files: [file] }] } as unknown as DesiredPod;
    return desired({ pods: [p], contentHash: desiredContentHash([p], [tombstone]) });
  };

  it("refuses a document whose contentHash does not match, on both sides", () => {
    const doc = desired({ contentHash: "0".repeat(64) });
    expect(toDevice(doc)).toMatchObject({ reason: "schema" });
    expect(detailOf(toDevice(doc))).toContain("/contentHash");
    expect(() => encodeMessage(doc)).toThrow(/contentHash/);
  });

  it("file paths are absolute without `..`; references are http(s) with a sha256", () => {
    expect(toDevice(withFile({ path: "/etc/../shadow", encoding: "utf8", content: "" }))).toMatchObject({
      reason: "schema",
    });
    expect(toDevice(withFile({ path: "etc/x", encoding: "utf8", content: "" }))).toMatchObject({
      reason: "schema",
    });
    expect(toDevice(withFile({ path: "/a/..b", encoding: "utf8", content: "" })).ok).toBe(true);
    const ftp = toDevice(withFile({ path: "/m", ref: { url: "ftp://x.example/m", sha256: H, size: 1 } }));
    expect(detailOf(ftp)).toMatch(/^\/pods\/0\/apps\/0\/files\/0\/ref\/url/);
    expect(
      toDevice(withFile({ path: "/m", ref: { url: "http://x.example/m", sha256: H, size: 1 } })).ok,
    ).toBe(true);
    expect(
      toDevice(
        withFile({
          path: "/m",
          encoding: "utf8",
          content: "",
          ref: { url: "https://x/m", sha256: H, size: 1 },
        }),
      ),
    ).toMatchObject({
      reason: "schema",
    });
  });

  it("commands about an app name the pod and the app", () => {
    const { podUid: _p, ...bare } = command;
    expect(decodeToDevice(topics.command(ID, CID), bytes(bare), { deviceId: ID })).toMatchObject({
      reason: "schema",
    });
    const { podUid: _q, app: _a, ...reboot } = { ...command, command: "reboot" as const };
    expect(decodeToDevice(topics.command(ID, CID), bytes(reboot), { deviceId: ID }).ok).toBe(true);
  });

  it("desiredContentHash is sha256 of the canonical JSON of { pods, tombstones }", () => {
    const empty = createHash("sha256").update('{"pods":[],"tombstones":[]}').digest("hex");
    expect(desiredContentHash([], [])).toBe(empty);
    const reverseKeys = (o: object) => Object.fromEntries(Object.entries(o).reverse());
    const shuffledKeys = { ...reverseKeys(pod), apps: pod.apps.map(reverseKeys) } as unknown as DesiredPod;
    expect(desiredContentHash([shuffledKeys], [])).toBe(desiredContentHash([pod], []));
    expect(desiredContentHash([{ ...pod, hash: "c".repeat(64) }], [])).not.toBe(
      desiredContentHash([pod], []),
    );
  });
});

describe("encodeMessage", () => {
  it("throws on an invalid message: a bug on the sending side", () => {
    expect(() => encodeMessage({ ...birth, seq: 1.5 })).toThrow(/invalid presence: \/seq/);
    expect(() => encodeMessage({ ...event, kind: "nope" } as unknown as DeviceEventMessage)).toThrow(
      /unknown kind/,
    );
    expect(() =>
      encodeMessage({ ...reported, observedAt: new Date(T) } as unknown as ReportedDocument),
    ).not.toThrow();
  });

  it("writes compact UTF-8 JSON", () => {
    expect(encodeMessage(bridge).toString("utf8")).toBe(JSON.stringify(bridge));
  });
});
