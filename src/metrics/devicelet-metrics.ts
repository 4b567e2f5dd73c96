/**
 * {@link DeviceletMetrics}: every Prometheus series devicelet exports, in a registry of its own
 * (never prom-client's global one, so several engines in one process do not clash). Three kinds of
 * input feed it:
 * - events, counted or timed as they happen: API answers and budget waits (through the
 *   {@link RequestBudget} observers), node Lease renewals, a pod's first Running, and the
 *   provider's {@link ProviderMetrics} calls;
 * - state, read at scrape time from the caches the controllers keep anyway (nodes by condition,
 *   pods by phase and reason) and from the provider's gauges: nothing to keep in step;
 * - set values: leader status.
 *
 * Labels are bounded: verbs, HTTP codes, lanes, node condition types, pod phases and reasons, and
 * rejection reasons; never a node, pod or device name. Free-form values that could grow without
 * bound (a device's rejection reason, a pod reason a device made up) are capped (`labels.ts`).
 *
 *   const metrics = new DeviceletMetrics();
 *   metrics.observeBudget(kube.budget, "default");
 *   metrics.watchNodes(() => nodes.servedNodes());
 *   await metrics.registry.metrics();   // Prometheus text
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";
import type { KubeClient, Node, Pod, PodStatus } from "../kube/index.ts";
import type { RequestBudget } from "../kube/budget.ts";
import type { ProviderGauges, ProviderMetrics } from "../provider/types.ts";
import type { PodStartStage } from "../pod/start-trace.ts";
import { readHeapUse } from "./heap.ts";
import { BoundedLabel, podReason } from "./labels.ts";

/** The prefix of every series, prom-client's process metrics included. */
export const METRIC_PREFIX = "devicelet_";

/**
 * devicelet's own series (prom-client's process metrics aside), as docs/operations.md lists them
 * for operators: the registry must export each, and the chart's dashboard must show each.
 */
export const DEVICELET_SERIES = [
  "devicelet_nodes",
  "devicelet_pods",
  "devicelet_pod_start_seconds",
  "devicelet_pod_start_stage_seconds",
  "devicelet_desired_issue_seconds",
  "devicelet_desired_delivery_seconds",
  "devicelet_desired_apply_seconds",
  "devicelet_device_pending_changes",
  "devicelet_devices_out_of_sync",
  "devicelet_commands_queued",
  "devicelet_commands_expired_total",
  "devicelet_device_messages_rejected_total",
  "devicelet_device_reports_reread_total",
  "devicelet_api_requests_total",
  "devicelet_api_budget_wait_seconds",
  "devicelet_node_lease_renew_seconds",
  "devicelet_leader",
  "devicelet_broker_connected",
] as const;

/** The two request lanes of the Kubernetes client (src/kube/transport.ts). */
export type Lane = "default" | "heartbeat";

/** A pod start's stages inside devicelet: milliseconds when healthy, seconds when something waits. */
const STAGE_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

/** Device latencies run from a fraction of a second to hours (a device that was offline). */
const DEVICE_LATENCY_BUCKETS = [
  0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600,
];

export interface DeviceletMetricsOptions {
  /** prom-client's process metrics (CPU, memory, event loop, GC) under `devicelet_`; default true. */
  readonly processMetrics?: boolean;
}

export class DeviceletMetrics {
  /** Owned by this object; read it with `metrics()` or serve it (server.ts). */
  readonly registry = new Registry();
  /** What the engine hands the provider as `ProviderContext.metrics`. */
  readonly provider: ProviderMetrics;
  readonly #apiRequests: Counter<"verb" | "code">;
  readonly #budgetWait: Histogram<"lane">;
  readonly #leaseRenew: Histogram;
  readonly #podStart: Histogram;
  readonly #podStartStage: Histogram<"stage">;
  readonly #leader: Gauge;
  #nodes: () => Iterable<Node> = () => [];
  #pods: () => Iterable<Pod> = () => [];

