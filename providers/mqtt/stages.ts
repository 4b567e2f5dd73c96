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
 * With `podEvents.stages: notable` (the default) a healthy start costs no Event: `Delivered`,
 * `Applied` and a container's first `Started` are routine, told only for a pod that is slow — still
 * Pending (its status as pod-status.ts gives it: not Running, nor ended) `slowStageSeconds` after
 * this process first saw its version published with its device online (time away does not count). Then the routine stages it reached are told at once, each once, and the later
 * ones as they come; a pod Running in time never tells them. `Queued`, `Rejected`,
 * `TombstoneConfirmed` and a restart (a container's second and later start in the pod's life on
 * this process) are news, told always. A pod still being timed is looked at again when its time is
 * up (`lookAgain`, one timer per device), since a stuck device may send nothing more.
 * `podEvents.stages: all` tells every stage as it comes.
 *
 * Device sync ({@link DeviceSync}, the engine's `DeviceInSync` condition): the generation of the
 * document the broker holds for the device against the newest one it applied in that epoch;
 * `behindSince` is when this process first saw it behind. Listeners are told when it changes.
 *
 *   const stages = new Stages({ desired, registry, observations, recordEvent, syncChanged,
 *     podEvents: { stages: "notable", slowStageSeconds: 5 }, lookAgain: (id) => statuses.mark(id), now });
 *   stages.expect(uid, hash);     // a change this process made: its stages are told
 *   stages.observe("gw-1");       // after acks, reports, presence or a publish
 *   stages.sync("gw-1");          // { desiredGeneration: 7, appliedGeneration: 6, behindSince }
 *   stages.stop();                // no look again after this
 */
import type { ReportedPod } from "../../src/protocol/types.ts";
import type { DeviceSync, PodRef, ProviderEvent } from "../../src/provider/types.ts";
import type { DesiredStore, PodEntry } from "./desired.ts";
import type { DeviceRegistry } from "./devices.ts";
import { appliedOf, deliveryOf, type DeviceObservation, type Observations } from "./observations.ts";
import { podStatus } from "./pod-status.ts";
import type { PodEventsConfig } from "./schema.ts";

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
  readonly registry: Pick<DeviceRegistry, "get" | "effectivePresence">;
  readonly observations: Pick<Observations, "get">;
  readonly recordEvent: (event: ProviderEvent) => void;
  /** The device's {@link Stages.sync} may have changed. */
  readonly syncChanged: (deviceId: string) => void;
  /** Which stages are told: the provider config's `podEvents`. */
  readonly podEvents: PodEventsConfig;
  /**
   * Has the device looked at again soon ({@link Stages.observe}, through the StatusCoalescer):
   * called when a pod's time to be Running is up.
   */
  readonly lookAgain: (deviceId: string) => void;
  readonly now: () => Date;
}

/**
 * Whether the routine stages (Delivered, Applied, a first Started) of a pod version are told:
 * `timing` holds them back until the version is Running (`quiet`: never told) or slow (`telling`:
 * told, the held ones at once). Under `podEvents.stages: all` every version is `telling`.
 */
type Pace = "timing" | "telling" | "quiet";

interface PodStages {
  readonly hash: string;
  /** Stages already told (or taken as told) for this hash. */
  readonly told: Set<string>;
  /** A pod first met in a read-back document: its current stages are taken as told, silently. */
  baseline: boolean;
  pace: Pace;
  /** When this process first saw this version published (epoch ms): `timing` counts from it. */
  publishedAt: number | undefined;
  /** Per container, the start first seen in the pod's life on this process; any other is a restart. */
  readonly firstStarts: Map<string, string>;
}

interface SyncState {
  readonly value: DeviceSync;
  readonly signature: string;
}

export class Stages {
  readonly #o: StagesOptions;
  readonly #slowMs: number;
  /** Per device, per pod uid. */
  readonly #pods = new Map<string, Map<string, PodStages>>();
  readonly #sync = new Map<string, SyncState>();
  /** Per device, the one pending look again: when it is due (epoch ms) and its timer. */
  readonly #looks = new Map<string, { readonly at: number; readonly timer: NodeJS.Timeout }>();
  #stopped = false;

  constructor(options: StagesOptions) {
    this.#o = options;
    this.#slowMs = options.podEvents.slowStageSeconds * 1000;
  }

