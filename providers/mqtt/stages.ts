/**
 * Stages: what the MQTT provider tells Kubernetes of each pod's way onto its device, and of each
 * device's sync with its desired state.
 *
 * Pod Events (docs/protocol.md § Pod Events), each once per stage per version of the pod (its
 * device hash), whatever number of times the device's state is looked at:
 * - `Queued`: the device is not online, the change waits in its retained desired document;
 * - `Delivered`: the device acknowledged `received` for the document that carries the change;
 * - `Applied`: the device acknowledged `applied` (or reported it applied);
 * - `Started`: the device reports a container running, one per container and start (`series`
 *   keeps containers apart, as the kubelet's Started per container);
 * - `Rejected` (Warning): the device refused the document that carries the change, with its reason;
 * - `TombstoneConfirmed`: the device's report confirms a deleted pod gone ({@link tombstoneConfirmed}).
 * Only what this process sees happen is told: a pod first met in a document read back at start
 * (an earlier process's) has the stages it already reached taken as told. Stages are looked at when
 * the device's pod statuses are (StatusCoalescer), so they cost no extra pass over the devices.
 *
 * Device sync ({@link DeviceSync}, the engine's `DeviceInSync` condition): the generation of the
 * document the broker holds for the device against the newest one it applied in that epoch;
 * `behindSince` is when this process first saw it behind. Listeners are told when it changes.
 *
 *   const stages = new Stages({ desired, registry, observations, recordEvent, syncChanged, now });
 *   stages.expect(uid, hash);     // a change this process made: its stages are told
 *   stages.observe("gw-1");       // after acks, reports, presence or a publish
 *   stages.sync("gw-1");          // { desiredGeneration: 7, appliedGeneration: 6, behindSince }
 */
import type { ReportedPod } from "../../src/protocol/types.ts";
import type { DeviceSync, PodRef, ProviderEvent } from "../../src/provider/types.ts";
import type { DesiredStore, PodEntry } from "./desired.ts";
import type { DeviceRegistry } from "./devices.ts";
import { appliedOf, deliveryOf, type DeviceObservation, type Observations } from "./observations.ts";

/** Event reasons of the stages (docs/protocol.md § Pod Events). */
export const StageReason = {
  Queued: "Queued",
  Delivered: "Delivered",
  Applied: "Applied",
  Started: "Started",
  Rejected: "Rejected",
  TombstoneConfirmed: "TombstoneConfirmed",
} as const;

export interface StagesOptions {
  readonly desired: Pick<DesiredStore, "device">;
  readonly registry: Pick<DeviceRegistry, "effectivePresence">;
  readonly observations: Pick<Observations, "get">;
  readonly recordEvent: (event: ProviderEvent) => void;
  /** The device's {@link Stages.sync} may have changed. */
  readonly syncChanged: (deviceId: string) => void;
  readonly now: () => Date;
}

interface PodStages {
  readonly hash: string;
  /** Stages already told (or taken as told) for this hash. */
  readonly told: Set<string>;
  /** A pod first met in a read-back document: its current stages are taken as told, silently. */
  baseline: boolean;
}

interface SyncState {
  readonly value: DeviceSync;
  readonly signature: string;
}

export class Stages {
  readonly #o: StagesOptions;
  /** Per device, per pod uid. */
  readonly #pods = new Map<string, Map<string, PodStages>>();
  readonly #sync = new Map<string, SyncState>();

  constructor(options: StagesOptions) {
    this.#o = options;
  }

  /** This process changed the pod's content on its device: every stage of `hash` is told. */
  expect(deviceId: string, uid: string, hash: string): void {
    const pods = this.#podsOf(deviceId);
    if (pods.get(uid)?.hash === hash) return;
    pods.set(uid, { hash, told: new Set(), baseline: false });
  }

  /** Tells the stages the device's pods reached since last looked at, and its sync change. */
  observe(deviceId: string): void {
    const d = this.#o.desired.device(deviceId);
    const observation = this.#o.observations.get(deviceId);
    const presence = this.#o.registry.effectivePresence(deviceId);
    const pods = this.#podsOf(deviceId);
    for (const uid of pods.keys()) if (!d?.pods.has(uid)) pods.delete(uid);
    for (const entry of d?.pods.values() ?? [])
      this.#observePod(deviceId, pods, entry, observation, presence);
    if (pods.size === 0) this.#pods.delete(deviceId);
    this.#observeSync(deviceId, d, observation);
  }

  /** The device's sync; undefined while it never reported and nothing was published for it. */
  sync(deviceId: string): DeviceSync | undefined {
    return this.#sync.get(deviceId)?.value;
  }

