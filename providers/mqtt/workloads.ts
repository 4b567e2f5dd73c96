/**
 * Workloads: the pod side of the MQTT provider — workloads from the engine into the devices'
 * desired documents (DesiredStore); the statuses back out of what the devices said are
 * PodStatusView's (status-view.ts). It owns the engine's workload hash per pod uid (what this
 * process was given) and has it stored soon after (workload-hashes.ts), so pods read back from the
 * broker after a restart are listed with it. `apply` and `delete` wait for the broker to hold the
 * document carrying their change (bounded by the publish timeout); nothing else blocks. With a
 * blob store (`files`), a changed pod's large files are uploaded first and go by reference.
 *
 *   const workloads = new Workloads({ desired, statuses, orphans, restarts, secrets, hashes, deleted });
 *   await workloads.restoreHashes();                // at start
 *   await workloads.apply(workload);                // upsert, resolved once retained
 *   await workloads.delete(ref, 30);                // tombstone, resolved once retained
 *   await workloads.flushHashes();                  // at stop
 *   workloads.list();                               // ProviderPods, tombstoned ones first
 */
import type { PodRef, ProviderPod, Workload } from "../../src/provider/types.ts";
import type { FileReferences, ReferenceOf } from "./blobs.ts";
import type { DesiredStore, DeviceDesired } from "./desired.ts";
import type { Orphans } from "./orphans.ts";
import type { StatusCoalescer } from "./pod-status.ts";
import { RESTART_ANNOTATION, type RestartRequests } from "./restart.ts";
import type { SecretGate } from "./secret-gate.ts";
import { holdBack, toDesiredPod } from "./translate.ts";
import type { Stages } from "./stages.ts";
import type { HashEntry, WorkloadHashes } from "./workload-hashes.ts";

export interface WorkloadsOptions {
  readonly desired: Pick<
    DesiredStore,
    "upsertPod" | "touch" | "held" | "device" | "deviceOf" | "tombstone" | "devices"
  >;
  readonly statuses: Pick<StatusCoalescer, "mark" | "forget">;
  readonly orphans: Pick<Orphans, "claim" | "listed">;
  readonly restarts: Pick<RestartRequests, "observe" | "seen" | "recall" | "forget">;
  readonly secrets: SecretGate;
  readonly hashes: Pick<WorkloadHashes, "load" | "restored" | "later" | "writeNow" | "flush" | "forget">;
  /** Reports a pod deleted (the provider tells the engine, after the current step). */
  readonly deleted: (ref: PodRef) => void;
  /** Told of each change this process makes to a pod's content, so its stages become Events. */
  readonly stages?: Pick<Stages, "expect">;
  /** Large files by reference through a blob store (blobs.ts); default: every file inline. */
  readonly files?: Pick<FileReferences, "prepare">;
}

export class Workloads {
  readonly #o: WorkloadsOptions;
  /** The engine's workload hash per pod uid, as last given (unknown for pods read back). */
  readonly #hashes = new Map<string, string>();
  /** The latest apply per pod uid while its files upload: an older one finishing late yields. */
  readonly #uploads = new Map<string, object>();

  constructor(options: WorkloadsOptions) {
    this.#o = options;
  }

  /** Whether this process was given the pod by the engine (an orphan otherwise). */
  claimed(uid: string): boolean {
    return this.#hashes.has(uid);
  }

  /** Reads the workload hashes an earlier process stored (start, before the first listPods). */
  restoreHashes(): Promise<void> {
    return this.#o.hashes.load();
  }

