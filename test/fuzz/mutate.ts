/**
 * Input generators for the fuzz targets: mutations of valid inputs (each target's seeds) and
 * inputs generated from nothing, all driven by fast-check so a run is reproduced by its seed.
 *
 * Mutations of a value: flip a node's type, drop or duplicate a key or element, huge strings and
 * numbers, deep nesting, odd unicode, NaN / -0 / ±Infinity, prototype keys (`__proto__`,
 * `constructor`) as own properties. Mutations of bytes: truncate, flip, splice invalid UTF-8,
 * random bytes. A JSON text can also carry a duplicated key (the last one wins in JSON.parse).
 *
 * ```ts
 * const input = fc.sample(mutatedJsonBytes([validMessage]), { seed: 1, numRuns: 1 })[0];
 * ```
 */
import fc from "fast-check";
import { seededRandom } from "../support/seeded-random.ts";

/** Seeded choices (one fast-check integer drives a whole mutation, so a run replays exactly). */
export class Rng {
  readonly next: () => number;
  constructor(seed: number) {
    this.next = seededRandom(seed);
  }
  int(maxExclusive: number): number {
    return Math.floor(this.next() * maxExclusive);
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)] as T;
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
}

/** Keys that reach Object.prototype machinery when code indexes objects carelessly. */
export const PROTOTYPE_KEYS = [
  "__proto__",
  "constructor",
  "prototype",
  "toString",
  "hasOwnProperty",
  "valueOf",
];

const UNICODE = [
  "\u0000",
  "\ud800", // lone surrogate
  "\udfff",
  "\u202e", // right-to-left override
  "\u200b", // zero-width space
  "\ufeff",
  "😀",
  "ﾟ",
  "\u0301",
  "Ǆ",
  "İ",
  "\n\r\t",
  "/",
  "+",
  "#",
  "..",
];

/** Any value of an odd kind: what a flipped type becomes. */
const oddValue = (rng: Rng): unknown =>
  rng.pick<() => unknown>([
    () => null,
    () => undefined,
    () => true,
    () => 0,
    () => -0,
    () => Number.NaN,
    () => Number.POSITIVE_INFINITY,
    () => Number.NEGATIVE_INFINITY,
    () => 1e308,
    () => -1e308,
    () => Number.MAX_SAFE_INTEGER + 2,
    () => -1,
    () => 0.5,
    () => 2 ** 53,
    () => "",
    () => "x".repeat(rng.pick([300, 70_000, 1_100_000])),
    () => rng.pick(UNICODE).repeat(1 + rng.int(5)),
    () => [],
    () => ({}),
    () => [null],
    () => "2000-13-45T99:99:99Z",
    () => "-1",
    () => "1e999",
    () => withOwnKey({}, rng.pick(PROTOTYPE_KEYS), { polluted: true }),
  ])();

/** `{ ...target, [key]: value }` where key may be `__proto__`, as an own data property. */
export const withOwnKey = (target: object, key: string, value: unknown): Record<string, unknown> => {
  const copy: Record<string, unknown> = { ...target };
  Object.defineProperty(copy, key, { value, enumerable: true, writable: true, configurable: true });
  return copy;
};

/** `Array.isArray` without the `any[]` it narrows to. */
const isList = (v: unknown): v is unknown[] => Array.isArray(v);

/** JSON.stringify as typed at run time: undefined for undefined (and functions, symbols). */
export const toJson: (value: unknown) => string | undefined = JSON.stringify;

const isContainer = (v: unknown): v is Record<string, unknown> | unknown[] =>
  typeof v === "object" && v !== null;

/** A path to a random node: a list of keys (array indexes as numbers). */
function randomPath(value: unknown, rng: Rng): (string | number)[] {
  const path: (string | number)[] = [];
  let node = value;
  while (isContainer(node) && rng.chance(0.75)) {
    const keys: (string | number)[] = isList(node) ? node.map((_, i) => i) : Object.keys(node);
    if (keys.length === 0) break;
    const key = rng.pick(keys);
    path.push(key);
    node = (node as Record<string | number, unknown>)[key];
  }
  return path;
}