  /** This process changed the pod's content on its device: every stage of `hash` is told. */
  expect(deviceId: string, uid: string, hash: string): void {
    const pods = this.#podsOf(deviceId);
    const current = pods.get(uid);
    if (current?.hash === hash) return;
    pods.set(uid, this.#version(hash, false, current));
  }

  /** Tells the stages the device's pods reached since last looked at, and its sync change. */
  observe(deviceId: string): void {
    const d = this.#o.desired.device(deviceId);
    const observation = this.#o.observations.get(deviceId);
    const pods = this.#podsOf(deviceId);
    const look: Look = {
      deviceId,
      device: d,
      observation,
      presence: this.#o.registry.effectivePresence(deviceId),
      now: this.#o.now().getTime(),
    };
    for (const uid of pods.keys()) if (!d?.pods.has(uid)) pods.delete(uid);
    let due: number | undefined;
    for (const entry of d?.pods.values() ?? []) {
      const at = this.#observePod(look, pods, entry);
      if (at !== undefined && (due === undefined || at < due)) due = at;
    }
    if (pods.size === 0) this.#pods.delete(deviceId);
    this.#lookAgainAt(deviceId, due, look.now);
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

  /** Clears the pending looks again; none is set after this. Idempotent. */
  stop(): void {
    this.#stopped = true;
    for (const { timer } of this.#looks.values()) clearTimeout(timer);
    this.#looks.clear();
  }

  #podsOf(deviceId: string): Map<string, PodStages> {
    let pods = this.#pods.get(deviceId);
    if (!pods) {
      pods = new Map();
      this.#pods.set(deviceId, pods);
    }
    return pods;
  }

  /** A new version of a pod; its containers' first starts carry over from the earlier one. */
  #version(hash: string, baseline: boolean, earlier: PodStages | undefined): PodStages {
    return {
      hash,
      told: new Set(),
      baseline,
      pace: this.#o.podEvents.stages === "all" ? "telling" : "timing",
      publishedAt: undefined,
      firstStarts: earlier?.firstStarts ?? new Map<string, string>(),
    };
  }

  /**
   * Has the device looked at again at `due` (epoch ms: the earliest deadline of its pods being
   * timed), or not at all when undefined. One timer per device, moved when its deadline does.
   */
  #lookAgainAt(deviceId: string, due: number | undefined, now: number): void {
    const pending = this.#looks.get(deviceId);
    if (pending?.at === due) return;
    if (pending) {
      clearTimeout(pending.timer);
      this.#looks.delete(deviceId);
    }
    if (due === undefined || this.#stopped) return;
    const timer = setTimeout(
      () => {
        this.#looks.delete(deviceId);
        this.#o.lookAgain(deviceId);
      },
      Math.max(0, due - now),
    );
    this.#looks.set(deviceId, { at: due, timer });
  }

  /**
   * Tells what the pod reached; returns when it should be looked at again (epoch ms) while its
   * pace is still being timed.
   */
  #observePod(look: Look, pods: Map<string, PodStages>, entry: PodEntry): number | undefined {
    // Held back by this process: the pod's status says why; no stage applies.
    if (entry.blocked) return undefined;
    const { deviceId, observation, presence } = look;
    const hash = entry.desired.hash;
    let s = pods.get(entry.ref.uid);
    if (s?.hash !== hash) {
      s = this.#version(hash, true, s);
      pods.set(entry.ref.uid, s);
    }
    const state = s;
    if (state.pace === "timing") this.#time(look, state, entry);
    /** `routine`: Delivered, Applied, a first Started — told only as the pace says. */
    const tell = (key: string, event: Omit<ProviderEvent, "involved">, routine = false) => {
      if (state.told.has(key)) return;
      // Held until the pod turns out slow (or Running: then never told).
      if (routine && state.pace === "timing" && !state.baseline) return;
      state.told.add(key);
      if (state.baseline || (routine && state.pace === "quiet")) return;
      this.#o.recordEvent({ involved: { kind: "Pod", pod: entry.ref, deviceId }, ...event });
    };
    const normal = (reason: string, message: string, routine = false) =>
      tell(reason, { type: "Normal", reason, message }, routine);
    const generation = entry.since ? ` (generation ${entry.since.generation})` : "";
    const { delivery, rejection } = deliveryOf(entry.since, observation);
    if (delivery === "queued" && presence !== "online") {
      normal(
        StageReason.Queued,
        `device ${deviceId} is ${presence}; the change waits in its desired document${generation}`,
      );
    }
    if (delivery === "received" || delivery === "applied") {
      normal(StageReason.Delivered, `device ${deviceId} received its desired document${generation}`, true);
    }
    if (delivery === "applied") {
      normal(StageReason.Applied, `device ${deviceId} applied its desired document${generation}`, true);
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
        const { startedAt } = app.status;
        const first = state.firstStarts.get(app.name);
        if (first === undefined) state.firstStarts.set(app.name, startedAt);
        tell(
          `${StageReason.Started}\u0000${app.name}\u0000${startedAt}`,
          {
            type: "Normal",
            reason: StageReason.Started,
            message: `Started container ${app.name}`,
            series: app.name,
          },
          first === undefined || first === startedAt,
        );
      }
    }
    // From the next look on, what changes is news.
    state.baseline = false;
    return state.pace === "timing" && state.publishedAt !== undefined
      ? state.publishedAt + this.#slowMs
      : undefined;
  }

  /**
   * Moves a version being timed on: Running (or Succeeded, Failed) is `quiet`; still Pending when
   * its time is up, `telling`.
   */
  #time(look: Look, state: PodStages, entry: PodEntry): void {
    // The clock runs only while the device is online: a change queued for an offline device is
    // slow once the device is back and has not run it in time, not because it was away (a
    // reconnect storm would otherwise tell every stage of every pod at once).
    if (look.presence !== "online") state.publishedAt = undefined;
    else if (entry.since !== undefined) state.publishedAt ??= look.now;
    const status = podStatus({
      entry,
      device: look.device,
      presence: look.presence,
      wakeAt: this.#o.registry.get(look.deviceId)?.wakeAt,
      observation: look.observation,
      now: new Date(look.now),
    });
    // Running, or already run to its end: the device has it; its way there was routine.
    if (status.phase !== "Pending") state.pace = "quiet";
    else if (state.publishedAt !== undefined && look.now >= state.publishedAt + this.#slowMs)
      state.pace = "telling";
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

/** What one look at a device sees, shared by its pods. */
interface Look {
  readonly deviceId: string;
  readonly device: ReturnType<StagesOptions["desired"]["device"]>;
  readonly observation: DeviceObservation | undefined;
  readonly presence: ReturnType<StagesOptions["registry"]["effectivePresence"]>;
  /** Epoch ms. */
  readonly now: number;
}
