/**
 * One engine-conformance suite's world: the harness control plane (reused when running), a
 * namespace and node names of its own, the configuration built through `parseConfig`, and the real
 * engine (`runEngine`) in this process with the target's provider, wrapped in a {@link CallRecorder}.
 *
 *   const suite = new EngineSuite(target, { controlPlaneDir });
 *   await suite.start();          // control plane, namespace, target.setUp, engine; every device a Ready node
 *   await suite.restartEngine();  // stop the engine, start another with a NEW provider from target.create
 *   await suite.stop();           // engine, target.tearDown, nodes, namespace, control plane if started here
 *
 * Everything it creates carries the suite's id (`kit-<8 hex>`): namespace, node-name prefix and
 * the `devicelet.dev/conformance` node label, so suites sharing a control plane never meet.
 */
import { randomBytes } from "node:crypto";
import pino from "pino";
import { parseConfig, type DeviceletConfig } from "../config/index.ts";
import { runEngine, type Engine } from "../engine.ts";
import type { PodLifecycleProvider, ProviderContext } from "../provider/types.ts";
import {
  defaultControlPlaneDir,
  startControlPlane,
  stopControlPlane,
  type ControlPlane,
} from "./controlplane/index.ts";
import { conditionOf, eventually, KitCluster } from "./engine-cluster.ts";
import { CallRecorder } from "./engine-recorder.ts";
import type { ProviderTarget } from "./target.ts";

export interface EngineConformanceOptions {
  /**
   * Where the harness control plane is recorded; default `$DEVICELET_TESTENV_DIR`, else `.testenv`
   * under the working directory. One running there is reused and left running; otherwise the
   * suite starts one and stops it afterwards.
   */
  readonly controlPlaneDir?: string;
  /**
   * Another identity and configuration for devicelet than the harness user's: called in the
   * suite's `beforeAll`, after the control plane is up and after any `beforeAll` registered before
   * `describeEngineConformance`, so a test can first install something (a Helm release) and hand
   * over its ServiceAccount's kubeconfig. `config` is merged over the suite's own configuration
   * (objects key by key; a value set here wins), e.g. the state namespace a release grants.
   */
  readonly devicelet?: () => Promise<DeviceletIdentity> | DeviceletIdentity;
}

export interface DeviceletIdentity {
  /** A kubeconfig file for devicelet to use. */
  readonly kubeconfig: string;
  readonly config?: Readonly<Record<string, unknown>>;
}

type Json = Record<string, unknown>;
const isObject = (v: unknown): v is Json => typeof v === "object" && v !== null && !Array.isArray(v);
/** `over` merged into `base`: objects key by key, anything else replaced. */
const mergeConfig = (base: Json, over: Readonly<Json>): Json => {
  const out = { ...base };
  for (const [k, v] of Object.entries(over)) {
    const b = out[k];
    out[k] = isObject(b) && isObject(v) ? mergeConfig(b, v) : v;
  }
  return out;
};

/** The node label every node of a suite carries: `devicelet.dev/conformance=<suite id>`. */
export const SUITE_LABEL = "devicelet.dev/conformance";

export interface RunningEngine<P> {
  readonly engine: Engine;
  /** The instance `target.create` returned (unwrapped), for `target.setDeviceOnline`. */
  readonly provider: P;
  /** What this engine asked of the provider, and what the provider said ran. */
  readonly recorder: CallRecorder;
}

export class EngineSuite<P extends PodLifecycleProvider> {
  readonly id = `kit-${randomBytes(4).toString("hex")}`;
  readonly namespace = this.id;
  readonly patienceMs: number;
  readonly #target: ProviderTarget<P>;
  readonly #dir: string;
  readonly #identity: EngineConformanceOptions["devicelet"];
  #controlPlane: ControlPlane | undefined;
  #cluster: KitCluster | undefined;
  #config: DeviceletConfig | undefined;
  #running: (RunningEngine<P> & { controller: AbortController }) | undefined;
  #nodes = new Map<string, string>();
  #namespaceCreated = false;
  #setUp = false;

  constructor(target: ProviderTarget<P>, options: EngineConformanceOptions = {}) {
    this.#target = target;
    this.#dir = options.controlPlaneDir ?? defaultControlPlaneDir();
    this.#identity = options.devicelet;
    this.patienceMs = target.patienceMs ?? 20_000;
  }

  get cluster(): KitCluster {
    return this.#cluster ?? this.#missing("cluster");
  }

  get config(): DeviceletConfig {
    return this.#config ?? this.#missing("config");
  }

  get running(): RunningEngine<P> {
    return this.#running ?? this.#missing("engine");
  }

  /** The node name of one of the target's devices. */
  nodeOf(deviceId: string): string {
    return this.#nodes.get(deviceId) ?? this.#missing(`node for device ${deviceId}`);
  }