  /**
   * Puts the workload into its device's document (nothing when the engine's hash is unchanged) and
   * resolves once the broker holds it (DesiredStore.held): the provider contract's "held durably".
   * A pod held back with a reason (Secrets refused, too large for the device) resolves without a
   * publish: what holds it is this process, reporting the reason, and after a restart the engine,
   * finding it unlisted or with another hash, gives it again.
   * @throws ProviderError Transient when the broker does not take the document in time (the
   * change stays and goes out with the next document; the engine retries), or when a file cannot
   * be stored for the device to fetch (nothing changes; the engine retries).
   */
  async apply(workload: Workload): Promise<void> {
    const { deviceId, pod } = workload;
    this.#o.orphans.claim(pod.uid);
    if (!this.#hashes.has(pod.uid)) {
      // First met by this process: the restart-request value an earlier one stored for the
      // version the broker holds tells a request made while devicelet was down (restart.ts).
      const held = this.#o.desired.device(deviceId)?.pods.get(pod.uid);
      const restored = held && this.#o.hashes.restored(pod.uid, held.desired.hash);
      if (restored) this.#o.restarts.recall(pod.uid, restored.restartToken);
    }
    if (this.#hashes.get(pod.uid) !== workload.hash) {
      const refOf = this.#o.files ? await this.#upload(workload) : undefined;
      if (refOf === null) return; // a later apply or a delete of the pod came while uploading
      const ref: PodRef = { namespace: pod.namespace, name: pod.name, uid: pod.uid };
      const desired = toDesiredPod(workload, refOf);
      // Judged again even when the content is unchanged: a pod adopted from an earlier run's
      // retained document was never checked under this run's config.
      const blocked = holdBack(workload, desired, { secrets: this.#o.secrets });
      this.#hashes.set(pod.uid, workload.hash);
      if (this.#o.desired.upsertPod(deviceId, ref, desired, blocked)) {
        this.#o.stages?.expect(deviceId, pod.uid, desired.hash);
        this.#o.statuses.mark(deviceId);
      }
      // Only the engine's hash changed (labels, annotations): nothing for the device; a flush
      // finds the content held and has the new hash stored.
      else this.#o.desired.touch(deviceId);
    }
    this.#o.restarts.observe(workload);
    await this.#o.desired.held(deviceId, pod.uid);
    // A restart-request value is recorded before this resolves: after a restart, a value changed
    // meanwhile is a request only against the one recorded (restart.ts). Other records wait.
    if (pod.annotations[RESTART_ANNOTATION]) await this.#o.hashes.writeNow(deviceId);
  }

  /**
   * The workload's large files, stored for its device to fetch; null when, meanwhile, a later
   * apply or a delete of the same pod began (its outcome stands).
   */
  async #upload(workload: Workload): Promise<ReferenceOf | null | undefined> {
    const { uid } = workload.pod;
    const turn = {};
    this.#uploads.set(uid, turn);
    try {
      const refOf = await this.#o.files?.prepare(workload);
      return this.#uploads.get(uid) === turn ? refOf : null;
    } finally {
      if (this.#uploads.get(uid) === turn) this.#uploads.delete(uid);
    }
  }

  /**
   * Has the workload hashes of a device whose document the broker now holds stored, a while later
   * (workload-hashes.ts, `later`): each pod with the device hash it has when the record is
   * written (a stored pair is used after a restart only when the retained document carries that
   * device hash). Pods kept out of the document are left out: after a restart the engine gives
   * them again. Nothing for a device the store has forgotten by then.
   */
  persist(d: DeviceDesired): void {
    this.#o.hashes.later(d.deviceId, () =>
      this.#o.desired.device(d.deviceId) === d ? this.#entries(d) : undefined,
    );
  }

  /** Writes the records still waiting (stop). */
  flushHashes(): Promise<void> {
    return this.#o.hashes.flush();
  }

  #entries(d: DeviceDesired): HashEntry[] {
    const entries: HashEntry[] = [];
    for (const p of d.pods.values()) {
      const { uid } = p.ref;
      if (p.blocked) continue;
      const given = this.#hashes.get(uid);
      const restored = this.#o.hashes.restored(uid, p.desired.hash);
      const hash = given ?? restored?.workloadHash;
      if (hash === undefined) continue;
      const token = given === undefined ? restored?.restartToken : this.#o.restarts.seen(uid)?.token;
      entries.push(token === undefined ? [uid, p.desired.hash, hash] : [uid, p.desired.hash, hash, token]);
    }
    return entries;
  }

  /** The engine's hash: as given to this process, else as an earlier one stored it. */
  #workloadHash(uid: string, deviceHash: string): string | undefined {
    return this.#hashes.get(uid) ?? this.#o.hashes.restored(uid, deviceHash)?.workloadHash;
  }

  /**
   * Puts a tombstone in the device's document and resolves once the broker holds it; a pod the
   * device never got is reported deleted at once.
   * @throws ProviderError Transient when the broker does not take the document in time.
   */
  async delete(pod: PodRef, gracePeriodSeconds: number): Promise<void> {
    const deviceId = this.#o.desired.deviceOf(pod.uid);
    this.#o.orphans.claim(pod.uid);
    this.#o.restarts.forget(pod.uid);
    this.#hashes.delete(pod.uid);
    this.#uploads.delete(pod.uid);
    if (deviceId === undefined) {
      this.#o.deleted(pod);
      return;
    }
    const outcome = await this.#o.desired.tombstone(deviceId, pod, gracePeriodSeconds);
    this.#o.statuses.forget(pod.uid);
    if (outcome === "dropped") this.#o.deleted(pod);
  }

  /** Forgets what this holds for a pod of a decommissioned device. */
  forget(ref: PodRef): void {
    this.#o.statuses.forget(ref.uid);
    this.#o.restarts.forget(ref.uid);
    this.#hashes.delete(ref.uid);
    this.#uploads.delete(ref.uid);
  }

  /** Drops the stored hashes of a decommissioned device (its pods are forgotten one by one). */
  forgetDevice(deviceId: string): Promise<void> {
    return this.#o.hashes.forget(deviceId);
  }

  /**
   * Pods in the devices' documents; tombstoned ones first (a live pod of the same name wins).
   * `nodeName` is the device id. `hash` is the engine's workload hash, as given to this process or
   * stored by an earlier one for the version the retained document carries; otherwise (nothing
   * stored, or a store out of step with the document) the device-facing hash, so the engine calls
   * updatePod once, which publishes nothing when the device already has that content.
   */
  list(): ProviderPod[] {
    this.#o.orphans.listed();
    const out: ProviderPod[] = [];
    const devices = [...this.#o.desired.devices()];
    const hash = (uid: string, fallback: string) => this.#workloadHash(uid, fallback) ?? fallback;
    for (const d of devices)
      for (const t of d.tombstones.values())
        out.push({
          pod: t.ref,
          nodeName: d.deviceId,
          hash: hash(t.ref.uid, t.hash),
          terminationGracePeriodSeconds: t.tombstone.gracePeriodSeconds,
        });
    for (const d of devices)
      for (const p of d.pods.values())
        out.push({
          pod: p.ref,
          nodeName: d.deviceId,
          hash: hash(p.ref.uid, p.desired.hash),
          // A pod deleted while devicelet was down is stopped with the grace its spec gave it.
          terminationGracePeriodSeconds: p.desired.terminationGracePeriodSeconds,
        });
    return out;
  }
}
