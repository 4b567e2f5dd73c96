/**
 * devicelet's Prometheus endpoint as Prometheus sees it, on the real `devicelet run` with the MQTT
 * provider, a real Mosquitto and simulated devices: `/metrics` is scraped over HTTP and parsed, and
 * each series is shown to move when the thing it measures happens:
 * - at start: nodes Ready, leader, broker connected, API requests, budget waits, lease renewals;
 * - a pod created: pods Running and the bound-to-Running histogram, the desired document's
 *   delivery and apply histograms;
 * - a device away while its pod is created: a change pending and a device out of sync, the node's
 *   DeviceConnected=False; both back once it returns and applies;
 * - a restart requested for a pod whose device is away: a command queued, then counted expired
 *   when its time to live ends; another one leaves the queue when the device is back and runs it;
 * - a malformed device message: the rejected counter, by reason;
 * - the broker stopped and started: the connection gauge.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { eventually } from "../support/eventually.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import { parsePrometheus, sampleSum, type Sample } from "../support/prometheus.ts";
import { mqttScene } from "../support/scene.ts";
import { uniqueName } from "../support/testenv.ts";
import { pod, type PodJson } from "../support/workloads.ts";

const id = uniqueName("metrics");
const ns = id;
const gwA = `${id}-gw-a`;
const gwB = `${id}-gw-b`;
const scene = mqttScene({
  id,
  devices: [
    { id: gwA, kind: "gateway" },
    { id: gwB, kind: "gateway" },
  ],
  simulator: { appStartMs: 50 },
});

// start() resolves once both devices are nodes.
beforeAll(() => scene.start());
afterAll(() => scene.stop());

/** The URL devicelet logged for its metrics (the port is picked at start). */
const metricsUrl = () =>
  eventually(() => {
    const line = scene.devicelet
      .logLines()
      .find((l) => typeof l.url === "string" && String(l.msg).startsWith("metrics on"));
    if (!line) throw new Error("no metrics endpoint logged yet");
    return line.url as string;
  });

async function scrape(): Promise<Sample[]> {
  const res = await fetch(await metricsUrl(), { signal: AbortSignal.timeout(5_000) });
  expect(res.status).toBe(200);
  expect(res.headers.get("content-type")).toContain("text/plain");
  return parsePrometheus(await res.text());
}

/** Polls the endpoint until `check` passes on one scrape; returns that scrape. */
const scrapeUntil = (check: (samples: Sample[]) => void, timeoutMs = 60_000) =>
  eventually(
    async () => {
      const samples = await scrape();
      check(samples);
      return samples;
    },
    { timeoutMs },
  );

const podOn = (name: string, node: string) =>
  pod({
    namespace: ns,
    name,
    testId: id,
    node,
    spec: `  containers:\n    - { name: app, image: example/app:1 }`,
  });

const sum = sampleSum;

/** Asks for a restart of the pod's apps (providers/mqtt/restart.ts): one command per app. */
const requestRestart = (name: string, token: string, ttlSeconds: number) =>
  kubectl([
    "annotate",
    "pod",
    name,
    "-n",
    ns,
    "--overwrite",
    `devicelet.dev/restart-requested=${token}`,
    `devicelet.dev/restart-ttl-seconds=${String(ttlSeconds)}`,
  ]);