/** A copy of `root` with the node at `path` replaced by `f(node)` (DELETE removes it). */
export const DELETE = Symbol("delete");
function updateAt(root: unknown, path: readonly (string | number)[], f: (node: unknown) => unknown): unknown {
  if (path.length === 0) return f(root);
  const [head, ...rest] = path as [string | number, ...(string | number)[]];
  if (isList(root)) {
    const copy = [...root];
    const next = updateAt(copy[head as number], rest, f);
    if (next === DELETE) copy.splice(head as number, 1);
    else copy[head as number] = next;
    return copy;
  }
  if (!isContainer(root)) return root;
  const next = updateAt((root as Record<string, unknown>)[head], rest, f);
  const copy: Record<string, unknown> = {};
  for (const k of Object.keys(root)) {
    if (k === head) {
      if (next !== DELETE)
        Object.defineProperty(copy, k, { value: next, enumerable: true, writable: true, configurable: true });
    } else {
      Object.defineProperty(copy, k, {
        value: (root as Record<string, unknown>)[k],
        enumerable: true,
        writable: true,
        configurable: true,
      });
    }
  }
  return copy;
}

/** One structural mutation of a JSON-like value at a random node. */
export function mutateOnce(value: unknown, rng: Rng): unknown {
  const path = randomPath(value, rng);
  const op = rng.int(10);
  return updateAt(value, path, (node) => {
    switch (op) {
      case 0:
      case 1:
        return oddValue(rng);
      case 2:
        return path.length === 0 ? node : DELETE;
      case 3: {
        // Duplicate an entry under another key, or an element at the end.
        if (isList(node)) return node.length === 0 ? [null] : [...node, ...node.slice(0, 1 + rng.int(3))];
        if (!isContainer(node)) return node;
        const keys = Object.keys(node);
        const key = keys.length === 0 ? "k" : rng.pick(keys);
        return withOwnKey(
          node,
          `${key}${rng.pick(["", "_", "2", "\u0000"])}`,
          (node as Record<string, unknown>)[key],
        );
      }
      case 4:
        return typeof node === "string"
          ? node + rng.pick(UNICODE).repeat(rng.pick([1, 50, 100_000]))
          : typeof node === "number"
            ? rng.pick([node * 1e300, -node, node + 0.5, node + 2 ** 53, -0, Number.NaN])
            : oddValue(rng);
      case 5: {
        // Deep nesting: the node wrapped in hundreds or thousands of arrays/objects.
        let wrapped = node;
        const depth = rng.pick([10, 200, 1_000]);
        const asArray = rng.chance(0.5);
        for (let i = 0; i < depth; i++) wrapped = asArray ? [wrapped] : { a: wrapped };
        return wrapped;
      }
      case 6:
        return isContainer(node) && !isList(node)
          ? withOwnKey(node, rng.pick(PROTOTYPE_KEYS), oddValue(rng))
          : node;
      case 7:
        // Many elements, but of a small one: the text stays a few hundred kilobytes at most.
        return isList(node)
          ? Array.from({ length: rng.pick([300, 5_000]) }, () =>
              typeof node[0] === "object" || (typeof node[0] === "string" && node[0].length > 64)
                ? 0
                : node[0],
            )
          : isContainer(node)
            ? Object.values(node)
            : [node];
      case 8:
        return typeof node === "string"
          ? node.slice(0, rng.int(node.length + 1))
          : typeof node === "number" || typeof node === "boolean"
            ? String(node)
            : "[object Object]";
      default:
        return isContainer(node) && !isList(node) ? {} : null;
    }
  });
}

/** 1–4 mutations in a row. */
export const mutate = (value: unknown, rng: Rng): unknown => {
  let v = value;
  for (let n = 1 + rng.int(4); n > 0; n--) v = mutateOnce(v, rng);
  return v;
};

/** A value of the same type as `node`, at an edge: empty, huge, NaN, -0, invalid date, odd unicode. */
const sameTypeOdd = (node: unknown, rng: Rng): unknown => {
  if (typeof node === "string")
    return rng.pick(["", "x".repeat(70_000), rng.pick(UNICODE), "__proto__", "-1", "NaN", `${node}\u0000`]);
  if (typeof node === "number")
    return rng.pick([Number.NaN, -0, Number.POSITIVE_INFINITY, -1, 1e308, Number.MAX_SAFE_INTEGER + 2, 0.5]);
  if (typeof node === "boolean") return !node;
  if (node instanceof Date) return rng.pick([new Date(Number.NaN), new Date(8.64e15), new Date(0)]);
  if (isList(node)) return rng.pick([[], [...node, ...node], node.slice(1)]);
  return node;
};

/**
 * 1–4 mutations that keep every value's type (for inputs whose types a caller guarantees, such as
 * a provider's typed status): a leaf becomes an edge value of its type, an array shrinks or grows.
 */
export const mutateTyped = (value: unknown, rng: Rng): unknown => {
  let v = value;
  for (let n = 1 + rng.int(4); n > 0; n--) {
    const path = randomPath(v, rng);
    v = updateAt(v, path, (node) => (path.length === 0 ? node : sameTypeOdd(node, rng)));
  }
  return v;
};

