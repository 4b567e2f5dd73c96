import { describe, expect, it } from "vitest";
import type { Pod } from "../kube/index.ts";
import type { DeviceStats } from "../provider/types.ts";
import { renderResourceMetrics } from "./metrics-resource.ts";
import { buildSummary, CpuRates } from "./summary.ts";

const t0 = new Date("2026-12-02T07:00:00.000Z");
const t10 = new Date("2026-12-02T07:00:10.000Z");
const started = new Date("2026-12-02T06:00:00Z");

const measuredPod: Pod = {
  metadata: { namespace: "apps", name: "web", uid: "u-web" },
  spec: { nodeName: "gw-1", containers: [{ name: "app" }, { name: "sidecar" }] },
  status: { phase: "Running", startTime: "2026-12-02T06:00:00Z" },
};
const unmeasuredPod: Pod = {
  metadata: { namespace: "apps", name: "quiet", uid: "u-quiet", creationTimestamp: "2026-12-02T05:00:00Z" },
  spec: { nodeName: "gw-1", containers: [{ name: "main" }] },
  status: {
    phase: "Running",
    startTime: "2026-12-02T05:00:01Z",
    containerStatuses: [
      {
        name: "main",
        image: "x",
        imageID: "",
        ready: true,
        restartCount: 0,
        state: { running: { startedAt: "2026-12-02T05:00:02Z" } },
      },
    ],
  },
};

/** Node and containers report only the CPU counter; the sidecar has only memory. */
const stats = (at: Date, nodeCpu: number, appCpu: number): DeviceStats => ({
  node: {
    time: at,
    startTime: new Date("2026-12-01T00:00:00Z"),
    cpu: { usageCoreNanoSeconds: nodeCpu },
    memory: { workingSetBytes: 50_000_000, availableBytes: 200_000_000 },
  },
  pods: [
    {
      pod: { namespace: "apps", name: "web", uid: "u-web" },
      startTime: started,
      containers: [
        {
          name: "app",
          time: at,
          startTime: started,
          cpu: { usageCoreNanoSeconds: appCpu },
          memory: { workingSetBytes: 1_000_000 },
        },
        { name: "sidecar", time: at, memory: { workingSetBytes: 500_000 } },
      ],
    },
  ],
});

function summaries() {
  const rates = new CpuRates();
  const input = { nodeName: "gw-1", nodeStartTime: t0, pods: [measuredPod, unmeasuredPod], rates };
  const first = buildSummary({ ...input, stats: stats(t0, 10e9, 2e9), now: t0.getTime() });
  // Ten seconds later: the node used 5 s of CPU (0.5 cores), the app 1 s (0.1 cores).
  const second = buildSummary({ ...input, stats: stats(t10, 15e9, 3e9), now: t10.getTime() });
  return { first, second };
}

describe("buildSummary", () => {
  it("derives usageNanoCores from two samples of the counter", () => {
    const { first, second } = summaries();
    expect(first.node.cpu).toEqual({ time: "2026-12-02T07:00:00Z", usageCoreNanoSeconds: 10e9 });
    expect(second.node.cpu).toEqual({
      time: "2026-12-02T07:00:10Z",
      usageNanoCores: 500_000_000,
      usageCoreNanoSeconds: 15e9,
    });
    expect(second.pods[0]?.containers[0]?.cpu?.usageNanoCores).toBe(100_000_000);
  });

  it("keeps the kubelet's shape for the node and a measured pod", () => {
    const { second } = summaries();
    expect(second.node).toEqual({
      nodeName: "gw-1",
      startTime: "2026-12-01T00:00:00Z",
      cpu: { time: "2026-12-02T07:00:10Z", usageNanoCores: 500_000_000, usageCoreNanoSeconds: 15e9 },
      memory: { time: "2026-12-02T07:00:10Z", availableBytes: 200_000_000, workingSetBytes: 50_000_000 },
    });
    expect(second.pods[0]).toEqual({
      podRef: { name: "web", namespace: "apps", uid: "u-web" },
      startTime: "2026-12-02T06:00:00Z",
      containers: [
        {
          name: "app",
          startTime: "2026-12-02T06:00:00Z",
          cpu: { time: "2026-12-02T07:00:10Z", usageNanoCores: 100_000_000, usageCoreNanoSeconds: 3e9 },
          memory: { time: "2026-12-02T07:00:10Z", workingSetBytes: 1_000_000 },
        },
        {
          name: "sidecar",
          startTime: "2026-12-02T06:00:00Z",
          memory: { time: "2026-12-02T07:00:10Z", workingSetBytes: 500_000 },
        },
      ],
      // The sidecar has no CPU, so the pod has no CPU total; memory adds up.
      memory: { time: "2026-12-02T07:00:10Z", workingSetBytes: 1_500_000 },
    });
  });

  it("lists a pod with no stats with what is known", () => {
    const { second } = summaries();
    expect(second.pods[1]).toEqual({
      podRef: { name: "quiet", namespace: "apps", uid: "u-quiet" },
      startTime: "2026-12-02T05:00:01Z",
      containers: [{ name: "main", startTime: "2026-12-02T05:00:02Z" }],
    });
  });

  it("without stats, gives the node and its pods with no usage", () => {
    const summary = buildSummary({
      nodeName: "gw-1",
      nodeStartTime: t0,
      stats: undefined,
      pods: [unmeasuredPod],
      rates: new CpuRates(),
      now: t0.getTime(),
    });
    expect(summary).toEqual({
      node: { nodeName: "gw-1", startTime: "2026-12-02T07:00:00Z" },
      pods: [
        {
          podRef: { name: "quiet", namespace: "apps", uid: "u-quiet" },
          startTime: "2026-12-02T05:00:01Z",
          containers: [{ name: "main", startTime: "2026-12-02T05:00:02Z" }],
        },
      ],
    });
  });

  it("forgets CPU samples of series no longer reported", () => {
    const rates = new CpuRates();
    rates.rate("a", t0, { usageCoreNanoSeconds: 1 }, t0.getTime());
    expect(rates.size).toBe(1);
    rates.prune(t0.getTime() + 11 * 60_000);
    expect(rates.size).toBe(0);
  });
});

