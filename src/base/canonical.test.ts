import { describe, expect, it } from "vitest";
import { seededRandom } from "../../test/support/seeded-random.ts";
import { canonicalJson, normaliseForCompare, sameNormalised, sameNormalisedField } from "./canonical.ts";

/**
 * canonicalJson as it was first written (a sorted copy, then JSON.stringify): the hashes devices
 * and stored state hold were taken over this, so the direct writer must give the same text.
 */
function canonicalJsonByCopy(value: unknown): string {
  const sorted = (v: unknown): unknown => {
    if (v instanceof Date) return Number.isNaN(v.getTime()) ? null : v.toISOString();
    if (Array.isArray(v)) return v.map((x) => (x === undefined ? null : sorted(x)));
    if (typeof v === "object" && v !== null) {
      const entries = Object.keys(v)
        .sort()
        .flatMap((k): [string, unknown][] => {
          const x = (v as Record<string, unknown>)[k];
          return x === undefined || typeof x === "function" ? [] : [[k, sorted(x)]];
        });
      return Object.fromEntries(entries);
    }
    return typeof v === "bigint" ? v.toString() : v;
  };
  // JSON.stringify answers undefined (despite its declared type) for undefined and functions.
  const json = JSON.stringify(sorted(value)) as string | undefined;
  return json ?? "null";
}

/** The definition `sameNormalised` must agree with: the canonical JSON of both normalised copies. */
const byCopies = (a: unknown, b: unknown, ignore?: ReadonlySet<string>) =>
  canonicalJson(normaliseForCompare(a, ignore)) === canonicalJson(normaliseForCompare(b, ignore));

const KEYS = ["type", "status", "startTime", "lastTransitionTime", "message", "ready", "lastHeartbeatTime"];
const TIMES = [
  "2026-12-06T08:00:00Z",
  "2026-12-06T08:00:00.400Z",
  "2026-12-06T08:00:01Z",
  "not a time",
  new Date("2026-12-06T08:00:00.900Z"),
  new Date(Number.NaN),
];

const pick = <T>(r: () => number, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)] as T;

/** Status-like values with the cases normalisation cares about: empties, times, Dates, nesting. */
function value(r: () => number, depth: number): unknown {
  const roll = r();
  if (depth > 0 && roll < 0.2) return Array.from({ length: Math.floor(r() * 4) }, () => value(r, depth - 1));
  if (depth > 0 && roll < 0.45) {
    const entries = Array.from({ length: Math.floor(r() * 4) }, () => [pick(r, KEYS), value(r, depth - 1)]);
    return Object.fromEntries(entries);
  }
  return pick(r, [
    null,
    undefined,
    "",
    "True",
    "False",
    0,
    -0,
    1,
    2.5,
    true,
    false,
    3n,
    "3",
    {},
    [],
    ...TIMES,
  ]);
}

/** A copy of `v` with one change somewhere, or none: most pairs are equal or nearly so. */
function mutate(r: () => number, v: unknown, depth: number): unknown {
  if (r() < 0.3) return value(r, depth);
  if (Array.isArray(v)) {
    const copy = [...(v as unknown[])];
    if (copy.length > 0 && r() < 0.7) {
      const i = Math.floor(r() * copy.length);
      copy[i] = mutate(r, copy[i], depth - 1);
    } else copy.splice(Math.floor(r() * (copy.length + 1)), 0, r() < 0.5 ? {} : value(r, depth - 1));
    return copy;
  }
  if (typeof v === "object" && v !== null && !(v instanceof Date)) {
    const copy = { ...(v as Record<string, unknown>) };
    const keys = Object.keys(copy);
    const key = keys.length > 0 && r() < 0.7 ? pick(r, keys) : pick(r, KEYS);
    copy[key] = mutate(r, copy[key], depth - 1);
    return copy;
  }
  return r() < 0.5 ? v : value(r, 0);
}

/** Values of every kind canonicalJson meets, with keys that are array indices among the others. */
function anyValue(r: () => number, depth: number): unknown {
  const roll = r();
  if (depth > 0 && roll < 0.2)
    return Array.from({ length: Math.floor(r() * 4) }, () => anyValue(r, depth - 1));
  if (depth > 0 && roll < 0.5) {
    const keys = [
      "b",
      "a",
      "10",
      "2",
      "0",
      "01",
      "-1",
      "4294967295",
      "4294967294",
      "é",
      "Z",
      "__proto__",
      "a b",
    ];
    const object = {};
    for (let i = Math.floor(r() * 6); i > 0; i--) {
      // Defined, not assigned: "__proto__" becomes a key of its own, as JSON.parse makes it.
      const [value, enumerable, writable, configurable] = [anyValue(r, depth - 1), true, true, true];
      Object.defineProperty(object, pick(r, keys), { value, enumerable, writable, configurable });
    }
    return object;
  }
  return pick(r, [
    null,
    undefined,
    "",
    'quote " and \\ and \n',
    "\u00e9\ud83d\ude00",
    "\ud800",
    0,
    -0,
    1.5e300,
    Number.NaN,
    Number.POSITIVE_INFINITY,
    true,
    12345678901234567890n,
    () => 1,
    Symbol("s"),
    new Date("2026-12-06T08:00:00.123Z"),
    new Date(Number.NaN),
  ]);
}

