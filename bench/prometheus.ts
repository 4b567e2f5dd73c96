/**
 * Reading histograms from a Prometheus text exposition (what devicelet's `/metrics` serves), for
 * benchmarks that break a latency down by what devicelet measured inside itself.
 *
 *   const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
 *   const stages = histograms(text, "devicelet_pod_start_stage_seconds", "stage");
 *   summarize(stages.get("device"));   // { count, meanMs, p50Ms, p99Ms }
 */

export interface Histogram {
  count: number;
  sum: number;
  /** Cumulative counts by upper bound, ascending; the last bound is +Inf. */
  buckets: { le: number; count: number }[];
}

/**
 * The histograms named `name` in `text`, by the value of `label` (the empty string when the
 * series has no such label).
 */
export function histograms(text: string, name: string, label?: string): Map<string, Histogram> {
  const out = new Map<string, Histogram>();
  const of = (key: string) => {
    let h = out.get(key);
    if (!h) out.set(key, (h = { count: 0, sum: 0, buckets: [] }));
    return h;
  };
  for (const line of text.split("\n")) {
    if (!line.startsWith(name)) continue;
    const m = /^(\w+?)(_bucket|_sum|_count)(?:\{([^}]*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const labels = new Map(
      [...(m[3] ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((l) => [l[1] ?? "", l[2] ?? ""]),
    );
    const h = of(label ? (labels.get(label) ?? "") : "");
    const value = Number(m[4]);
    if (m[2] === "_sum") h.sum = value;
    else if (m[2] === "_count") h.count = value;
    else {
      const le = labels.get("le") ?? "";
      h.buckets.push({ le: le === "+Inf" ? Number.POSITIVE_INFINITY : Number(le), count: value });
    }
  }
  for (const h of out.values()) h.buckets.sort((a, b) => a.le - b.le);
  return out;
}

/**
 * What `after` observed since `before` (two scrapes of the same histograms): counts, sums and
 * buckets subtracted, by key. A series missing from `before` counts from zero.
 */
export function since(after: Map<string, Histogram>, before: Map<string, Histogram>): Map<string, Histogram> {
  const out = new Map<string, Histogram>();
  for (const [key, h] of after) {
    const b = before.get(key);
    const was = (le: number) => b?.buckets.find((x) => x.le === le)?.count ?? 0;
    out.set(key, {
      count: h.count - (b?.count ?? 0),
      sum: h.sum - (b?.sum ?? 0),
      buckets: h.buckets.map(({ le, count }) => ({ le, count: count - was(le) })),
    });
  }
  return out;
}

/**
 * The `q` quantile (0..1) in seconds, interpolated linearly inside its bucket as PromQL's
 * `histogram_quantile` does; in the +Inf bucket, the highest finite bound.
 */
export function quantile(h: Histogram, q: number): number {
  if (h.count === 0) return Number.NaN;
  const rank = q * h.count;
  let lower = 0;
  let below = 0;
  for (const b of h.buckets) {
    if (b.count >= rank) {
      if (!Number.isFinite(b.le)) return lower;
      const inBucket = b.count - below;
      return inBucket === 0 ? b.le : lower + ((b.le - lower) * (rank - below)) / inBucket;
    }
    lower = b.le;
    below = b.count;
  }
  return lower;
}

/** Count, mean and estimated p50/p99 in milliseconds, to a tenth. */
export function summarize(h: Histogram | undefined) {
  const ms = (s: number) => Math.round(s * 10_000) / 10;
  if (!h || h.count === 0) return { count: 0, meanMs: Number.NaN, p50Ms: Number.NaN, p99Ms: Number.NaN };
  return {
    count: h.count,
    meanMs: ms(h.sum / h.count),
    p50Ms: ms(quantile(h, 0.5)),
    p99Ms: ms(quantile(h, 0.99)),
  };
}