describe("renderResourceMetrics", () => {
  it("writes the kubelet's series, with measurement times, for what has both CPU and memory", () => {
    const { second } = summaries();
    // The pod total and the sidecar (no CPU) get no series: metrics-server would drop the whole pod.
    expect(renderResourceMetrics(second, { scrapeError: false })).toBe(
      [
        "# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the container in core-seconds",
        "# TYPE container_cpu_usage_seconds_total counter",
        'container_cpu_usage_seconds_total{container="app",namespace="apps",pod="web"} 3 1796194810000',
        "# HELP container_memory_working_set_bytes [STABLE] Current working set of the container in bytes",
        "# TYPE container_memory_working_set_bytes gauge",
        'container_memory_working_set_bytes{container="app",namespace="apps",pod="web"} 1000000 1796194810000',
        "# HELP container_start_time_seconds [STABLE] Start time of the container since unix epoch in seconds",
        "# TYPE container_start_time_seconds gauge",
        'container_start_time_seconds{container="app",namespace="apps",pod="web"} 1796191200 1796191200000',
        "# HELP node_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the node in core-seconds",
        "# TYPE node_cpu_usage_seconds_total counter",
        "node_cpu_usage_seconds_total 15 1796194810000",
        "# HELP node_memory_working_set_bytes [STABLE] Current working set of the node in bytes",
        "# TYPE node_memory_working_set_bytes gauge",
        "node_memory_working_set_bytes 50000000 1796194810000",
        "# HELP pod_memory_working_set_bytes [STABLE] Current working set of the pod in bytes",
        "# TYPE pod_memory_working_set_bytes gauge",
        'pod_memory_working_set_bytes{namespace="apps",pod="web"} 1500000 1796194810000',
        "# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise",
        "# TYPE resource_scrape_error gauge",
        "resource_scrape_error 0",
        "",
      ].join("\n"),
    );
  });

  it("escapes label values and reports a scrape error", () => {
    const text = renderResourceMetrics(
      {
        node: { nodeName: "n", startTime: "2026-12-02T07:00:00Z" },
        pods: [
          {
            podRef: { name: 'we"b', namespace: "a\\b", uid: "u" },
            startTime: "2026-12-02T07:00:00Z",
            containers: [
              {
                name: "c",
                startTime: "2026-12-02T07:00:00Z",
                cpu: { time: "2026-12-02T07:00:00.250Z", usageCoreNanoSeconds: 1 },
                memory: { time: "2026-12-02T07:00:00.250Z", workingSetBytes: 2 },
              },
            ],
          },
        ],
      },
      { scrapeError: true },
    );
    expect(text).toContain(
      'container_cpu_usage_seconds_total{container="c",namespace="a\\\\b",pod="we\\"b"} 1e-9 1796194800250',
    );
    expect(text).toContain("resource_scrape_error 1\n");
    expect(text).not.toContain("node_cpu_usage_seconds_total ");
  });
});
