/**
 * Defensive readers for pod-shaped input. A pod comes from the API server, but the translator must
 * never throw on a malformed one (a fuzzed object, a cache entry with a field of the wrong type), so
 * every field is read through these: a value of the wrong type reads as absent.
 *
 * Map lookups go through {@link own} so that keys such as `constructor` or `__proto__` in a
 * ConfigMap never resolve to something on `Object.prototype`.
 */

export type Rec = Readonly<Record<string, unknown>>;

export const rec = (v: unknown): Rec | undefined =>
  typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Rec) : undefined;

export const str = (v: unknown): string | undefined => (typeof v === "string" ? v : undefined);

export const bool = (v: unknown): boolean => v === true;

export const int = (v: unknown): number | undefined =>
  typeof v === "number" && Number.isSafeInteger(v) ? v : undefined;

export const arr = (v: unknown): readonly unknown[] => (Array.isArray(v) ? v : []);

/** An own property of a record, or undefined (never an inherited one). */
export const own = (r: unknown, key: string): unknown => {
  const o = rec(r);
  return o !== undefined && Object.hasOwn(o, key) ? o[key] : undefined;
};

/** Own string-valued entries of a map such as `ConfigMap.data`, sorted by key. */
export const stringEntries = (v: unknown): [string, string][] => {
  const o = rec(v);
  if (o === undefined) return [];
  return Object.keys(o)
    .sort()
    .flatMap((k): [string, string][] => {
      const value = o[k];
      return typeof value === "string" ? [[k, value]] : [];
    });
};

/** Own string-valued entries as a plain record (keys such as `__proto__` kept as own data). */
export const stringRecord = (v: unknown): Record<string, string> => Object.fromEntries(stringEntries(v));

/**
 * A client-node model as plain data, without its class identity (which typescript-eslint's
 * `no-unsafe-class-instance-assignment` would otherwise demand of every literal). Times stay
 * `Date`: the form the builders here return.
 */
export type Plain<T> = T extends Date
  ? T
  : T extends readonly (infer U)[]
    ? Plain<U>[]
    : T extends object
      ? { [K in keyof T]: Plain<T[K]> }
      : T;

/**
 * A client-node model as input: plain data whose times may be `Date`s or RFC 3339 strings, so the
 * wire form the informers hold (`Wire<T>` in `src/kube`), a `Plain<T>` literal and a client-node
 * instance are all accepted.
 */
export type Model<T> = T extends Date
  ? Date | string
  : T extends readonly (infer U)[]
    ? Model<U>[]
    : T extends object
      ? { [K in keyof T]: Model<T[K]> }
      : T;