/** JSON text of `value`, sometimes with one object's first key repeated (JSON.parse keeps the last). */
export function jsonText(value: unknown, rng: Rng, o: { deepest?: number } = {}): string {
  const deepest = o.deepest ?? 100_000;
  let text: string;
  try {
    text = toJson(value) ?? "null";
  } catch {
    // Nested deeper than JSON.stringify recurses: nest as text instead (JSON.parse does not recurse).
    return `${"[".repeat(deepest)}0${"]".repeat(deepest)}`;
  }
  if (rng.chance(0.02)) return `${"[".repeat(deepest / 2)}${text}${"]".repeat(deepest / 2)}`;
  if (!rng.chance(0.2)) return text;
  const at = text.indexOf('{"', rng.int(Math.max(1, text.length)));
  if (at < 0) return text;
  const end = text.indexOf(",", at);
  if (end < 0) return text;
  const member = text.slice(at + 1, end);
  return `${text.slice(0, at + 1)}${member},${text.slice(at + 1)}`;
}

/** How deeply arrays and objects nest in a JSON text. */
export const nestingDepth = (json: string): number => {
  let [depth, deepest] = [0, 0];
  for (let i = 0; i < json.length; i++) {
    const c = json.charCodeAt(i);
    if (c === 0x5b || c === 0x7b) deepest = Math.max(deepest, ++depth);
    else if (c === 0x5d || c === 0x7d) depth--;
  }
  return deepest;
};

/** One byte-level mutation. */
export function mutateBytes(bytes: Uint8Array, rng: Rng): Uint8Array {
  const b = Buffer.from(bytes);
  switch (rng.int(6)) {
    case 0:
      return b.subarray(0, rng.int(b.length + 1)); // truncated JSON
    case 1: {
      const i = rng.int(Math.max(1, b.length));
      if (b.length > 0) b[i] = rng.int(256);
      return b;
    }
    case 2: {
      const i = rng.int(b.length + 1);
      const bad = rng.pick([
        [0xff],
        [0xc0, 0x80],
        [0xed, 0xa0, 0x80],
        [0xf4, 0x90, 0x80, 0x80],
        [0xe2, 0x82],
      ]);
      return Buffer.concat([b.subarray(0, i), Buffer.from(bad), b.subarray(i)]);
    }
    case 3:
      return Buffer.concat([b, b]);
    case 4:
      return Buffer.from([0xef, 0xbb, 0xbf, ...b]); // a byte-order mark
    default:
      return Buffer.from(Array.from({ length: rng.int(64) }, () => rng.int(256)));
  }
}

/** Valid seeds mutated as values, then serialised (sometimes also mutated as bytes). */
export const mutatedJsonBytes = (seeds: readonly unknown[]): fc.Arbitrary<Uint8Array> =>
  fc.tuple(fc.constantFrom(...seeds), fc.integer()).map(([seed, n]) => {
    const rng = new Rng(n);
    const value = rng.chance(0.1) ? seed : mutate(seed, rng);
    const bytes = Buffer.from(jsonText(value, rng), "utf8");
    return rng.chance(0.25) ? mutateBytes(bytes, rng) : bytes;
  });

/** Valid seeds mutated as values (NaN, -0 and undefined kept: for in-process targets). */
export const mutatedValue = (seeds: readonly unknown[]): fc.Arbitrary<unknown> =>
  fc.tuple(fc.constantFrom(...seeds), fc.integer()).map(([seed, n]) => {
    const rng = new Rng(n);
    return rng.chance(0.05) ? seed : mutate(seed, rng);
  });

/** Valid seeds mutated without changing any value's type. */
export const typedMutatedValue = (seeds: readonly unknown[]): fc.Arbitrary<unknown> =>
  fc.tuple(fc.constantFrom(...seeds), fc.integer()).map(([seed, n]) => mutateTyped(seed, new Rng(n)));

/** Strings of any code points, lone surrogates included. */
export const anyCodePoints = (maxLength: number): fc.Arbitrary<string> =>
  fc
    .array(fc.integer({ min: 0, max: 0x10ffff }), { maxLength })
    .map((points) => points.map((p) => String.fromCodePoint(p)).join(""));

/** Bytes made from nothing: random bytes, random JSON, random strings. */
export const generatedBytes: fc.Arbitrary<Uint8Array> = fc.oneof(
  fc.uint8Array({ maxLength: 512 }),
  fc.jsonValue({ maxDepth: 4 }).map((v) => Buffer.from(toJson(v) ?? "null", "utf8")),
  anyCodePoints(200).map((s) => Buffer.from(s, "utf8")),
);
