/**
 * What the soak records while it runs, for the audit (soak-audit.ts):
 * - every desired document published for the fleet, seen by an observer on the broker (a
 *   persistent session, so documents published while it reconnects are queued for it);
 * - every apply of every simulated device and the pods each runs, sampled from the simulator;
 * - node Ready conditions (a node watch, plus a list every few seconds), once armed;
 * - pod deletions, DisruptionTarget conditions, and taint-manager eviction Events.
 *
 *   const recorder = await startRecorder({ kubeconfig, namespace, nodeSelector, brokerUrl, sim });
 *   recorder.armReady();     // once every node was Ready at the start
 *   await recorder.stop();   // then read recorder.records
 */
import { setTimeout as sleep } from "node:timers/promises";
import mqtt from "mqtt";
import pino from "pino";
import { createKubeClient, Informer, type CoreEvent, type Node, type Pod } from "../src/kube/index.ts";
import type { Simulator } from "../src/device/simulator.ts";
import type { DesiredDocument } from "../src/protocol/types.ts";
import { TOPIC_ROOT } from "../src/protocol/topics.ts";
import {
  summarizeDesired,
  type ApplyRecord,
  type DesiredSeen,
  type Eviction,
  type ReadySample,
  type RunningSample,
} from "./soak-audit.ts";

export interface RecorderOptions {
  /** Admin kubeconfig of the control plane. */
  readonly kubeconfig: string;
  readonly namespace: string;
  /** Label selector of the soak's nodes. */
  readonly nodeSelector: string;
  readonly brokerUrl: string;
  /** Observer client id (a persistent session on the broker). */
  readonly clientId: string;
  readonly sim: Simulator;
  /** Device sampling period; default 250 ms. */
  readonly sampleMs?: number;
  /** Node list period; default 3 s. */
  readonly nodeListMs?: number;
}

export interface Recorded {
  readonly desired: DesiredSeen[];
  readonly applies: ApplyRecord[];
  readonly running: RunningSample[];
  readonly deleted: Set<string>;
  readonly ready: ReadySample[];
  readonly evictions: Eviction[];
  /** Desired messages the observer could not read. */
  unreadable: number;
}

export interface Recorder {
  readonly records: Recorded;
  /** Start counting nodes that are not Ready (call once all were Ready). */
  armReady(): void;
  /** Samples the devices once more, then stops everything it started. */
  stop(): Promise<void>;
}

