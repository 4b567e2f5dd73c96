/**
 * Sessions and stats on the wire (docs/protocol.md §§ 3.9, 3.10): the decoders refuse what does
 * not fit the topic, the stream or the schema, with the same reasons as every other message.
 */
import { describe, expect, it } from "vitest";
import ioInSchema from "../../schemas/io-in.json" with { type: "json" };
import ioOutSchema from "../../schemas/io-out.json" with { type: "json" };
import statsSchema from "../../schemas/stats.json" with { type: "json" };
import { decodeFromDevice, decodeIoIn, encodeMessage } from "./codec.ts";
import { topics } from "./topics.ts";
import type { IoInMessage, IoOutMessage, StatsMessage } from "./types.ts";

const bytes = (value: unknown) => Buffer.from(JSON.stringify(value));
const example = (schema: { examples: readonly unknown[] }, index: number): unknown =>
  structuredClone(schema.examples[index]);

const open = example(ioInSchema, 0) as IoInMessage & { kind: "io-open" };
const data = example(ioOutSchema, 2) as IoOutMessage;
const stats = example(statsSchema, 0) as StatsMessage;

describe("decodeIoIn", () => {
  const topic = topics.ioIn("gw-1", open.streamId);

  it("accepts every input kind on the stream's topic", () => {
    expect(decodeIoIn(topic, bytes(open), { deviceId: "gw-1" })).toMatchObject({ ok: true, value: open });
  });

  it("refuses another stream's message, another device's topic, and output topics", () => {
    expect(decodeIoIn(topic, bytes({ ...open, streamId: "s-other" }), { deviceId: "gw-1" })).toMatchObject({
      ok: false,
      reason: "schema",
      detail: expect.stringContaining("/streamId") as string,
    });
    expect(decodeIoIn(topic, bytes(open), { deviceId: "gw-2" })).toMatchObject({ reason: "wrong-device" });
    expect(decodeIoIn(`${topic}/out`, bytes(open), { deviceId: "gw-1" })).toMatchObject({
      reason: "unknown-topic",
    });
    expect(decodeIoIn(topics.ioIn("gw-1", "bad+id"), bytes(open), { deviceId: "gw-1" })).toMatchObject({
      reason: "unknown-topic",
    });
  });

  it("refuses an open with options of the other type, or without its own", () => {
    const { logs: _logs, ...withoutLogs } = open;
    expect(decodeIoIn(topic, bytes(withoutLogs), { deviceId: "gw-1" })).toMatchObject({ reason: "schema" });
    const both = { ...open, exec: { command: ["ls"], stdin: false, stdout: true, stderr: true, tty: false } };
    expect(decodeIoIn(topic, bytes(both), { deviceId: "gw-1" })).toMatchObject({ reason: "schema" });
  });

  it("refuses stdin that is not base64 or over 32 KiB", () => {
    const stdin = { protocol: 1, kind: "io-stdin", deviceId: "gw-1", streamId: open.streamId, seq: 0 };
    expect(decodeIoIn(topic, bytes({ ...stdin, data: "aGk=" }), { deviceId: "gw-1" }).ok).toBe(true);
    expect(decodeIoIn(topic, bytes({ ...stdin, data: "aGk" }), { deviceId: "gw-1" })).toMatchObject({
      reason: "schema",
    });
    const big = Buffer.alloc(32 * 1024 + 3).toString("base64"); // 43,696 characters
    expect(decodeIoIn(topic, bytes({ ...stdin, data: big }), { deviceId: "gw-1" })).toMatchObject({
      reason: "schema",
    });
  });

  it("is what encodeMessage checks before devicelet publishes", () => {
    expect(() => encodeMessage({ ...open, idleSeconds: 0 })).toThrow(/io-open/);
    expect(encodeMessage(open).toString()).toBe(JSON.stringify(open));
  });
});

describe("decodeFromDevice, sessions and stats", () => {
  it("accepts output on its stream's out topic, and stats", () => {
    expect(decodeFromDevice(topics.ioOut("gw-1", data.streamId), bytes(data))).toMatchObject({
      ok: true,
      value: { deviceId: "gw-1", message: data },
    });
    expect(decodeFromDevice(topics.stats("gw-1"), bytes(stats))).toMatchObject({ ok: true });
  });

  it("refuses output on another stream's topic, on the in topic, or of the wrong kind", () => {
    expect(decodeFromDevice(topics.ioOut("gw-1", "s-other"), bytes(data))).toMatchObject({
      reason: "schema",
      detail: expect.stringContaining("/streamId") as string,
    });
    expect(decodeFromDevice(topics.ioIn("gw-1", data.streamId), bytes(data))).toMatchObject({
      reason: "unknown-topic",
    });
    expect(decodeFromDevice(topics.ioOut("gw-1", data.streamId), bytes(stats))).toMatchObject({
      reason: "schema",
    });
    expect(decodeFromDevice(topics.ioOut("gw-2", data.streamId), bytes(data))).toMatchObject({
      reason: "wrong-device",
    });
  });

  it("refuses stats with too many pods or a negative counter", () => {
    const pods = Array.from({ length: 257 }, (_, i) => ({ podUid: `p-${i}`, apps: [] }));
    expect(decodeFromDevice(topics.stats("gw-1"), bytes({ ...stats, pods }))).toMatchObject({
      reason: "schema",
    });
    const node = { cpu: { usageCoreNanoSeconds: -1 } };
    expect(decodeFromDevice(topics.stats("gw-1"), bytes({ ...stats, node }))).toMatchObject({
      reason: "schema",
    });
  });
});