describe("devicelet metrics", () => {
  it("exports the engine's and the provider's series from the start", async () => {
    const samples = await scrapeUntil((s) => {
      expect(sum(s, "devicelet_nodes", { condition: "Ready", status: "True" })).toBe(2);
      expect(sum(s, "devicelet_node_lease_renew_seconds_count")).toBeGreaterThanOrEqual(2);
    });
    expect(sum(samples, "devicelet_nodes", { condition: "DeviceConnected", status: "True" })).toBe(2);
    expect(sum(samples, "devicelet_leader")).toBe(1);
    expect(sum(samples, "devicelet_broker_connected")).toBe(1);
    expect(sum(samples, "devicelet_api_requests_total", { verb: "create" })).toBeGreaterThan(0);
    expect(sum(samples, "devicelet_api_requests_total", { verb: "watch", code: "200" })).toBeGreaterThan(0);
    expect(sum(samples, "devicelet_api_budget_wait_seconds_count", { lane: "default" })).toBeGreaterThan(0);
    expect(sum(samples, "devicelet_api_budget_wait_seconds_count", { lane: "heartbeat" })).toBeGreaterThan(0);
    expect(sum(samples, "devicelet_device_pending_changes")).toBe(0);
    expect(sum(samples, "devicelet_devices_out_of_sync")).toBe(0);
    expect(sum(samples, "devicelet_commands_queued")).toBe(0);
    expect(samples.some((s) => s.name === "devicelet_process_cpu_seconds_total")).toBe(true);
    // Never a series per device or pod.
    const labelValues = samples.flatMap((s) => Object.values(s.labels));
    expect(labelValues.filter((v) => v.includes(id))).toEqual([]);
    // Only /metrics.
    const other = (await metricsUrl()).replace(/\/metrics$/, "/healthz");
    expect((await fetch(other)).status).toBe(404);
  });

  it("counts a pod's way to Running: pods by phase, bound-to-Running, delivery and apply", async () => {
    const before = await scrape();
    await apply(podOn("p1", gwA));
    const after = await scrapeUntil((s) => {
      expect(sum(s, "devicelet_pods", { phase: "Running" })).toBe(
        sum(before, "devicelet_pods", { phase: "Running" }) + 1,
      );
      expect(sum(s, "devicelet_pod_start_seconds_count")).toBe(
        sum(before, "devicelet_pod_start_seconds_count") + 1,
      );
      expect(sum(s, "devicelet_desired_apply_seconds_count")).toBeGreaterThan(
        sum(before, "devicelet_desired_apply_seconds_count"),
      );
    });
    expect(sum(after, "devicelet_desired_delivery_seconds_count")).toBeGreaterThan(
      sum(before, "devicelet_desired_delivery_seconds_count"),
    );
    // Bound to Running took seconds, not minutes; the device applied within a minute of issue.
    expect(sum(after, "devicelet_pod_start_seconds_bucket", { le: "60" })).toBe(
      sum(after, "devicelet_pod_start_seconds_count"),
    );
    expect(sum(after, "devicelet_api_requests_total", { verb: "patch" })).toBeGreaterThan(
      sum(before, "devicelet_api_requests_total", { verb: "patch" }),
    );
  });

  it("shows a change pending for a device that is away, until it is back and applied", async () => {
    await scene.device(gwB).goOffline();
    await scrapeUntil(
      (s) => expect(sum(s, "devicelet_nodes", { condition: "DeviceConnected", status: "False" })).toBe(1),
      30_000,
    );
    await apply(podOn("p2", gwB));
    const away = await scrapeUntil((s) => {
      expect(sum(s, "devicelet_device_pending_changes")).toBe(1);
      expect(sum(s, "devicelet_devices_out_of_sync")).toBe(1);
    });
    expect(sum(away, "devicelet_pods", { phase: "Pending" })).toBe(1);

    await scene.device(gwB).goOnline();
    await scrapeUntil((s) => {
      expect(sum(s, "devicelet_device_pending_changes")).toBe(0);
      expect(sum(s, "devicelet_devices_out_of_sync")).toBe(0);
      expect(sum(s, "devicelet_nodes", { condition: "DeviceConnected", status: "True" })).toBe(2);
      expect(sum(s, "devicelet_pods", { phase: "Running" })).toBe(2);
    });
  });

  it("counts commands waiting for a device that is away, expired or delivered", async () => {
    await scene.device(gwB).goOffline();
    await scrapeUntil(
      (s) => expect(sum(s, "devicelet_nodes", { condition: "DeviceConnected", status: "False" })).toBe(1),
      30_000,
    );
    const before = await scrape();
    expect(sum(before, "devicelet_commands_queued")).toBe(0);

    // A restart of p2's app while its device is away: the command waits for it.
    await requestRestart("p2", "expires", 600);
    await scrapeUntil((s) => expect(sum(s, "devicelet_commands_queued")).toBe(1));
    // Its time to live cut to 1 s, counted from the request: that has passed, so it expires unsent.
    await requestRestart("p2", "expires", 1);
    await scrapeUntil((s) => {
      expect(sum(s, "devicelet_commands_expired_total")).toBe(
        sum(before, "devicelet_commands_expired_total") + 1,
      );
      expect(sum(s, "devicelet_commands_queued")).toBe(0);
    });

    // Another one waits too, and leaves the queue once the device is back and has run it.
    await requestRestart("p2", "delivered", 600);
    await scrapeUntil((s) => expect(sum(s, "devicelet_commands_queued")).toBe(1));
    await scene.device(gwB).goOnline();
    const back = await scrapeUntil((s) => {
      expect(sum(s, "devicelet_nodes", { condition: "DeviceConnected", status: "True" })).toBe(2);
      expect(sum(s, "devicelet_commands_queued")).toBe(0);
    });
    expect(sum(back, "devicelet_commands_expired_total")).toBe(
      sum(before, "devicelet_commands_expired_total") + 1,
    );
    // Run, not dropped: the app was restarted once (the expired request never reached it).
    await eventually(async () => {
      const p2 = await getJson<PodJson>(["pod", "p2", "-n", ns]);
      expect(p2.status.containerStatuses?.[0]?.restartCount).toBe(1);
    });
  });

  it("counts a device's malformed message by reason", async () => {
    const before = await scrape();
    await scene.device(gwA).publishRaw("reported", "{ this is not json");
    await scrapeUntil((s) =>
      expect(sum(s, "devicelet_device_messages_rejected_total", { reason: "not-json" })).toBe(
        sum(before, "devicelet_device_messages_rejected_total", { reason: "not-json" }) + 1,
      ),
    );
  });

  it("shows the broker connection go and come back", async () => {
    await scene.broker.stop();
    await scrapeUntil((s) => expect(sum(s, "devicelet_broker_connected")).toBe(0), 30_000);
    await scene.broker.start();
    await scrapeUntil((s) => expect(sum(s, "devicelet_broker_connected")).toBe(1), 30_000);
  });
});
