/**
 * `/metrics/resource`: the kubelet's resource metrics in the Prometheus text format (0.0.4), made
 * from the same {@link SummaryJson} as `/stats/summary`, as the kubelet makes them from its own
 * summary (pkg/kubelet/metrics/collectors/resource_metrics.go). metrics-server reads this for
 * `kubectl top`: each sample carries the time it was measured, in milliseconds.
 *
 * metrics-server (pkg/scraper/client/resource/decode.go) drops a whole pod when any of its
 * containers has a start time or one of CPU and memory without the other, and drops the node
 * without both. So container series are written only for containers with both CPU and memory,
 * and a pod or node without a measurement simply has no series: it is missing from `kubectl top`
 * rather than shown as zero.
 *
 *   res.type(RESOURCE_METRICS_CONTENT_TYPE).send(renderResourceMetrics(summary, { scrapeError: false }));
 */
import type { SummaryJson } from "./summary.ts";

export const RESOURCE_METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

interface Sample {
  readonly labels: readonly (readonly [string, string])[];
  readonly value: number;
  /** Measurement time, ms since the epoch. */
  readonly time: number;
}

interface Family {
  readonly name: string;
  readonly help: string;
  readonly type: "counter" | "gauge";
  readonly samples: Sample[];
}

const family = (name: string, type: Family["type"], help: string): Family => ({
  name,
  help: `[STABLE] ${help}`,
  type,
  samples: [],
});

/** The exposition text for one node's summary; `scrapeError` when its stats could not be read. */
export function renderResourceMetrics(summary: SummaryJson, o: { readonly scrapeError: boolean }): string {
  const f = {
    containerCpu: family(
      "container_cpu_usage_seconds_total",
      "counter",
      "Cumulative cpu time consumed by the container in core-seconds",
    ),
    containerMemory: family(
      "container_memory_working_set_bytes",
      "gauge",
      "Current working set of the container in bytes",
    ),
    containerStart: family(
      "container_start_time_seconds",
      "gauge",
      "Start time of the container since unix epoch in seconds",
    ),
    nodeCpu: family(
      "node_cpu_usage_seconds_total",
      "counter",
      "Cumulative cpu time consumed by the node in core-seconds",
    ),
    nodeMemory: family("node_memory_working_set_bytes", "gauge", "Current working set of the node in bytes"),
    podCpu: family(
      "pod_cpu_usage_seconds_total",
      "counter",
      "Cumulative cpu time consumed by the pod in core-seconds",
    ),
    podMemory: family("pod_memory_working_set_bytes", "gauge", "Current working set of the pod in bytes"),
    scrapeError: family(
      "resource_scrape_error",
      "gauge",
      "1 if there was an error while getting container metrics, 0 otherwise",
    ),
  };
  const { node } = summary;
  if (node.cpu?.usageCoreNanoSeconds !== undefined) {
    f.nodeCpu.samples.push({
      labels: [],
      value: node.cpu.usageCoreNanoSeconds / 1e9,
      time: ms(node.cpu.time),
    });
  }
  if (node.memory?.workingSetBytes !== undefined) {
    f.nodeMemory.samples.push({ labels: [], value: node.memory.workingSetBytes, time: ms(node.memory.time) });
  }
  for (const pod of summary.pods) {
    const podLabels = [
      ["namespace", pod.podRef.namespace],
      ["pod", pod.podRef.name],
    ] as const;
    for (const c of pod.containers) {
      const cpu = c.cpu?.usageCoreNanoSeconds;
      const memory = c.memory?.workingSetBytes;
      if (cpu === undefined || memory === undefined || !c.cpu || !c.memory) continue;
      const labels = [["container", c.name], ...podLabels] as const;
      f.containerCpu.samples.push({ labels, value: cpu / 1e9, time: ms(c.cpu.time) });
      f.containerMemory.samples.push({ labels, value: memory, time: ms(c.memory.time) });
      const start = ms(c.startTime);
      f.containerStart.samples.push({ labels, value: start / 1000, time: start });
    }
    if (pod.cpu?.usageCoreNanoSeconds !== undefined) {
      f.podCpu.samples.push({
        labels: podLabels,
        value: pod.cpu.usageCoreNanoSeconds / 1e9,
        time: ms(pod.cpu.time),
      });
    }
    if (pod.memory?.workingSetBytes !== undefined) {
      f.podMemory.samples.push({
        labels: podLabels,
        value: pod.memory.workingSetBytes,
        time: ms(pod.memory.time),
      });
    }
  }
  // Without a timestamp: the kubelet writes this one as "now".
  const scrape = { labels: [], value: o.scrapeError ? 1 : 0, time: Number.NaN };
  f.scrapeError.samples.push(scrape);
  // Families sorted by name and empty ones left out, as a Prometheus registry gathers them.
  return Object.values(f)
    .filter((x) => x.samples.length > 0)
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
    .map(renderFamily)
    .join("");
}

function renderFamily(f: Family): string {
  const lines = [`# HELP ${f.name} ${f.help}`, `# TYPE ${f.name} ${f.type}`];
  for (const s of f.samples) {
    const labels =
      s.labels.length === 0 ? "" : `{${s.labels.map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(",")}}`;
    const time = Number.isNaN(s.time) ? "" : ` ${s.time}`;
    lines.push(`${f.name}${labels} ${formatValue(s.value)}${time}`);
  }
  return `${lines.join("\n")}\n`;
}

/** Label values escape backslash, double quote and newline (the text format's only escapes). */
const escapeLabel = (v: string) => v.replaceAll("\\", "\\\\").replaceAll('"', '\\"').replaceAll("\n", "\\n");

const formatValue = (v: number) => (Number.isFinite(v) ? String(v) : v > 0 ? "+Inf" : v < 0 ? "-Inf" : "NaN");

const ms = (time: string) => Date.parse(time);
