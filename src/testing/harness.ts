/**
 * The kit's side of a provider under test: a {@link Rig} builds the provider from a target with a
 * {@link testContext}, subscribes to every callback before `start`, plays restarts on the same
 * durable state, takes devices away and back, and checks the rules that hold at every moment:
 *
 * - no callback (status, deletion, device change) after `stop` resolved;
 * - every status names a pod the kit gave the provider, with that pod's namespace, name and uid;
 * - a pod's deletion is reported at most once by one provider instance (once per deletePod call
 *   when the kit deletes it again);
 * - nothing is reported with `context.fail`.
 *
 * A violation seen by a callback cannot throw into the provider, so it is kept and thrown when
 * the scenario closes its rig (`runScenario`), together with any problem closing brought up.
 * Statuses that arrive after a pod's deletion was reported are not violations: the contract says
 * the engine ignores them (StatusNotifier).
 *
 * All rigs of one target share a {@link SuiteState}: one MemoryStore, as successive runs of
 * devicelet share their state ConfigMap, and the pods the kit ever created, since a provider
 * rightly keeps reporting pods an earlier scenario left behind until their deletion completes.
 */
import { randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import {
  hasDeletionNotifier,
  hasDeviceInventory,
  hasLifecycle,
  hasStatusNotifier,
  type DeviceInfo,
  type PodLifecycleProvider,
  type PodRef,
  type ProviderPod,
  type Workload,
  type WorkloadStatus,
} from "../provider/types.ts";
import { check, ContractViolation, describeStatus, key, runsWorkload } from "./checks.ts";
import { testContext, type TestContext } from "./context.ts";
import { MemoryStore } from "./memory-store.ts";
import type { ProviderTarget } from "./target.ts";
import { refOf, workload, type WorkloadOptions } from "./workload.ts";

const DEFAULT_PATIENCE_MS = 20_000;
const POLL_MS = 25;

/** What every rig of one target shares (see the module doc). */
export interface SuiteState {
  readonly store: MemoryStore;
  /** uid → the pod the kit gave that uid to. */
  readonly known: Map<string, PodRef>;
  /**
   * Violations callbacks revealed, labelled `[scenario]`, until that scenario's rig closes and
   * reports them; what is left arrived after (describeProviderContract's last test reports it).
   */
  readonly violations: string[];
}

const suites = new WeakMap<object, SuiteState>();

export function suiteOf(target: object): SuiteState {
  let suite = suites.get(target);
  if (!suite) suites.set(target, (suite = { store: new MemoryStore(), known: new Map(), violations: [] }));
  return suite;
}

export interface Pushed<T> {
  readonly value: T;
  /** Position in the rig's order of events; compare with {@link Rig.mark}. */
  readonly seq: number;
  /** Which provider instance of the rig sent it (0 first, 1 after the first restart…). */
  readonly instance: number;
}

interface Instance<P> {
  readonly index: number;
  readonly provider: P;
  readonly context: TestContext;
  /** deletePod calls per uid: each may be answered with a deletion notice (deleting twice is fine). */
  readonly deleteCalls: Map<string, number>;
  stopResolved: boolean;
}

export class Rig<P extends PodLifecycleProvider = PodLifecycleProvider> {
  readonly target: ProviderTarget<P>;
  readonly suite: SuiteState;
  readonly scenario: string;
  readonly patienceMs: number;
  readonly statuses: Pushed<WorkloadStatus>[] = [];
  readonly deletions: Pushed<PodRef>[] = [];
  readonly deviceChanges: Pushed<DeviceInfo>[] = [];
  readonly #instances: Instance<P>[] = [];
  readonly #created = new Map<string, Workload>();
  readonly #deleted = new Set<string>();
  /** Devices this rig took away and has not brought back. */
  readonly #away = new Set<string>();
  readonly #prefix = `kit-${randomBytes(3).toString("hex")}`;
  #seq = 0;

  private constructor(target: ProviderTarget<P>, scenario: string) {
    this.target = target;
    this.suite = suiteOf(target);
    this.scenario = scenario;
    this.patienceMs = target.patienceMs ?? DEFAULT_PATIENCE_MS;
  }

  /** Builds and starts a provider for one scenario. */
  static async open<P extends PodLifecycleProvider>(
    target: ProviderTarget<P>,
    scenario: string,
  ): Promise<Rig<P>> {
    const rig = new Rig(target, scenario);
    await rig.#startInstance();
    return rig;
  }

  get provider(): P {
    return this.#current.provider;
  }

  get context(): TestContext {
    return this.#current.context;
  }

  get instance(): number {
    return this.#current.index;
  }

  /** The first device, and the second when the target has two (the first otherwise). */
  get devices(): readonly [string, string] {
    const [first, second] = this.target.devices;
    return [first, second ?? first];
  }

  /** A position in the order of callbacks: what arrives later has a larger `seq`. */
  mark(): number {
    return ++this.#seq;
  }

  /**
   * A workload for a pod of this scenario (`kit-<random>-<name>`, namespace `kit`), known to the
   * suite so its statuses pass the uid check. Pass `uid` and `version` to change a pod already made.
   */
  workload(name: string, options: Partial<WorkloadOptions> = {}): Workload {
    const w = workload({
      namespace: "kit",
      deviceId: this.devices[0],
      image: this.target.image,
      ...options,
      name: `${this.#prefix}-${name}`,
    });
    this.suite.known.set(w.pod.uid, refOf(w));
    return w;
  }

  /** The next version of `w`: same pod and uid, new content (apps renamed). */
  next(w: Workload, version: number): Workload {
    return workload({
      namespace: w.pod.namespace,
      name: w.pod.name,
      uid: w.pod.uid,
      deviceId: w.deviceId,
      nodeName: w.nodeName,
      image: this.target.image,
      version,
      terminationGracePeriodSeconds: w.terminationGracePeriodSeconds,
    });
  }

  /** A PodRef the provider was never given. */
  unknownRef(name: string): PodRef {
    const ref = refOf(this.workload(name));
    return ref;
  }

  async create(w: Workload): Promise<void> {
    this.#created.set(w.pod.uid, w);
    await this.provider.createPod(w);
  }

  async update(w: Workload): Promise<void> {
    this.#created.set(w.pod.uid, w);
    await this.provider.updatePod(w);
  }

  async delete(ref: PodRef, gracePeriodSeconds: number): Promise<void> {
    this.#deleted.add(ref.uid);
    const calls = this.#current.deleteCalls;
    calls.set(ref.uid, (calls.get(ref.uid) ?? 0) + 1);
    await this.provider.deletePod(ref, { gracePeriodSeconds });
  }

  /** The provider's entry for the pod in listPods, if any. */
  async listed(ref: PodRef): Promise<ProviderPod | undefined> {
    const pods = await this.provider.listPods();
    const entries = pods.filter((p) => p.pod.uid === ref.uid);
    check(entries.length <= 1, () => `listPods has ${entries.length} entries for ${key(ref)}`);
    return entries[0];
  }

  /** Statuses pushed for the pod (by any instance) after `since`. */
  pushedFor(ref: PodRef, since = 0): WorkloadStatus[] {
    return this.statuses.filter((p) => p.value.pod.uid === ref.uid && p.seq > since).map((p) => p.value);
  }

  /** Deletion callbacks for the pod after `since`, from the current instance unless `instance` says. */
  deletionsOf(ref: PodRef, since = 0, instance = this.instance): number {
    return this.deletions.filter((d) => d.value.uid === ref.uid && d.seq > since && d.instance === instance)
      .length;
  }

  /** Polls `probe` until it stops throwing; throws its last error once the target's patience is out. */
  async waitFor<T>(what: string, probe: () => Promise<T> | T): Promise<T> {
    const deadline = Date.now() + this.patienceMs;
    for (;;) {
      try {
        return await probe();
      } catch (err) {
        const message = err instanceof Error ? err.message : String(err);
        if (!(err instanceof ContractViolation))
          throw new ContractViolation(`${what}: the provider threw: ${message}`);
        if (Date.now() > deadline)
          throw new ContractViolation(`${what}: not within ${this.patienceMs} ms: ${message}`);
      }
      await sleep(POLL_MS);
    }
  }

  /**
   * Waits until the provider says `w` runs: getPodStatus, and (StatusNotifier) a status pushed
   * after `since`. Returns the status getPodStatus gave.
   */
  async waitRunning(w: Workload, since = 0): Promise<WorkloadStatus> {
    const apps = w.apps.map((a) => a.name).join(", ");
    return this.waitFor(`${key(w.pod)} running ${apps}`, async () => {
      const status = await this.provider.getPodStatus(refOf(w));
      check(runsWorkload(status, w), () => `getPodStatus says ${describeStatus(status)}`);
      if (hasStatusNotifier(this.provider)) {
        const pushed = this.pushedFor(w.pod, since);
        check(
          pushed.some((s) => runsWorkload(s, w)),
          () => `no pushed status says so (last: ${describeStatus(pushed.at(-1))})`,
        );
      }
      return status;
    });
  }

  /**
   * Waits until the pod's deletion completed: reported once by the current instance after `since`
   * (DeletionNotifier), gone from listPods, getPodStatus undefined.
   */
  async waitDeleted(ref: PodRef, since = 0, options: { notice?: boolean } = {}): Promise<void> {
    await this.waitFor(`${key(ref)} deleted`, async () => {
      if (hasDeletionNotifier(this.provider) && options.notice !== false)
        check(this.deletionsOf(ref, since) >= 1, "no deletion callback");
      check((await this.listed(ref)) === undefined, "listPods still has it");
      const status = await this.provider.getPodStatus(ref);
      check(status === undefined, () => `getPodStatus still says ${describeStatus(status)}`);
    });
  }

  /**
   * A round trip through the provider and a device: a probe pod created on `deviceId` runs, then
   * is deleted. Whatever the provider had in flight before has then had the time a device takes
   * to act, so a check for something that must not have happened is meaningful after it.
   */
  async settle(deviceId = this.devices[0]): Promise<void> {
    const probe = this.workload("settle", { deviceId });
    const since = this.mark();
    await this.create(probe);
    await this.waitRunning(probe, since);
    await this.delete(refOf(probe), 0);
  }

  /** Takes a device away or brings it back (target.setDeviceOnline). */
  async setOnline(deviceId: string, online: boolean): Promise<void> {
    if (online) this.#away.delete(deviceId);
    else this.#away.add(deviceId);
    await this.target.setDeviceOnline(this.provider, deviceId, online);
  }

  /**
   * devicelet restarting: stops the provider (Lifecycle), builds a new one with the same durable
   * store and starts it. Devices this rig holds away are taken away again through the new instance.
   * Returns a mark taken between the two: what the new instance sends from its `start` on is after it.
   */
  async restart(): Promise<number> {
    await this.#stopInstance(this.#current);
    const since = this.mark();
    await this.#startInstance();
    for (const id of this.#away) await this.target.setDeviceOnline(this.provider, id, false);
    return since;
  }

  /** Stops the current instance (if it has a Lifecycle); later callbacks from it are violations. */
  async stop(): Promise<void> {
    await this.#stopInstance(this.#current);
  }

  /**
   * Brings devices back, deletes the pods the scenario left (grace 0, not waited for), stops the
   * provider, then returns what broke the rules during the scenario.
   */
  async close(): Promise<string[]> {
    const problems: string[] = [];
    const current = this.#current;
    const attempt = async (what: string, step: () => Promise<void>) => {
      try {
        await step();
      } catch (err) {
        problems.push(`${what}: ${err instanceof Error ? err.message : String(err)}`);
      }
    };
    for (const id of [...this.#away]) await attempt(`bringing ${id} back`, () => this.setOnline(id, true));
    if (!current.stopResolved) {
      for (const w of this.#created.values())
        if (!this.#deleted.has(w.pod.uid))
          await attempt(`deleting ${key(w.pod)}`, () => this.delete(refOf(w), 0));
      await this.#stopInstance(current);
    }
    for (const instance of this.#instances)
      for (const error of instance.context.failures)
        this.#violate(instance, `reported a fatal error with context.fail: ${error.message}`);
    // Taken out of the suite's list: what arrives after this is reported by the suite's last test.
    const mine = this.suite.violations.filter((v) => v.startsWith(`[${this.scenario}]`));
    this.suite.violations.splice(0, Infinity, ...this.suite.violations.filter((v) => !mine.includes(v)));
    return [...problems, ...mine];
  }

  get #current(): Instance<P> {
    const instance = this.#instances.at(-1);
    if (!instance) throw new Error("rig: no provider instance");
    return instance;
  }

  async #startInstance(): Promise<void> {
    const index = this.#instances.length;
    const context = testContext({ store: this.suite.store });
    const provider = await this.target.create(context);
    const instance: Instance<P> = { index, provider, context, deleteCalls: new Map(), stopResolved: false };
    this.#instances.push(instance);
    const late = (what: string) => {
      if (instance.stopResolved) this.#violate(instance, `${what} after stop resolved`);
    };
    if (hasStatusNotifier(provider)) {
      provider.notifyStatus((status) => {
        late(`status for ${key(status.pod)}`);
        this.#checkStatus(instance, status);
        this.statuses.push({ value: status, seq: ++this.#seq, instance: index });
      });
    }
    if (hasDeletionNotifier(provider)) {
      provider.notifyDeleted((ref) => {
        late(`deletion of ${key(ref)}`);
        const earlier = this.deletions.filter((d) => d.instance === index && d.value.uid === ref.uid);
        if (earlier.length >= Math.max(1, instance.deleteCalls.get(ref.uid) ?? 0))
          this.#violate(instance, `reported the deletion of ${key(ref)} twice`);
        this.deletions.push({ value: ref, seq: ++this.#seq, instance: index });
      });
    }
    if (hasDeviceInventory(provider)) {
      provider.watchDevices({
        changed: (info) => {
          late(`device change of ${info.id}`);
          this.deviceChanges.push({ value: info, seq: ++this.#seq, instance: index });
        },
        gone: (id) => {
          late(`device ${id} gone`);
        },
      });
    }
    if (hasLifecycle(provider)) await provider.start(new AbortController().signal);
  }

  async #stopInstance(instance: Instance<P>): Promise<void> {
    if (instance.stopResolved) return;
    if (hasLifecycle(instance.provider)) await instance.provider.stop();
    instance.stopResolved = true;
  }

  #checkStatus(instance: Instance<P>, status: WorkloadStatus): void {
    const known = this.suite.known.get(status.pod.uid);
    if (!known) {
      this.#violate(instance, `sent a status for ${key(status.pod)}, a uid the kit never gave it`);
    } else if (known.namespace !== status.pod.namespace || known.name !== status.pod.name) {
      this.#violate(
        instance,
        `sent a status for ${key(status.pod)}, but uid ${status.pod.uid} is ${known.namespace}/${known.name}`,
      );
    }
  }

  #violate(instance: Instance<P>, message: string): void {
    this.suite.violations.push(`[${this.scenario}] provider instance ${instance.index}: ${message}`);
  }
}

/**
 * Runs one scenario on a fresh rig and closes it whatever happens; throws the scenario's own
 * failure first, else what closing found (violations seen by callbacks, leftovers it could not
 * clean up).
 */
export async function runScenario<P extends PodLifecycleProvider>(
  target: ProviderTarget<P>,
  scenario: string,
  body: (rig: Rig<P>) => Promise<void>,
): Promise<void> {
  const rig = await Rig.open(target, scenario);
  let failure: unknown;
  try {
    await body(rig);
  } catch (err) {
    failure = err;
  }
  const problems = await rig.close();
  if (failure !== undefined) {
    if (failure instanceof Error && problems.length > 0)
      failure.message += `\n(also, while closing: ${problems.join("; ")})`;
    throw failure instanceof Error
      ? failure
      : new Error(`${scenario}: threw a non-Error`, { cause: failure });
  }
  if (problems.length > 0) throw new ContractViolation(`${scenario}:\n${problems.join("\n")}`);
}
