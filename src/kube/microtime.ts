/**
 * Kubernetes time formats as the API server expects them on the wire.
 *
 * - `metav1.MicroTime` (Lease `renewTime`/`acquireTime`, Event `eventTime`) must carry exactly six
 *   fractional digits: `2026-11-02T10:20:30.123456Z`. The API server refuses other precisions
 *   with 400. client-node's `V1MicroTime` class pads a Date to `.123000Z`, but a plain `Date`
 *   (what any `new Date()` or a parsed object holds) serialises as `.123Z` and is refused, and
 *   reading a Lease back yields a string where the type says `V1MicroTime`. devicelet therefore
 *   keeps every time as its wire string and formats MicroTime with {@link toMicroTime}.
 * - `metav1.Time` (conditions' `lastTransitionTime`, Event timestamps) has second precision:
 *   `2026-11-02T10:20:30Z`; see {@link toKubeTime}.
 */

const pad = (n: number, width: number) => String(n).padStart(width, "0");

/**
 * Formats an instant as a MicroTime: RFC 3339, UTC, exactly six fractional digits.
 * A number is epoch milliseconds and may carry a fraction (e.g. `performance.timeOrigin +
 * performance.now()`), which fills the last three digits; a Date gives `000` there.
 */
export function toMicroTime(instant: Date | number = Date.now()): string {
  const ms = typeof instant === "number" ? instant : instant.getTime();
  if (!Number.isFinite(ms)) throw new RangeError(`toMicroTime: not a valid instant: ${String(instant)}`);
  const whole = Math.floor(ms);
  // Epoch ms carry ~0.25 µs of float error; round rather than floor so 0.456 stays 456.
  const micros = Math.min(999, Math.round((ms - whole) * 1000));
  const iso = new Date(whole).toISOString(); // YYYY-MM-DDTHH:MM:SS.mmmZ
  return `${iso.slice(0, -1)}${pad(micros, 3)}Z`;
}

/** Formats an instant as a `metav1.Time`: RFC 3339, UTC, whole seconds (`2026-11-02T10:20:30Z`). */
export function toKubeTime(instant: Date | number = Date.now()): string {
  const ms = typeof instant === "number" ? instant : instant.getTime();
  if (!Number.isFinite(ms)) throw new RangeError(`toKubeTime: not a valid instant: ${String(instant)}`);
  return `${new Date(ms).toISOString().slice(0, 19)}Z`;
}

const microTimePattern = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$/;

/** True when `value` is already a MicroTime the API server accepts. */
export const isMicroTime = (value: string): boolean => microTimePattern.test(value);

/**
 * Parses any RFC 3339 time the API server sends (Time or MicroTime, `Z` or an offset) to epoch
 * milliseconds, keeping microseconds as the fraction. `NaN` when it is not a time.
 */
export function parseKubeTime(value: string): number {
  const m = /^(.*T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})$/i.exec(value);
  if (!m) return NaN;
  const base = Date.parse(`${m[1] ?? ""}${(m[3] ?? "Z").toUpperCase()}`);
  const fraction = m[2] ? Number(`0.${m[2]}`) * 1000 : 0;
  return base + fraction;
}

/**
 * Brings a MicroTime field to the wire form: a string that is already six-digit is kept, any
 * other parsable time (a 3-digit ISO string, a Date) is re-formatted. `undefined` stays.
 */
export function normalizeMicroTime(value: string | Date | undefined): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value === "string") {
    if (isMicroTime(value)) return value;
    const ms = parseKubeTime(value);
    if (Number.isNaN(ms)) throw new RangeError(`not a time: ${value}`);
    return toMicroTime(ms);
  }
  return toMicroTime(value);
}