  constructor(options: DeviceletMetricsOptions = {}) {
    const registers = [this.registry];
    if (options.processMetrics ?? true) {
      collectDefaultMetrics({ register: this.registry, prefix: METRIC_PREFIX });
      // Beside prom-client's heap size: how near it is to the end (src/metrics/heap.ts).
      new Gauge({
        name: "devicelet_nodejs_heap_size_limit_bytes",
        help: "The most JavaScript heap V8 holds before the process dies (sized from the memory limit).",
        registers,
        collect() {
          this.set(readHeapUse().limit);
        },
      });
    }
    this.#apiRequests = new Counter({
      name: "devicelet_api_requests_total",
      help: "Requests to the Kubernetes API server by verb and HTTP code (`error`: no answer).",
      labelNames: ["verb", "code"],
      registers,
    });
    this.#budgetWait = new Histogram({
      name: "devicelet_api_budget_wait_seconds",
      help: "Time a request waited for a token of its lane's rate limit (api.qps/burst or api.heartbeatQps/Burst).",
      labelNames: ["lane"],
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    });
    this.#leaseRenew = new Histogram({
      name: "devicelet_node_lease_renew_seconds",
      help: "Duration of each successful node Lease renewal, conflict retries included.",
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.#podStart = new Histogram({
      name: "devicelet_pod_start_seconds",
      help: "Time from a pod being bound to a device's node to devicelet first reporting it Running.",
      buckets: [0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800],
      registers,
    });
    this.#podStartStage = new Histogram({
      name: "devicelet_pod_start_stage_seconds",
      help:
        "Where a pod start spends its time in devicelet, by stage: watch (bound to seen by the pod " +
        "watch), queue (seen to handed to " +
        "the provider), provider (its createPod call), device (handed to the provider until it " +
        "reports Running; overlaps provider), status (until that Running status is written).",
      labelNames: ["stage"],
      buckets: STAGE_BUCKETS,
      registers,
    });
    this.#leader = new Gauge({
      name: "devicelet_leader",
      help: "1 while this replica leads (or leader election is off), 0 while it stands by.",
      registers,
    });
    const nodes = () => this.#nodes();
    new Gauge({
      name: "devicelet_nodes",
      help: "Nodes this devicelet serves, by condition type and status.",
      labelNames: ["condition", "status"],
      registers,
      collect() {
        const counts = new Tally("condition", "status");
        for (const node of nodes()) {
          for (const c of node.status?.conditions ?? []) counts.add(c.type, c.status);
        }
        counts.setOn(this);
      },
    });
    const pods = () => this.#pods();
    const reasons = new BoundedLabel({ max: 32, other: "Other" });
    new Gauge({
      name: "devicelet_pods",
      help: "Pods on this devicelet's nodes, by phase and reason (a container's waiting reason while Pending).",
      labelNames: ["phase", "reason"],
      registers,
      collect() {
        const counts = new Tally("phase", "reason");
        for (const pod of pods()) counts.add(pod.status?.phase ?? "Pending", reasons.of(podReason(pod)));
        counts.setOn(this);
      },
    });
    this.provider = providerMetrics(this.registry);
  }

  /**
   * Counts `budget`'s waits under `lane`, and the answers it records by verb and code (the default
   * lane's budget records the answers of both lanes). Returns the function that stops it.
   */
  observeBudget(budget: RequestBudget, lane: Lane): () => void {
    return budget.observe({
      waited: (seconds) => this.#budgetWait.observe({ lane }, seconds),
      ...(lane === "default"
        ? { answered: (verb: string, code: string) => this.#apiRequests.inc({ verb, code }) }
        : {}),
    });
  }

  /**
   * Observes both lanes of `kube` ({@link observeBudget}) until `signal` aborts (a client passed in
   * may outlive this engine).
   */
  observeKube(kube: Pick<KubeClient, "budget" | "heartbeatBudget">, signal: AbortSignal): void {
    const stops = [this.observeBudget(kube.budget, "default")];
    if (kube.heartbeatBudget !== kube.budget)
      stops.push(this.observeBudget(kube.heartbeatBudget, "heartbeat"));
    signal.addEventListener("abort", () => stops.forEach((stop) => stop()), { once: true });
  }

  /** One successful node Lease renewal took `seconds`. */
  leaseRenewed(seconds: number): void {
    this.#leaseRenew.observe(seconds);
  }

  /**
   * A pod was first reported Running at `now`: observes the time since it was bound, read from its
   * PodScheduled condition (the scheduler's bind), else its creation (a pod created with
   * `spec.nodeName`). Skipped when neither is known.
   */
  podRunning(pod: Pod, status: PodStatus, now: Date): void {
    const scheduled = status.conditions?.find((c) => c.type === "PodScheduled" && c.status === "True");
    const since = scheduled?.lastTransitionTime ?? pod.metadata?.creationTimestamp;
    if (since === undefined) return;
    const seconds = (now.getTime() - new Date(since).getTime()) / 1000;
    if (Number.isFinite(seconds)) this.#podStart.observe(Math.max(0, seconds));
  }

  /** One stage of a pod start (src/pod/start-trace.ts). */
  podStartStage(stage: PodStartStage, seconds: number): void {
    if (Number.isFinite(seconds)) this.#podStartStage.observe({ stage }, Math.max(0, seconds));
  }

  /** Whether this replica leads now; 1 from the start (leader election off). */
  setLeader(leading: boolean): void {
    this.#leader.set(leading ? 1 : 0);
  }

  /** Where `devicelet_nodes` reads the served Nodes at each scrape. */
  watchNodes(source: () => Iterable<Node>): void {
    this.#nodes = source;
  }

  /** Where `devicelet_pods` reads the managed pods at each scrape. */
  watchPods(source: () => Iterable<Pod>): void {
    this.#pods = source;
  }
}

