/**
 * Just enough of Kubernetes `resource.Quantity` for `resourceFieldRef`: exact parsing into a
 * rational number (BigInt, so `0.1` CPU is exactly 100m) and the kubelet's rounding rules
 * (pkg/api/v1/resource `ExtractContainerResourceValue`: CPU in millicores, everything else in
 * units, both rounded up, then divided by the divisor and rounded up again).
 */

/** A non-negative quantity as `num / den` with `den > 0`. */
export interface Rational {
  readonly num: bigint;
  readonly den: bigint;
}

const SUFFIX: Readonly<Record<string, Rational>> = {
  "": { num: 1n, den: 1n },
  n: { num: 1n, den: 1_000_000_000n },
  u: { num: 1n, den: 1_000_000n },
  m: { num: 1n, den: 1000n },
  k: { num: 1000n, den: 1n },
  M: { num: 10n ** 6n, den: 1n },
  G: { num: 10n ** 9n, den: 1n },
  T: { num: 10n ** 12n, den: 1n },
  P: { num: 10n ** 15n, den: 1n },
  E: { num: 10n ** 18n, den: 1n },
  Ki: { num: 1n << 10n, den: 1n },
  Mi: { num: 1n << 20n, den: 1n },
  Gi: { num: 1n << 30n, den: 1n },
  Ti: { num: 1n << 40n, den: 1n },
  Pi: { num: 1n << 50n, den: 1n },
  Ei: { num: 1n << 60n, den: 1n },
};

/**
 * apimachinery's quantity grammar (`resource.ParseQuantity`): an optional sign, digits with at most
 * one decimal point, then one suffix: binary SI (`Ki`…`Ei`), decimal SI (`n u m "" k M G T P E`)
 * or a decimal exponent (`e3`, `E-2`). `1.5.5`, `10X`, `1K` and `1e` are refused there and here.
 * Exponents beyond three digits are refused here too: the value would be astronomically large or
 * small, and expanding it exactly would take unbounded memory.
 */
const QUANTITY = /^([+-]?)(\d+(?:\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d{1,3})?$/;

/** Parse a non-negative quantity such as `250m`, `1.5Gi`, `1e3`; undefined when it is not one. */
export function parseQuantity(text: string): Rational | undefined {
  const signed = parseSignedQuantity(text);
  return signed === undefined || signed.negative ? undefined : signed.magnitude;
}

/**
 * Parse any quantity Kubernetes' grammar accepts, negative ones included (`-1`, `-500m`), into its
 * sign and magnitude; undefined when the text is not a quantity at all. A negative zero is not
 * negative. Leading and trailing whitespace is ignored, as the API server does.
 */
export function parseSignedQuantity(text: string): { negative: boolean; magnitude: Rational } | undefined {
  const match = QUANTITY.exec(text.trim());
  if (match === null) return undefined;
  const magnitude = magnitudeOf(match[2] ?? "0", match[3] ?? "");
  if (magnitude === undefined) return undefined;
  return { negative: match[1] === "-" && magnitude.num !== 0n, magnitude };
}

function magnitudeOf(digits: string, suffix: string): Rational | undefined {
  const [whole = "", fraction = ""] = digits.split(".");
  let num = BigInt((whole + fraction).replace(/^0+(?=\d)/, "") || "0");
  let den = 10n ** BigInt(fraction.length);
  if (suffix.startsWith("e") || suffix.startsWith("E")) {
    const exp = Number(suffix.slice(1));
    if (exp >= 0) num *= 10n ** BigInt(exp);
    else den *= 10n ** BigInt(-exp);
  } else {
    const mult = SUFFIX[suffix];
    if (mult === undefined) return undefined;
    num *= mult.num;
    den *= mult.den;
  }
  return { num, den };
}

const ceilDiv = (a: bigint, b: bigint): bigint => (a + b - 1n) / b;

/** `ceil(q * 1000)`: the value in millis, as `Quantity.MilliValue()` gives it. */
export const milliValue = (q: Rational): bigint => ceilDiv(q.num * 1000n, q.den);

/** `ceil(q)`: the value in units, as `Quantity.Value()` gives it. */
export const unitValue = (q: Rational): bigint => ceilDiv(q.num, q.den);

/**
 * The string the kubelet exposes for a resource value through `resourceFieldRef`. `resource` is the
 * bare resource name (`cpu`, `memory`, `ephemeral-storage`, `hugepages-2Mi`). Returns undefined
 * when the divisor rounds to zero (the API server refuses such divisors anyway).
 */
export function formatResourceValue(
  resource: string,
  value: Rational,
  divisor: Rational,
): string | undefined {
  if (resource === "cpu") {
    const d = milliValue(divisor);
    return d === 0n ? undefined : ceilDiv(milliValue(value), d).toString();
  }
  const d = unitValue(divisor);
  return d === 0n ? undefined : ceilDiv(unitValue(value), d).toString();
}
