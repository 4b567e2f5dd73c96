/**
 * Canonical forms for hashing and for "did anything change" checks.
 *
 * - {@link canonicalJson}: JSON with object keys sorted at every depth, `undefined` dropped, Dates as
 *   ISO strings. Two structurally equal values always give the same string.
 * - {@link sha256Hex}: hex SHA-256 of a string (UTF-8).
 * - {@link normaliseForCompare}: a copy fit for comparing a status we built with one read back
 *   from the API server, which stores times at whole seconds and drops empty values.
 * - {@link sameNormalised} / {@link sameNormalisedField}: whether two values have the same such
 *   copy, found by walking both without building either: every heartbeat and resync compares a
 *   status this way, and building the copies made gigabytes of garbage a minute at 1,000 nodes.
 */
import { createHash } from "node:crypto";

/**
 * Deterministic JSON: sorted keys, no `undefined`, Dates as ISO strings, non-finite numbers as null.
 * Written straight into the string, with no sorted copy of the value in between (a workload's hash
 * is taken at every reconcile of its pod). Keys come in the order `JSON.stringify` of an object
 * built from the sorted keys gave, which is what the hashes devices hold were taken over: keys that
 * are array indices ("0", "10") first in numeric order, then the others sorted.
 */
export function canonicalJson(value: unknown): string {
  return jsonOf(value) ?? "null";
}

/** The JSON of `value`, or undefined where an object drops it (undefined, a function, a symbol). */
function jsonOf(value: unknown): string | undefined {
  switch (typeof value) {
    case "string":
    case "boolean":
      return JSON.stringify(value);
    case "number":
      return Number.isFinite(value) ? JSON.stringify(value) : "null";
    case "bigint":
      return JSON.stringify(value.toString());
    case "object":
      break;
    default:
      return undefined;
  }
  if (value === null) return "null";
  if (value instanceof Date)
    return Number.isNaN(value.getTime()) ? "null" : JSON.stringify(value.toISOString());
  if (Array.isArray(value)) {
    let out = "[";
    for (let i = 0; i < value.length; i++) out += (i === 0 ? "" : ",") + (jsonOf(value[i]) ?? "null");
    return out + "]";
  }
  let out = "{";
  for (const key of orderedKeys(value)) {
    const json = jsonOf((value as Record<string, unknown>)[key]);
    if (json === undefined) continue;
    out += (out.length === 1 ? "" : ",") + JSON.stringify(key) + ":" + json;
  }
  return out + "}";
}

const ARRAY_INDEX = /^(?:0|[1-9]\d*)$/;
const isArrayIndex = (key: string) => ARRAY_INDEX.test(key) && Number(key) < 2 ** 32 - 1;

/** An object's keys sorted, with array indices first in numeric order (see {@link canonicalJson}). */
function orderedKeys(value: object): string[] {
  const keys = Object.keys(value).sort();
  if (!keys.some(isArrayIndex)) return keys;
  const indices = keys.filter(isArrayIndex).sort((a, b) => Number(a) - Number(b));
  return [...indices, ...keys.filter((k) => !isArrayIndex(k))];
}

export const sha256Hex = (text: string): string => createHash("sha256").update(text, "utf8").digest("hex");

/** Keys whose values are Kubernetes `metav1.Time` (second precision on the wire). */
const TIME_KEYS = new Set([
  "lastTransitionTime",
  "lastProbeTime",
  "lastHeartbeatTime",
  "startTime",
  "startedAt",
  "finishedAt",
]);

/**
 * Normalise a status fragment for equality checks: times (Date or RFC 3339 string) under the
 * well-known time keys become ISO strings truncated to whole seconds, keys listed in `ignoreKeys`
 * are removed at every depth, and `null`, `undefined`, `""`, `{}` and `[]` are dropped so that
 * "absent" and "empty" compare equal. Returns a new value; the input is not touched.
 */
export function normaliseForCompare(value: unknown, ignoreKeys: ReadonlySet<string> = new Set()): unknown {
  return normalise(value, undefined, ignoreKeys);
}

function normalise(value: unknown, key: string | undefined, ignore: ReadonlySet<string>): unknown {
  if (key !== undefined && TIME_KEYS.has(key)) return timeToSeconds(value);
  if (value instanceof Date) return timeToSeconds(value);
  if (Array.isArray(value)) {
    const items = value.map((v) => normalise(v, undefined, ignore)).filter((v) => v !== undefined);
    return items.length === 0 ? undefined : items;
  }
  if (typeof value === "object" && value !== null) {
    const entries = Object.keys(value)
      .filter((k) => !ignore.has(k))
      .sort()
      .flatMap((k): [string, unknown][] => {
        const v = normalise((value as Record<string, unknown>)[k], k, ignore);
        return v === undefined ? [] : [[k, v]];
      });
    return entries.length === 0 ? undefined : Object.fromEntries(entries);
  }
  if (value === null || value === "") return undefined;
  return value;
}