/**
 * Counts by two labels, set on a gauge in one step per pair seen: a gauge's `inc` hashes its
 * labels at every call, and a scrape counted 10,000 pods that way.
 */
class Tally<A extends string, B extends string> {
  readonly #counts = new Map<string, Map<string, number>>();
  readonly #first: A;
  readonly #second: B;

  constructor(first: A, second: B) {
    this.#first = first;
    this.#second = second;
  }

  add(a: string, b: string): void {
    let row = this.#counts.get(a);
    if (!row) this.#counts.set(a, (row = new Map<string, number>()));
    row.set(b, (row.get(b) ?? 0) + 1);
  }

  /** Replaces every series of `gauge` with these counts. */
  setOn(gauge: Gauge<A | B>): void {
    gauge.reset();
    for (const [a, row] of this.#counts) {
      for (const [b, n] of row)
        gauge.set({ [this.#first]: a, [this.#second]: b } as Record<A | B, string>, n);
    }
  }
}

/** The provider's metrics; the gauges join the registry when the provider observes them. */
function providerMetrics(registry: Registry): ProviderMetrics {
  const registers = [registry];
  const issued = new Histogram({
    name: "devicelet_desired_issue_seconds",
    help:
      "Time from the first change a desired document carries to the document being issued " +
      "(the provider's debounce, reserving generations, waiting for the transport).",
    buckets: STAGE_BUCKETS,
    registers,
  });
  const delivered = new Histogram({
    name: "devicelet_desired_delivery_seconds",
    help: "Time from a desired document being issued to its device acknowledging receipt.",
    buckets: DEVICE_LATENCY_BUCKETS,
    registers,
  });
  const applied = new Histogram({
    name: "devicelet_desired_apply_seconds",
    help: "Time from a desired document being issued to its device reporting it applied.",
    buckets: DEVICE_LATENCY_BUCKETS,
    registers,
  });
  const rejected = new Counter({
    name: "devicelet_device_messages_rejected_total",
    help: "Messages from devices refused, by reason (malformed, oversized, from an unknown topic, ...).",
    labelNames: ["reason"],
    registers,
  });
  const expired = new Counter({
    name: "devicelet_commands_expired_total",
    help: "Commands for devices that expired before their device ran them.",
    registers,
  });
  const reread = new Counter({
    name: "devicelet_device_reports_reread_total",
    help: "Devices whose last state the provider asked its transport for again, their reports believed lost on the way.",
    registers,
  });
  const reasons = new BoundedLabel({ max: 32, other: "other", pattern: /^[a-z0-9][a-z0-9-]{0,39}$/ });
  let gauges: ProviderGauges = {};
  const gauge = (name: string, help: string, read: (g: ProviderGauges) => number | undefined) => ({
    name,
    metric: new Gauge({
      name,
      help,
      registers: [],
      collect() {
        const value = read(gauges);
        if (value !== undefined) this.set(value);
      },
    }),
  });
  const provided = {
    pendingChanges: gauge(
      "devicelet_device_pending_changes",
      "Changes (pods, deletions) devices have not applied yet, summed over devices.",
      (g) => g.pendingChanges?.(),
    ),
    devicesOutOfSync: gauge(
      "devicelet_devices_out_of_sync",
      "Devices that have not applied their desired state yet, or rejected it.",
      (g) => g.devicesOutOfSync?.(),
    ),
    commandsQueued: gauge(
      "devicelet_commands_queued",
      "Commands waiting for their device (queued, or sent and awaiting a result).",
      (g) => g.commandsQueued?.(),
    ),
    transportConnected: gauge(
      "devicelet_broker_connected",
      "1 while the provider is connected to its broker (or hub), else 0.",
      (g) => {
        const connected = g.transportConnected?.();
        return connected === undefined ? undefined : Number(connected);
      },
    ),
  } satisfies Record<keyof ProviderGauges, { name: string; metric: Gauge }>;
  return {
    desiredIssued: (seconds) => issued.observe(Math.max(0, seconds)),
    desiredDelivered: (seconds) => delivered.observe(Math.max(0, seconds)),
    desiredApplied: (seconds) => applied.observe(Math.max(0, seconds)),
    messageRejected: (reason) => rejected.inc({ reason: reasons.of(reason) }),
    commandExpired: () => expired.inc(),
    reportsReread: (devices) => reread.inc(Math.max(0, devices)),
    observe: (next) => {
      gauges = next;
      for (const [key, { name, metric }] of Object.entries(provided)) {
        const present = next[key as keyof ProviderGauges] !== undefined;
        const registered = registry.getSingleMetric(name) !== undefined;
        if (present && !registered) registry.registerMetric(metric);
        if (!present && registered) registry.removeSingleMetric(name);
      }
    },
  };
}
