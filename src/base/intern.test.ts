/**
 * StringTable: what it stores, that it stays bounded whatever it is fed, and that the in-place
 * methods change no value a reader sees. ValueTable: one frozen copy of equal values, bounded.
 */
import { describe, expect, it } from "vitest";
import { StringTable, ValueTable } from "./intern.ts";

const unique = (i: number) => `unique-value-${String(i).padStart(8, "0")}`;

describe("StringTable", () => {
  it("returns an equal string and stores what may repeat, not short or over-long strings", () => {
    const strings = new StringTable({ generationSize: 100, maxLength: 40 });
    const image = JSON.parse('"registry.example.com/sensor:1.2"') as string;
    expect(strings.intern(image)).toBe("registry.example.com/sensor:1.2");
    expect(strings.intern("registry.example.com/sensor:1.2")).toBe(image);
    expect(strings.has(image)).toBe(true);
    // Under ten characters: already V8's shared copy after JSON.parse. Over maxLength: never.
    const long = "x".repeat(41);
    for (const value of ["Running", "012345678", long]) expect(strings.intern(value)).toBe(value);
    expect([strings.has("Running"), strings.has("012345678"), strings.has(long)]).toEqual([
      false,
      false,
      false,
    ]);
    expect(strings.intern("0123456789")).toBe("0123456789");
    expect(strings.size).toBe(2);
  });

  it("stays bounded by two generations after many unique strings, keeping the ones that repeat", () => {
    const strings = new StringTable({ generationSize: 1_000 });
    const repeated = "registry.example.com/sensor:1.2";
    let largest = 0;
    for (let i = 0; i < 50_000; i++) {
      strings.intern(unique(i));
      if (i % 500 === 0) strings.intern(repeated);
      largest = Math.max(largest, strings.size);
    }
    expect(largest).toBeLessThanOrEqual(2_000);
    expect(strings.generations).toBeGreaterThanOrEqual(50);
    // Seen every 500 strings: carried from generation to generation. Seen once, long ago: gone.
    expect(strings.has(repeated)).toBe(true);
    expect(strings.has(unique(0))).toBe(false);
    expect(strings.has(unique(49_999))).toBe(true);
  });

  it("stores only what `admit` lets in, and still finds what it holds", () => {
    const strings = new StringTable({ generationSize: 10, admit: (v) => !v.startsWith("kube-api-access-") });
    expect(strings.intern("kube-api-access-x7k2p")).toBe("kube-api-access-x7k2p");
    expect(strings.intern("example.com/other")).toBe("example.com/other");
    expect([strings.has("kube-api-access-x7k2p"), strings.has("example.com/other")]).toEqual([false, true]);
    expect(strings.size).toBe(1);
  });

  it("swaps strings in place without changing a value, adding a key, or touching frozen parts", () => {
    const strings = new StringTable({ generationSize: 100 });
    const text = JSON.stringify({
      container: {
        name: "application",
        image: "registry.example.com/sensor:1.2",
        ports: [{ containerPort: 8080 }],
        env: [{ name: "ENDPOINT_URL", value: "mqtt://broker.example:1883" }],
        envFrom: [{ configMapRef: { name: "sensor-configuration" } }, { prefix: "PREFIX_VALUE_" }],
      },
      labels: { app: "sensor-fleet-humidity", "statefulset.kubernetes.io/pod-name": "sensor-fleet-0" },
    });
    const value = JSON.parse(text) as {
      container: { name: string; image: string; workingDir?: string; envFrom: object[] };
      labels: Record<string, string>;
    };
    strings.internFields(value.container, ["name", "image", "workingDir"]);
    strings.internIn(value.container.envFrom);
    strings.internValues(value.labels, new Set(["statefulset.kubernetes.io/pod-name"]));
    expect(value).toStrictEqual(JSON.parse(text));
    expect(Object.hasOwn(value.container, "workingDir")).toBe(false);
    for (const s of [
      "application",
      "registry.example.com/sensor:1.2",
      "sensor-configuration",
      "PREFIX_VALUE_",
    ]) {
      expect(strings.has(s)).toBe(true);
    }
    expect(strings.has("sensor-fleet-humidity")).toBe(true);
    // The value under a skipped key, and fields not listed, are not stored.
    expect(strings.has("sensor-fleet-0")).toBe(false);
    expect(strings.has("mqtt://broker.example:1883")).toBe(false);

    const frozen = Object.freeze({
      image: "registry.example.com/frozen:1",
      list: Object.freeze(["frozen-element"]),
    });
    expect(() => {
      strings.internFields(frozen, ["image"]);
      strings.internIn(frozen);
      strings.internValues(Object.freeze({ a: "frozen-label-value" }));
    }).not.toThrow();
    expect(strings.has("registry.example.com/frozen:1")).toBe(false);
    strings.internIn({ list: ["first-element", ["nested-element"]], n: 1, b: true, z: null });
    expect([strings.has("first-element"), strings.has("nested-element")]).toEqual([true, true]);
  });

  it("refuses sizes that cannot bound it", () => {
    expect(() => new StringTable({ generationSize: 0 })).toThrow(
      /generationSize must be a positive integer, got 0/,
    );
    expect(() => new StringTable({ generationSize: 1.5 })).toThrow(/generationSize/);
    expect(() => new StringTable({ generationSize: 10, maxLength: -1 })).toThrow(/maxLength must be/);
  });
});

