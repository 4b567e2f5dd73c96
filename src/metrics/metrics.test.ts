import pino from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { parsePrometheus, sampleSum } from "../../test/support/prometheus.ts";
import { FakeClock } from "../base/fake-clock.ts";
import { RequestBudget } from "../kube/budget.ts";
import type { Node, Pod } from "../kube/index.ts";
import { DEVICELET_SERIES } from "./devicelet-metrics.ts";
import { DeviceletMetrics, startMetricsServer, type MetricsServer } from "./index.ts";

const scrape = async (metrics: DeviceletMetrics) => parsePrometheus(await metrics.registry.metrics());

const allGauges = {
  pendingChanges: () => 3,
  devicesOutOfSync: () => 1,
  commandsQueued: () => 2,
  transportConnected: () => true,
};

describe("DeviceletMetrics", () => {
  it("registers every agreed series and the process metrics, in a registry of each engine's own", async () => {
    const a = new DeviceletMetrics();
    const b = new DeviceletMetrics();
    a.provider.observe(allGauges);
    const names = a.registry.getMetricsAsArray().map((m) => m.name);
    expect(names).toEqual(expect.arrayContaining([...DEVICELET_SERIES]));
    expect(names).toContain("devicelet_process_cpu_seconds_total");
    expect(names.filter((n) => !n.startsWith("devicelet_"))).toEqual([]);
    a.setLeader(true);
    b.setLeader(false);
    expect(sampleSum(await scrape(a), "devicelet_leader")).toBe(1);
    expect(sampleSum(await scrape(b), "devicelet_leader")).toBe(0);
  });

  it("counts API answers by verb and code, and budget waits per lane", async () => {
    const clock = new FakeClock();
    const budget = new RequestBudget({ qps: 1, burst: 1, clock });
    const heartbeat = new RequestBudget({ qps: 10, burst: 10, clock });
    const metrics = new DeviceletMetrics({ processMetrics: false });
    const stop = new AbortController();
    metrics.observeKube({ budget, heartbeatBudget: heartbeat }, stop.signal);
    await budget.take();
    const second = budget.take();
    clock.advance(1000);
    await second;
    await heartbeat.take();
    budget.answered("patch", "200");
    budget.answered("patch", "200");
    budget.answered("get", "error");
    let samples = await scrape(metrics);
    expect(sampleSum(samples, "devicelet_api_requests_total", { verb: "patch", code: "200" })).toBe(2);
    expect(sampleSum(samples, "devicelet_api_requests_total", { verb: "get", code: "error" })).toBe(1);
    expect(sampleSum(samples, "devicelet_api_budget_wait_seconds_count", { lane: "default" })).toBe(2);
    expect(sampleSum(samples, "devicelet_api_budget_wait_seconds_sum", { lane: "default" })).toBe(1);
    expect(sampleSum(samples, "devicelet_api_budget_wait_seconds_count", { lane: "heartbeat" })).toBe(1);
    // Once the engine stops, a client it was given (and may outlive it) is no longer observed.
    stop.abort();
    budget.answered("patch", "200");
    samples = await scrape(metrics);
    expect(sampleSum(samples, "devicelet_api_requests_total", { verb: "patch", code: "200" })).toBe(2);
  });

  it("times bound-to-Running from the PodScheduled condition, else the pod's creation", async () => {
    const metrics = new DeviceletMetrics({ processMetrics: false });
    const pod: Pod = { metadata: { creationTimestamp: "2026-01-01T00:00:00Z" } };
    metrics.podRunning(
      pod,
      {
        phase: "Running",
        conditions: [{ type: "PodScheduled", status: "True", lastTransitionTime: "2026-01-01T00:00:10Z" }],
      },
      new Date("2026-01-01T00:00:14Z"),
    );
    metrics.podRunning(pod, { phase: "Running" }, new Date("2026-01-01T00:00:30Z"));
    const samples = await scrape(metrics);
    expect(sampleSum(samples, "devicelet_pod_start_seconds_count")).toBe(2);
    expect(sampleSum(samples, "devicelet_pod_start_seconds_sum")).toBe(34);
    expect(sampleSum(samples, "devicelet_pod_start_seconds_bucket", { le: "5" })).toBe(1);
  });

  it("reads nodes by condition and pods by phase and reason at each scrape", async () => {
    const metrics = new DeviceletMetrics({ processMetrics: false });
    const node = (ready: string, connected: string): Node => ({
      status: {
        conditions: [
          { type: "Ready", status: ready },
          { type: "DeviceConnected", status: connected },
        ],
      },
    });
    let nodes = [node("True", "True"), node("True", "False")];
    metrics.watchNodes(() => nodes);
    const waiting = (reason: string): Pod => ({
      status: {
        phase: "Pending",
        containerStatuses: [{ name: "a", state: { waiting: { reason } } }],
      } as Pod["status"],
    });
    const pods: Pod[] = [
      { status: { phase: "Running" } },
      { status: { phase: "Running" } },
      { status: { phase: "Failed", reason: "Unsupported" } },
      waiting("CreateContainerConfigError"),
      waiting("made up by a device!"),
    ];
    metrics.watchPods(() => pods);
    let samples = await scrape(metrics);
    expect(sampleSum(samples, "devicelet_nodes", { condition: "Ready", status: "True" })).toBe(2);
    expect(sampleSum(samples, "devicelet_nodes", { condition: "DeviceConnected", status: "False" })).toBe(1);
    expect(sampleSum(samples, "devicelet_pods", { phase: "Running", reason: "" })).toBe(2);
    expect(sampleSum(samples, "devicelet_pods", { phase: "Failed", reason: "Unsupported" })).toBe(1);
    expect(
      sampleSum(samples, "devicelet_pods", { phase: "Pending", reason: "CreateContainerConfigError" }),
    ).toBe(1);
    expect(sampleSum(samples, "devicelet_pods", { phase: "Pending", reason: "Other" })).toBe(1);
    // State, not events: a node gone is gone from the next scrape.
    nodes = [node("Unknown", "True")];
    samples = await scrape(metrics);
    expect(sampleSum(samples, "devicelet_nodes", { condition: "Ready", status: "True" })).toBe(0);
    expect(sampleSum(samples, "devicelet_nodes", { condition: "Ready", status: "Unknown" })).toBe(1);
  });

  it("takes the provider's events and gauges, with bounded rejection reasons", async () => {
    const metrics = new DeviceletMetrics({ processMetrics: false });
    const { provider } = metrics;
    // No provider gauges until the provider observes them: no made-up "broker disconnected".
    expect((await scrape(metrics)).filter((s) => s.name === "devicelet_broker_connected")).toEqual([]);
    provider.desiredDelivered(0.2);
    provider.desiredApplied(1.5);
    provider.messageRejected("schema");
    provider.messageRejected("schema");
    provider.messageRejected("gw-17 sent garbage");
    for (let i = 0; i < 40; i++) provider.messageRejected(`reason-${i}`);
    provider.commandExpired();
    provider.reportsReread(3);
    provider.reportsReread(2);
    let connected = true;
    provider.observe({ ...allGauges, transportConnected: () => connected });
    let samples = await scrape(metrics);
    expect(sampleSum(samples, "devicelet_desired_delivery_seconds_count")).toBe(1);
    expect(sampleSum(samples, "devicelet_desired_apply_seconds_sum")).toBe(1.5);
    expect(sampleSum(samples, "devicelet_device_messages_rejected_total", { reason: "schema" })).toBe(2);
    const reasons = new Set(
      samples
        .filter((s) => s.name === "devicelet_device_messages_rejected_total")
        .map((s) => s.labels.reason),
    );
    expect(reasons.size).toBeLessThanOrEqual(33);
    expect(reasons).toContain("other");
    expect(sampleSum(samples, "devicelet_commands_expired_total")).toBe(1);
    expect(sampleSum(samples, "devicelet_device_reports_reread_total")).toBe(5);
    expect(sampleSum(samples, "devicelet_device_pending_changes")).toBe(3);
    expect(sampleSum(samples, "devicelet_devices_out_of_sync")).toBe(1);
    expect(sampleSum(samples, "devicelet_commands_queued")).toBe(2);
    expect(sampleSum(samples, "devicelet_broker_connected")).toBe(1);
    connected = false;
    samples = await scrape(metrics);
    expect(sampleSum(samples, "devicelet_broker_connected")).toBe(0);
  });
});

describe("metrics server", () => {
  let server: MetricsServer | undefined;
  afterEach(async () => {
    await server?.close();
    server = undefined;
  });

  it("serves GET /metrics in the Prometheus text format, and nothing else", async () => {
    const metrics = new DeviceletMetrics();
    metrics.setLeader(true);
    server = await startMetricsServer({
      port: 0,
      bindAddress: "127.0.0.1",
      registry: metrics.registry,
      logger: pino({ level: "silent" }),
    });
    expect(server.url).toBe(`http://127.0.0.1:${server.port}/metrics`);
    const res = await fetch(server.url);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toContain("text/plain; version=0.0.4");
    const samples = parsePrometheus(await res.text());
    expect(sampleSum(samples, "devicelet_leader")).toBe(1);
    expect(samples.some((s) => s.name === "devicelet_process_cpu_seconds_total")).toBe(true);
    const base = server.url.replace(/\/metrics$/, "");
    expect((await fetch(`${base}/`)).status).toBe(404);
    expect((await fetch(`${base}/metricsz`)).status).toBe(404);
    expect((await fetch(server.url, { method: "POST" })).status).toBe(405);
  });
});
