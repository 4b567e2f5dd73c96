/**
 * The schemas are normative (docs/protocol.md): this checks that they stay bounded and closed, and
 * that every example — in the schemas and in the spec — is accepted by the codec on its topic.
 */
import { readdirSync, readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import {
  decodeBridge,
  decodeFromDevice,
  decodeIoIn,
  decodeNotice,
  decodeToDevice,
  type DecodeResult,
} from "./codec.ts";
import { topics } from "./topics.ts";

type Schema = Record<string, unknown>;
const dir = new URL("../../schemas/", import.meta.url);
const files = readdirSync(dir).filter((f) => f.endsWith(".json"));
const schemas = new Map(files.map((f) => [f, JSON.parse(readFileSync(new URL(f, dir), "utf8")) as Schema]));

/** Every subschema with its JSON pointer, skipping `examples` (data, not schema). */
function* walk(node: unknown, at: string): Generator<[string, Schema]> {
  if (typeof node !== "object" || node === null) return;
  if (Array.isArray(node)) {
    for (const [i, item] of node.entries()) yield* walk(item, `${at}/${i}`);
    return;
  }
  const schema = node as Schema;
  yield [at, schema];
  for (const [key, value] of Object.entries(schema)) {
    if (key === "examples" || key === "const" || key === "enum") continue;
    if (key === "properties" || key === "definitions") {
      for (const [name, sub] of Object.entries(value as Schema)) yield* walk(sub, `${at}/${key}/${name}`);
    } else yield* walk(value, `${at}/${key}`);
  }
}

const decodeExample = (value: Schema): DecodeResult<unknown> => {
  const payload = Buffer.from(JSON.stringify(value));
  const id = String(value.deviceId);
  switch (value.kind) {
    case "desired":
      return decodeToDevice(topics.desired(id), payload, { deviceId: id });
    case "command":
      return decodeToDevice(topics.command(id, String(value.commandId)), payload, { deviceId: id });
    case "bridge":
      return decodeBridge(payload);
    case "notice":
      return decodeNotice(topics.notice(id), payload, { deviceId: id });
    case "io-open":
    case "io-stdin":
    case "io-resize":
    case "io-keepalive":
    case "io-cancel":
      return decodeIoIn(topics.ioIn(id, String(value.streamId)), payload, { deviceId: id });
    case "io-data":
    case "io-end":
      return decodeFromDevice(topics.ioOut(id, String(value.streamId)), payload);
    default: {
      const sub = {
        presence: "state",
        reported: "reported",
        ack: "ack",
        "command-ack": "ack",
        event: "evt",
        stats: "stats",
      }[String(value.kind)];
      return decodeFromDevice(`devicelet/v1/${id}/${sub ?? "?"}`, payload);
    }
  }
};

describe("schemas/*.json", () => {
  it("has one schema per document, plus the shared definitions", () => {
    expect(files.sort()).toEqual(
      [
        "ack",
        "bridge",
        "command",
        "common",
        "desired",
        "event",
        "io-in",
        "io-out",
        "notice",
        "presence",
        "reported",
        "stats",
      ].map((n) => `${n}.json`),
    );
  });

  it.each(files)("%s is draft-07 with a versioned $id", (file) => {
    const schema = schemas.get(file);
    expect(schema?.$schema).toBe("http://json-schema.org/draft-07/schema#");
    expect(schema?.$id).toBe(`https://devicelet.dev/schemas/protocol/v1/${file}`);
  });

  it.each(files)("%s bounds every string, array and map, and closes every object", (file) => {
    const problems: string[] = [];
    for (const [at, s] of walk(schemas.get(file), "")) {
      const bounded = "const" in s || "enum" in s;
      if (s.type === "string" && !bounded && typeof s.maxLength !== "number")
        problems.push(`${at}: no maxLength`);
      if (s.type === "array" && typeof s.maxItems !== "number") problems.push(`${at}: no maxItems`);
      const isMap = typeof s.additionalProperties === "object";
      if (isMap && (typeof s.maxProperties !== "number" || typeof s.propertyNames !== "object")) {
        problems.push(`${at}: map without maxProperties and propertyNames`);
      }
      // Discriminated unions (if/then, allOf of if/then) close their objects in each branch;
      // conditions and partial constraints (`else: { properties: { x: false } }`) are not objects.
      const dispatches = "if" in s || "allOf" in s || at.endsWith("/if");
      if (
        s.type === "object" &&
        "properties" in s &&
        !dispatches &&
        s.additionalProperties !== false &&
        !isMap
      ) {
        problems.push(`${at}: additionalProperties is not false`);
      }
    }
    expect(problems).toEqual([]);
  });

  it("every example in a schema is accepted on its topic", () => {
    const examples = [...schemas.values()].flatMap((s) => (s.examples ?? []) as Schema[]);
    expect(examples.length).toBeGreaterThanOrEqual(12);
    for (const example of examples) expect(decodeExample(example)).toMatchObject({ ok: true });
  });
});

describe("docs/protocol.md", () => {
  const text = readFileSync(new URL("../../docs/protocol.md", import.meta.url), "utf8");
  const blocks = [...text.matchAll(/```json\n([\s\S]*?)```/g)].map((m) => m[1] ?? "");

  it("every JSON message in the spec is accepted on its topic", () => {
    const messages = blocks.map((b) => JSON.parse(b) as Schema).filter((m) => m.protocol === 1);
    expect(messages.length).toBeGreaterThanOrEqual(8);
    for (const message of messages) {
      expect({ kind: message.kind, result: decodeExample(message) }).toMatchObject({ result: { ok: true } });
    }
  });

  it("links every schema file", () => {
    for (const file of files) expect(text).toContain(`schemas/${file}`);
  });
});