  async start(): Promise<void> {
    this.#controlPlane = await startControlPlane({ dir: this.#dir });
    this.#cluster = new KitCluster(this.#controlPlane);
    await this.cluster.kubectl(["create", "namespace", this.namespace]);
    this.#namespaceCreated = true;
    const identity = await this.#identity?.();
    this.#config = parseConfig(
      JSON.stringify(
        mergeConfig(
          {
            kubeconfig: this.#controlPlane.deviceletKubeconfig,
            nodes: { namePrefix: `${this.id}-`, extraLabels: { [SUITE_LABEL]: this.id } },
            // Short timings: a lapsed lease or a missed update shows within the kit's patience.
            lease: { durationSeconds: 10, renewIntervalSeconds: 2 },
            nodeStatus: { maxIntervalSeconds: 10 },
            pods: { statusDebounceMs: 50, resyncIntervalMs: 5_000, maxRetryDelayMs: 2_000 },
            log: { level: "warn" },
            // The engine's durable store (ConfigMaps) lives with the suite, and goes with it.
            state: { namespace: this.namespace },
            // The scenarios are about pods and nodes; the kubelet API (and its certificate) is not theirs.
            kubelet: { serve: false },
            // Suites run side by side: health endpoints on a free loopback port each.
            health: { port: 0, bindAddress: "127.0.0.1" },
            metrics: { port: 0, bindAddress: "127.0.0.1" },
            // A type no schema is registered for: the target builds its provider itself.
            provider: { type: `conformance-kit-${this.#target.name}`, config: {} },
          },
          identity ? { ...identity.config, kubeconfig: identity.kubeconfig } : {},
        ),
      ),
      `engine conformance config (${this.#target.name})`,
    );
    this.#setUp = true;
    await this.#target.setUp?.();
    await this.startEngine();
    const devices = this.#target.devices;
    const nodes = await eventually(async () => {
      const found = await this.cluster.nodes(`${SUITE_LABEL}=${this.id}`);
      for (const node of found)
        if (conditionOf(node, "Ready")?.status !== "True") throw new Error(`${node.metadata.name} not Ready`);
      const byDevice = new Map(
        found.map((n) => [n.metadata.annotations?.["devicelet.dev/device-id"] ?? "", n.metadata.name]),
      );
      const missing = devices.filter((d) => !byDevice.has(d));
      if (missing.length > 0) throw new Error(`no Ready node yet for device(s) ${missing.join(", ")}`);
      return byDevice;
    }, 3 * this.patienceMs);
    this.#nodes = nodes;
  }

  /** Runs the engine with a new provider from `target.create`; resolves once the engine is ready. */
  async startEngine(): Promise<RunningEngine<P>> {
    if (this.#running) throw new Error("an engine is already running");
    const recorder = new CallRecorder();
    const controller = new AbortController();
    let provider: P | undefined;
    const engine = await runEngine(
      {
        config: this.config,
        createProvider: (context: ProviderContext) => {
          const created = this.#target.create(context);
          if (created instanceof Promise)
            throw new Error(
              `target ${this.#target.name}: the engine layer needs create() to return the provider itself, as a plugin's create does`,
            );
          provider = created;
          return recorder.wrap(created);
        },
        logger: pino({ level: process.env.DEVICELET_KIT_LOG_LEVEL ?? "warn" }),
        version: "conformance-kit",
      },
      controller.signal,
    );
    if (!provider) throw new Error("the engine started without creating a provider");
    this.#running = { engine, provider, recorder, controller };
    return this.#running;
  }

  /** Stops the engine as devicelet stops: abort its signal, await `done` (nodes are left in place). */
  async stopEngine(): Promise<void> {
    const running = this.#running;
    if (!running) return;
    this.#running = undefined;
    running.controller.abort();
    await running.engine.done;
  }

  /** Another devicelet process on the same durable state: a new engine and a new provider instance. */
  async restartEngine(): Promise<RunningEngine<P>> {
    await this.stopEngine();
    return this.startEngine();
  }

  /** Every step runs even when one fails; the first failure is thrown at the end. */
  async stop(): Promise<void> {
    const errors: unknown[] = [];
    const step = async (fn: () => Promise<unknown>) => {
      try {
        await fn();
      } catch (err) {
        errors.push(err);
      }
    };
    await step(() => this.stopEngine());
    if (this.#setUp) await step(async () => this.#target.tearDown?.());
    const cluster = this.#cluster;
    if (cluster) {
      await step(() =>
        cluster.kubectl(["delete", "nodes", "-l", `${SUITE_LABEL}=${this.id}`, "--wait=false"]),
      );
      if (this.#namespaceCreated)
        await step(() => cluster.kubectl(["delete", "namespace", this.namespace, "--wait=false"]));
    }
    if (this.#controlPlane && !this.#controlPlane.reused)
      await step(() => stopControlPlane({ dir: this.#dir }));
    if (errors.length > 0) throw errors[0];
  }

  /**
   * A pod for one device's node, placed by the real scheduler: a nodeSelector on the node's
   * hostname label and a toleration of the provider taint, no nodeName. `extra` is merged into spec.
   */
  podManifest(o: {
    name: string;
    deviceId: string;
    container?: Record<string, unknown>;
    spec?: Record<string, unknown>;
  }): string {
    return JSON.stringify({
      apiVersion: "v1",
      kind: "Pod",
      metadata: { name: o.name, namespace: this.namespace },
      spec: {
        nodeSelector: { "kubernetes.io/hostname": this.nodeOf(o.deviceId) },
        tolerations: [{ key: this.config.nodes.taintKey, operator: "Exists", effect: "NoSchedule" }],
        terminationGracePeriodSeconds: 2,
        containers: [{ name: "app", image: this.#target.image, ...o.container }],
        ...o.spec,
      },
    });
  }

  /** What the running provider holds for this suite's pods: uid → hash. */
  async providerPods(): Promise<Map<string, string>> {
    const held = await this.running.provider.listPods();
    return new Map(held.filter((p) => p.pod.namespace === this.namespace).map((p) => [p.pod.uid, p.hash]));
  }

  #missing(part: string): never {
    throw new Error(`engine conformance ${this.id}: no ${part} (start() not called, or it failed)`);
  }
}