export async function startRecorder(o: RecorderOptions): Promise<Recorder> {
  const controller = new AbortController();
  const { signal } = controller;
  const logger = pino({ level: "silent" });
  const records: Recorded = {
    desired: [],
    applies: [],
    running: [],
    deleted: new Set(),
    ready: [],
    evictions: [],
    unreadable: 0,
  };
  // Functions and a holder: TypeScript would keep these narrowed across the awaits below.
  const flags = { armed: false };
  const stopped = () => signal.aborted;

  // Desired documents: QoS 1 on a persistent session, so a reconnect loses nothing.
  const seenKeys = new Set<string>();
  const observer = mqtt.connect(o.brokerUrl, {
    clientId: o.clientId,
    clean: false,
    protocolVersion: 5,
    properties: { sessionExpiryInterval: 24 * 3600 },
    reconnectPeriod: 250,
  });
  observer.on("error", () => undefined);
  observer.on("connect", () => {
    observer.subscribe(`${TOPIC_ROOT}/+/desired`, { qos: 1 }, () => undefined);
  });
  observer.on("message", (topic, payload) => {
    if (payload.length === 0 || !topic.endsWith("/desired")) return;
    try {
      const doc = JSON.parse(payload.toString("utf8")) as DesiredDocument | { kind?: undefined };
      if (doc.kind !== "desired") return;
      const seen = summarizeDesired(doc, Date.now());
      const key = `${seen.device}/${seen.epoch}/${seen.generation}/${seen.contentKey}`;
      if (seenKeys.has(key)) return;
      seenKeys.add(key);
      records.desired.push(seen);
    } catch {
      records.unreadable++;
    }
  });

  // Devices: new applies and the pods running, whenever they change.
  const appliedSoFar = new Map<string, number>();
  const lastRunning = new Map<string, string>();
  const sampleDevices = () => {
    const at = Date.now();
    for (const d of o.sim.devices.values()) {
      const applied = d.appliedGenerations;
      for (let i = appliedSoFar.get(d.id) ?? 0; i < applied.length; i++) {
        const g = applied[i];
        if (g) records.applies.push({ device: d.id, epoch: g.epoch, generation: g.generation, at });
      }
      appliedSoFar.set(d.id, applied.length);
      const uids = d.runningPods().sort();
      const key = uids.join(",");
      if (lastRunning.get(d.id) === key) continue;
      lastRunning.set(d.id, key);
      records.running.push({ device: d.id, at, uids });
    }
  };
  const sampling = (async () => {
    while (!stopped()) {
      sampleDevices();
      await sleep(o.sampleMs ?? 250, undefined, { signal }).catch(() => undefined);
    }
  })();

  const kube = createKubeClient({ kubeconfigPath: o.kubeconfig, qps: 50, burst: 100, logger });
  const sampleNode = (node: Node) => {
    if (!flags.armed) return;
    const c = node.status?.conditions?.find((x) => x.type === "Ready");
    records.ready.push({
      node: node.metadata?.name ?? "",
      ready: c?.status === "True",
      at: Date.now(),
      detail: c ? `Ready=${c.status} ${c.reason ?? ""}: ${c.message ?? ""}` : "no Ready condition",
    });
  };
  const nodes = new Informer<Node>({
    client: kube,
    logger,
    path: "/api/v1/nodes",
    labelSelector: o.nodeSelector,
  });
  nodes.onAdd(sampleNode);
  nodes.onUpdate(sampleNode);
  const listing = (async () => {
    while (!stopped()) {
      await sleep(o.nodeListMs ?? 3_000, undefined, { signal }).catch(() => undefined);
      if (!flags.armed || stopped()) continue;
      try {
        for (const node of (await kube.listNodes(o.nodeSelector, { signal })).items) sampleNode(node);
      } catch {
        // API server down: the watch and the next list catch up.
      }
    }
  })();

  const pods = new Informer<Pod>({ client: kube, logger, path: `/api/v1/namespaces/${o.namespace}/pods` });
  const seePod = (pod: Pod) => {
    const uid = pod.metadata?.uid ?? "";
    if (pod.metadata?.deletionTimestamp) records.deleted.add(uid);
    const disruption = pod.status?.conditions?.find(
      (c) => c.type === "DisruptionTarget" && c.status === "True",
    );
    if (disruption) records.evictions.push({ uid, why: `DisruptionTarget ${disruption.reason ?? ""}` });
  };
  pods.onAdd(seePod);
  pods.onUpdate(seePod);
  pods.onDelete((pod) => records.deleted.add(pod.metadata?.uid ?? ""));

  const events = new Informer<CoreEvent>({
    client: kube,
    logger,
    path: `/api/v1/namespaces/${o.namespace}/events`,
  });
  const seeEvent = (e: CoreEvent) => {
    const evicting =
      (e.reason === "TaintManagerEviction" && e.message?.startsWith("Marking for deletion") === true) ||
      e.reason === "Evicted";
    if (evicting && e.involvedObject.uid)
      records.evictions.push({ uid: e.involvedObject.uid, why: `${e.reason ?? ""}: ${e.message ?? ""}` });
  };
  events.onAdd(seeEvent);
  events.onUpdate(seeEvent);

  const informers = [nodes, pods, events];
  const loops = informers.map((i) => i.start(signal));
  await Promise.all(informers.map((i) => i.ready));

  return {
    records,
    armReady() {
      flags.armed = true;
      for (const node of nodes.list()) sampleNode(node);
    },
    async stop() {
      sampleDevices();
      controller.abort();
      await Promise.all([sampling, listing, ...loops]);
      await observer.endAsync(true);
    },
  };
}