function timeToSeconds(value: unknown): string | undefined {
  const ms = secondsOf(value);
  return ms === undefined ? undefined : new Date(ms).toISOString();
}

/** A time (Date or RFC 3339 string) cut to whole seconds, in epoch ms; undefined if it is none. */
function secondsOf(value: unknown): number | undefined {
  const ms =
    value instanceof Date ? value.getTime() : typeof value === "string" ? Date.parse(value) : Number.NaN;
  return Number.isNaN(ms) ? undefined : Math.floor(ms / 1000) * 1000;
}

/** A Date for a time read from an object that may hold a Date or an RFC 3339 string. */
export function toDate(value: unknown): Date | undefined {
  const time = value instanceof Date ? value : typeof value === "string" ? new Date(value) : undefined;
  return time === undefined || Number.isNaN(time.getTime()) ? undefined : new Date(time.getTime());
}

/**
 * Whether `a` and `b` are equal after {@link normaliseForCompare}: the same answer as comparing
 * `canonicalJson` of both copies, for values made of JSON, Dates and bigints.
 */
export function sameNormalised(a: unknown, b: unknown, ignoreKeys: ReadonlySet<string> = noKeys): boolean {
  return same(a, b, undefined, ignoreKeys);
}

/**
 * {@link sameNormalised} of `{ [key]: a }` and `{ [key]: b }`, without the two wrappers: a status
 * field compared on its own, with its name deciding whether it is a time (`startTime`).
 */
export function sameNormalisedField(
  key: string,
  a: unknown,
  b: unknown,
  ignoreKeys: ReadonlySet<string> = noKeys,
): boolean {
  return ignoreKeys.has(key) || same(a, b, key, ignoreKeys);
}

const noKeys: ReadonlySet<string> = new Set();

type Plain = Record<string, unknown>;
const isPlainObject = (v: unknown): v is Plain =>
  typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Date);

/** Whether {@link normalise} drops `value` found under `key`. */
function dropped(value: unknown, key: string | undefined, ignore: ReadonlySet<string>): boolean {
  if (key !== undefined && TIME_KEYS.has(key)) return secondsOf(value) === undefined;
  if (value === undefined || value === null || value === "") return true;
  if (value instanceof Date) return Number.isNaN(value.getTime());
  if (Array.isArray(value)) {
    for (const item of value as unknown[]) if (!dropped(item, undefined, ignore)) return false;
    return true;
  }
  if (typeof value === "object") {
    for (const k in value) {
      if (Object.hasOwn(value, k) && !ignore.has(k) && !dropped((value as Plain)[k], k, ignore)) return false;
    }
    return true;
  }
  return false;
}

function same(a: unknown, b: unknown, key: string | undefined, ignore: ReadonlySet<string>): boolean {
  if (key !== undefined && TIME_KEYS.has(key)) return secondsOf(a) === secondsOf(b);
  if (a === b) return true;
  if (Array.isArray(a) && Array.isArray(b)) return sameItems(a, b, ignore);
  if (isPlainObject(a) && isPlainObject(b)) return sameEntries(a, b, ignore);
  const [goneA, goneB] = [dropped(a, key, ignore), dropped(b, key, ignore)];
  if (goneA || goneB) return goneA && goneB;
  return sameLeaf(a, b);
}

/** Arrays compare item by item once the items {@link normalise} drops are skipped. */
function sameItems(a: readonly unknown[], b: readonly unknown[], ignore: ReadonlySet<string>): boolean {
  let [i, j] = [0, 0];
  for (;;) {
    while (i < a.length && dropped(a[i], undefined, ignore)) i++;
    while (j < b.length && dropped(b[j], undefined, ignore)) j++;
    if (i === a.length || j === b.length) return i === a.length && j === b.length;
    if (!same(a[i], b[j], undefined, ignore)) return false;
    i++;
    j++;
  }
}

function sameEntries(a: Plain, b: Plain, ignore: ReadonlySet<string>): boolean {
  for (const k in a) {
    if (
      Object.hasOwn(a, k) &&
      !ignore.has(k) &&
      !same(a[k], Object.hasOwn(b, k) ? b[k] : undefined, k, ignore)
    )
      return false;
  }
  for (const k in b) {
    if (Object.hasOwn(b, k) && !Object.hasOwn(a, k) && !ignore.has(k) && !dropped(b[k], k, ignore))
      return false;
  }
  return true;
}

/**
 * Two values {@link normalise} keeps that are not both arrays or both objects: equal when
 * `canonicalJson` writes them alike. A Date is written as its ISO time at whole seconds (a string),
 * a bigint as its digits (a string); an array beside an object is never equal to it.
 */
function sameLeaf(a: unknown, b: unknown): boolean {
  return leafJson(a) === leafJson(b);
}

const leafJson = (value: unknown): string =>
  value instanceof Date ? JSON.stringify(timeToSeconds(value)) : canonicalJson(value);