  /** The device's report confirmed the pod gone (the tombstone is cleared). */
  tombstoneConfirmed(deviceId: string, ref: PodRef, generation: number | undefined): void {
    this.#pods.get(deviceId)?.delete(ref.uid);
    this.#o.recordEvent({
      involved: { kind: "Pod", pod: ref, deviceId },
      type: "Normal",
      reason: StageReason.TombstoneConfirmed,
      message:
        generation === undefined
          ? `device ${deviceId} confirmed the pod's apps are stopped and gone`
          : `device ${deviceId} confirmed the pod's apps are stopped and gone (generation ${generation})`,
    });
  }

  #podsOf(deviceId: string): Map<string, PodStages> {
    let pods = this.#pods.get(deviceId);
    if (!pods) {
      pods = new Map();
      this.#pods.set(deviceId, pods);
    }
    return pods;
  }

  #observePod(
    deviceId: string,
    pods: Map<string, PodStages>,
    entry: PodEntry,
    observation: DeviceObservation | undefined,
    presence: string,
  ): void {
    // Held back by this process: the pod's status says why; no stage applies.
    if (entry.blocked) return;
    const hash = entry.desired.hash;
    let s = pods.get(entry.ref.uid);
    if (s?.hash !== hash) {
      s = { hash, told: new Set(), baseline: true };
      pods.set(entry.ref.uid, s);
    }
    const state = s;
    const tell = (key: string, event: Omit<ProviderEvent, "involved">) => {
      if (state.told.has(key)) return;
      state.told.add(key);
      if (!state.baseline)
        this.#o.recordEvent({ involved: { kind: "Pod", pod: entry.ref, deviceId }, ...event });
    };
    const normal = (reason: string, message: string) => tell(reason, { type: "Normal", reason, message });
    const generation = entry.since ? ` (generation ${entry.since.generation})` : "";
    const { delivery, rejection } = deliveryOf(entry.since, observation);
    if (delivery === "queued" && presence !== "online") {
      normal(
        StageReason.Queued,
        `device ${deviceId} is ${presence}; the change waits in its desired document${generation}`,
      );
    }
    if (delivery === "received" || delivery === "applied") {
      normal(StageReason.Delivered, `device ${deviceId} received its desired document${generation}`);
    }
    if (delivery === "applied") {
      normal(StageReason.Applied, `device ${deviceId} applied its desired document${generation}`);
    }
    if (delivery === "rejected") {
      const why = rejection ? `${rejection.reason}: ${rejection.message}` : "no reason given";
      tell(`${StageReason.Rejected}${generation}`, {
        type: "Warning",
        reason: StageReason.Rejected,
        message: `device ${deviceId} rejected its desired document${generation}: ${why}`,
      });
    }
    const reported = observation?.report?.pods.find((p: ReportedPod) => p.uid === entry.ref.uid);
    if (reported?.hash === hash) {
      for (const app of reported.apps) {
        if (app.status.state !== "running") continue;
        tell(`${StageReason.Started}\u0000${app.name}\u0000${app.status.startedAt}`, {
          type: "Normal",
          reason: StageReason.Started,
          message: `Started container ${app.name}`,
          series: app.name,
        });
      }
    }
    // From the next look on, what changes is news.
    state.baseline = false;
  }

  #observeSync(
    deviceId: string,
    d: ReturnType<StagesOptions["desired"]["device"]>,
    observation: DeviceObservation | undefined,
  ): void {
    const published = d?.published;
    if (!published && !observation?.report) {
      // Nothing known (again, for a device decommissioned): Unknown.
      if (this.#sync.delete(deviceId)) this.#o.syncChanged(deviceId);
      return;
    }
    const desiredGeneration = published?.generation ?? 0;
    const acks = published && observation?.acks?.epoch === published.epoch ? observation.acks : undefined;
    const report =
      published && observation?.report?.epoch === published.epoch ? observation.report : undefined;
    const appliedGeneration = published ? Math.max(acks?.applied ?? 0, report ? appliedOf(report) : 0) : 0;
    const { delivery, rejection } = published
      ? deliveryOf({ epoch: published.epoch, generation: published.generation }, observation)
      : { delivery: "applied" as const, rejection: undefined };
    const behind = appliedGeneration < desiredGeneration;
    const previous = this.#sync.get(deviceId)?.value;
    const behindSince = behind ? (previous?.behindSince ?? this.#o.now()) : undefined;
    const value: DeviceSync = {
      desiredGeneration,
      appliedGeneration,
      ...(behindSince ? { behindSince } : {}),
      ...(delivery === "rejected" && rejection
        ? { rejected: { generation: desiredGeneration, ...rejection } }
        : {}),
    };
    const signature = JSON.stringify(value);
    if (this.#sync.get(deviceId)?.signature === signature) return;
    this.#sync.set(deviceId, { value, signature });
    this.#o.syncChanged(deviceId);
  }
}
