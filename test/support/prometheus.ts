/**
 * Reads the Prometheus text exposition format (version 0.0.4) as a scrape does: one sample per
 * line `name{label="value",...} value [timestamp]`, `#` lines skipped, label values unescaped
 * (`\\`, `\"`, `\n`), NaN and infinities in any case (prom-client writes `Nan`). Enough for tests to ask "what is this series now".
 *
 *   const samples = parsePrometheus(await (await fetch(url)).text());
 *   sampleSum(samples, "devicelet_pods", { phase: "Running" });   // summed over the other labels
 */

export interface Sample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*/;
const LABEL = /^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?/;

export function parsePrometheus(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    const name = NAME.exec(line)?.[0];
    if (!name) throw new Error(`not a sample: ${line}`);
    let rest = line.slice(name.length);
    const labels: Record<string, string> = {};
    if (rest.startsWith("{")) {
      rest = rest.slice(1);
      for (;;) {
        const closing = /^\s*}/.exec(rest);
        if (closing) {
          rest = rest.slice(closing[0].length);
          break;
        }
        const label = LABEL.exec(rest);
        if (!label?.[1] || label[2] === undefined) throw new Error(`bad labels: ${line}`);
        labels[label[1]] = label[2].replace(/\\(.)/g, (_, c: string) => (c === "n" ? "\n" : c));
        rest = rest.slice(label[0].length);
      }
    }
    const value = parseValue(rest.trim().split(/\s+/)[0] ?? "");
    if (value === undefined) throw new Error(`bad value: ${line}`);
    samples.push({ name, labels, value });
  }
  return samples;
}

/** A sample value as Go's ParseFloat reads it: a number, or NaN / ±Inf in any case. */
function parseValue(text: string): number | undefined {
  const word = text.toLowerCase();
  if (word === "nan") return NaN;
  if (word === "+inf" || word === "inf") return Infinity;
  if (word === "-inf") return -Infinity;
  const value = Number(text);
  return text === "" || Number.isNaN(value) ? undefined : value;
}

/** The samples of `name` whose labels include `labels`. */
export const samplesOf = (samples: readonly Sample[], name: string, labels: Record<string, string> = {}) =>
  samples.filter(
    (s) => s.name === name && Object.entries(labels).every(([key, value]) => s.labels[key] === value),
  );

/** The sum of the matching samples' values; 0 when none matches. */
export const sampleSum = (samples: readonly Sample[], name: string, labels: Record<string, string> = {}) =>
  samplesOf(samples, name, labels).reduce((sum, s) => sum + s.value, 0);
