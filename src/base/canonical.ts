/**
 * Canonical forms for hashing and for "did anything change" checks.
 *
 * - {@link canonicalJson}: JSON with object keys sorted at every depth, `undefined` dropped, Dates as
 *   ISO strings. Two structurally equal values always give the same string.
 * - {@link sha256Hex}: hex SHA-256 of a string (UTF-8).
 * - {@link normaliseForCompare}: a copy fit for comparing a status we built with one read back
 *   from the API server, which stores times at whole seconds and drops empty values.
 */
import { createHash } from "node:crypto";

/** Deterministic JSON: sorted keys, no `undefined`, Dates as ISO strings, non-finite numbers as null. */
export function canonicalJson(value: unknown): string {
  // JSON.stringify answers undefined (despite its declared type) for undefined and functions.
  const json = JSON.stringify(sortKeys(value)) as string | undefined;
  return json ?? "null";
}

function sortKeys(value: unknown): unknown {
  if (value instanceof Date) return Number.isNaN(value.getTime()) ? null : value.toISOString();
  if (Array.isArray(value)) return value.map((v) => (v === undefined ? null : sortKeys(v)));
  if (typeof value === "object" && value !== null) {
    const entries = Object.keys(value)
      .sort()
      .flatMap((k): [string, unknown][] => {
        const v = (value as Record<string, unknown>)[k];
        return v === undefined || typeof v === "function" ? [] : [[k, sortKeys(v)]];
      });
    return Object.fromEntries(entries);
  }
  if (typeof value === "bigint") return value.toString();
  return value;
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
  const time = value instanceof Date ? value : typeof value === "string" ? new Date(value) : undefined;
  if (time === undefined || Number.isNaN(time.getTime())) return undefined;
  return new Date(Math.floor(time.getTime() / 1000) * 1000).toISOString();
}

/** A Date for a time read from an object that may hold a Date or an RFC 3339 string. */
export function toDate(value: unknown): Date | undefined {
  const time = value instanceof Date ? value : typeof value === "string" ? new Date(value) : undefined;
  return time === undefined || Number.isNaN(time.getTime()) ? undefined : new Date(time.getTime());
}

/** Equality of two values after {@link normaliseForCompare}. */
export function sameNormalised(a: unknown, b: unknown, ignoreKeys?: ReadonlySet<string>): boolean {
  return (
    canonicalJson(normaliseForCompare(a, ignoreKeys)) === canonicalJson(normaliseForCompare(b, ignoreKeys))
  );
}