describe("ValueTable", () => {
  const condition = (at: string) =>
    JSON.parse(
      `{"type":"Ready","status":"True","lastProbeTime":null,"lastTransitionTime":"${at}"}`,
    ) as object;

  it("hands every equal value the first one's copy, deeply frozen", () => {
    const values = new ValueTable({ generationSize: 10 });
    const first = { requests: { cpu: "100m" }, limits: {} };
    const shared = values.share(first);
    expect(shared).toBe(first);
    const again = { requests: { cpu: "100m" }, limits: {} };
    expect(values.share(again)).toBe(first);
    expect(again).toStrictEqual({ requests: { cpu: "100m" }, limits: {} });
    expect(Object.isFrozen(first) && Object.isFrozen(first.requests) && Object.isFrozen(first.limits)).toBe(
      true,
    );
    // A reader that writes into a shared value throws instead of changing it for everyone.
    expect(() => {
      (first.requests as Record<string, string>).cpu = "1";
    }).toThrow(TypeError);
    // Different values, or equal content in another order, are not the same copy.
    expect(values.share({ requests: { cpu: "200m" }, limits: {} })).not.toBe(first);
    expect(values.share({ limits: {}, requests: { cpu: "100m" } })).not.toBe(first);
    expect(values.share(condition("2026-12-05T06:00:00Z"))).toBe(
      values.share(condition("2026-12-05T06:00:00Z")),
    );
  });

  it("returns what it cannot or must not store as given: primitives, frozen and over-long values", () => {
    const values = new ValueTable({ generationSize: 10, maxLength: 40 });
    expect(values.share("text")).toBe("text");
    expect(values.share(null)).toBe(null);
    const frozen = Object.freeze({ a: 1 });
    expect(values.share(frozen)).toBe(frozen);
    expect(values.share({ a: 1 })).not.toBe(frozen);
    const long = { text: "x".repeat(40) };
    expect(values.share(long)).toBe(long);
    expect(Object.isFrozen(long)).toBe(false);
    expect(values.share({ text: "x".repeat(40) })).not.toBe(long);
    expect(values.size).toBe(1);
  });

  it("stays bounded by two generations, keeping what repeats", () => {
    const values = new ValueTable({ generationSize: 50 });
    const kept = values.share(condition("2026-12-05T06:00:00Z"));
    for (let i = 0; i < 1_000; i++) {
      values.share(
        condition(`2026-12-05T06:${String(i % 60).padStart(2, "0")}:${String(i).padStart(4, "0")}Z`),
      );
      if (i % 20 === 0) expect(values.share(condition("2026-12-05T06:00:00Z"))).toBe(kept);
      expect(values.size).toBeLessThanOrEqual(100);
    }
  });

  it("shares values it cannot freeze under the caller's key, made once", () => {
    const values = new ValueTable({ generationSize: 10, maxLength: 20 });
    let made = 0;
    const make = () => {
      made += 1;
      return new Map([["app", 1]]);
    };
    const first = values.shareAs('[["app",1]]', make);
    expect(values.shareAs('[["app",1]]', make)).toBe(first);
    expect(made).toBe(1);
    // A key over maxLength: made every time, never stored.
    const key = "k".repeat(21);
    expect(values.shareAs(key, make)).not.toBe(values.shareAs(key, make));
    expect(values.size).toBe(1);
  });

  it("shares a list by its shared items, however long its JSON, and only when each item is the table's", () => {
    const values = new ValueTable({ generationSize: 10, maxLength: 100 });
    const list = (at: string) => [condition(at), condition(at), { type: "x".repeat(80) }];
    const first = list("2026-12-05T06:00:00Z");
    expect(JSON.stringify(first).length).toBeGreaterThan(100);
    const shared = values.shareList(first);
    expect(shared).toBe(first);
    expect(Object.isFrozen(shared)).toBe(true);
    expect(shared[0]).toBe(shared[1]); // equal items: one copy
    const again = list("2026-12-05T06:00:00Z");
    expect(values.shareList(again)).toBe(first);
    expect(again).toStrictEqual(first); // the caller's list is left equal
    expect(values.shareList(list("2026-12-05T06:00:01Z"))).not.toBe(first);
    expect(values.shareList(list("2026-12-05T06:00:00Z").reverse())).not.toBe(first);
    // An item the table does not keep (over-long, a primitive, frozen elsewhere): the list is
    // returned as given, with the items that could be shared swapped in, and not frozen.
    for (const odd of [{ text: "y".repeat(100) }, "text", Object.freeze({ a: 1 })]) {
      const items: unknown[] = [condition("2026-12-05T06:00:00Z"), odd];
      const result = values.shareList(items);
      expect(result).toBe(items);
      expect(Object.isFrozen(result)).toBe(false);
      expect(result[0]).toBe(first[0]);
      expect(values.shareList([condition("2026-12-05T06:00:00Z"), odd])).not.toBe(items);
    }
    // A frozen list is someone else's, or shared already.
    expect(values.shareList(shared as object[])).toBe(shared);
  });

  it("refuses sizes that cannot bound it", () => {
    expect(() => new ValueTable({ generationSize: 0 })).toThrow(RangeError);
  });
});