describe("canonicalJson", () => {
  it("writes what the sorted copy wrote, over generated values", () => {
    const r = seededRandom(61206);
    for (let n = 0; n < 20_000; n++) {
      const v = anyValue(r, 4);
      expect({ n, json: canonicalJson(v) }).toEqual({ n, json: canonicalJsonByCopy(v) });
    }
  });

  it("orders keys as the hashes devices hold were taken: array indices first, by number", () => {
    expect(canonicalJson({ b: 1, a: [undefined, () => 0], 10: 1, 2: 1, "01": 1, c: undefined })).toBe(
      '{"2":1,"10":1,"01":1,"a":[null,null],"b":1}',
    );
    expect(canonicalJson({ t: new Date("2026-12-06T08:00:00Z"), n: 7n, x: Number.NaN })).toBe(
      '{"n":"7","t":"2026-12-06T08:00:00.000Z","x":null}',
    );
    expect(canonicalJson(undefined)).toBe("null");
  });
});

describe("sameNormalised", () => {
  it("agrees with comparing the normalised copies, over generated pairs", () => {
    const r = seededRandom(20261206);
    const ignore = new Set(["lastHeartbeatTime"]);
    let [equal, differ] = [0, 0];
    for (let n = 0; n < 20_000; n++) {
      const a = value(r, 4);
      const b = r() < 0.5 ? mutate(r, a, 4) : a;
      const want = byCopies(a, b);
      expect({ n, a, b, same: sameNormalised(a, b) }).toEqual({ n, a, b, same: want });
      expect(sameNormalised(a, b, ignore)).toBe(byCopies(a, b, ignore));
      for (const key of KEYS) {
        expect(sameNormalisedField(key, a, b, ignore)).toBe(byCopies({ [key]: a }, { [key]: b }, ignore));
      }
      if (want) equal++;
      else differ++;
    }
    // Both answers were exercised many times, not one of them alone.
    expect(equal).toBeGreaterThan(4_000);
    expect(differ).toBeGreaterThan(4_000);
  });

  it("treats empty and absent alike and times at whole seconds", () => {
    expect(sameNormalised({ a: "", b: [], c: {}, d: null, e: [{}, [null]] }, {})).toBe(true);
    expect(
      sameNormalised({ conditions: [{}, { type: "Ready" }] }, { conditions: [{ type: "Ready" }, []] }),
    ).toBe(true);
    expect(sameNormalised({ conditions: [{ type: "Ready" }] }, { conditions: [] })).toBe(false);
    expect(
      sameNormalised(
        { lastTransitionTime: "2026-12-06T08:00:00.999Z" },
        { lastTransitionTime: new Date("2026-12-06T08:00:00Z") },
      ),
    ).toBe(true);
    expect(sameNormalised({ startedAt: "2026-12-06T08:00:00Z" }, { startedAt: "2026-12-06T08:00:01Z" })).toBe(
      false,
    );
    // A time under a key that is not a time's is compared as written.
    expect(sameNormalised({ message: "2026-12-06T08:00:00Z" }, { message: "2026-12-06T08:00:00.000Z" })).toBe(
      false,
    );
    expect(sameNormalised([1, 2], { 0: 1, 1: 2 })).toBe(false);
    expect(sameNormalised({ n: 1 }, { n: "1" })).toBe(false);
  });

  it("skips ignored keys at every depth and compares a field by its own name", () => {
    const heartbeat = new Set(["lastHeartbeatTime"]);
    const at = (t: string) => ({ conditions: [{ type: "Ready", lastHeartbeatTime: t }] });
    expect(sameNormalised(at("2026-12-06T08:00:00Z"), at("2026-12-06T09:00:00Z"), heartbeat)).toBe(true);
    expect(sameNormalised(at("2026-12-06T08:00:00Z"), at("2026-12-06T09:00:00Z"))).toBe(false);
    expect(sameNormalisedField("startTime", "2026-12-06T08:00:00.1Z", "2026-12-06T08:00:00Z")).toBe(true);
    expect(sameNormalisedField("phase", "Running", "Pending")).toBe(false);
    expect(sameNormalisedField("lastHeartbeatTime", "a", "b", heartbeat)).toBe(true);
  });
});
