/**
 * Contract scenarios about the five core calls (types.ts, PodLifecycleProvider): idempotent
 * creates, updates, deletes (with grace, of unknown pods, durable across a restart), listPods
 * across a restart, and overlapping calls. Each is a plain `(target) => Promise<void>` that throws
 * a ContractViolation naming the rule and what the provider did; contract.ts runs them as tests.
 * They expect `target.setUp` to have run.
 */
import { hasDeletionNotifier, type AppState } from "../provider/types.ts";
import { check, describeStatus, key } from "./checks.ts";
import { runScenario } from "./harness.ts";
import type { ProviderTarget } from "./target.ts";
import { refOf } from "./workload.ts";

type Target = ProviderTarget;

/** createPod twice with one hash holds one pod, runs its apps once. */
export const idempotentCreate = (target: Target) =>
  runScenario(target, "idempotent create", async (rig) => {
    const w = rig.workload("idem");
    const since = rig.mark();
    await rig.create(w);
    await rig.create(w);
    const listed = await rig.listed(w.pod);
    check(listed !== undefined, `listPods lacks ${key(w.pod)} after createPod resolved`);
    check(listed.hash === w.hash, `listPods says hash ${listed.hash}, the workload's is ${w.hash}`);
    check(listed.nodeName === w.nodeName, `listPods says node ${listed.nodeName}, not ${w.nodeName}`);
    const running = await rig.waitRunning(w, since);
    // The same hash again while it runs must not restart anything: after a round trip through
    // the device, the apps still run from the same start, never restarted.
    await rig.create(w);
    await rig.settle();
    const after = await rig.provider.getPodStatus(refOf(w));
    check(after !== undefined, `getPodStatus lost ${key(w.pod)}`);
    const startedAt = (state: AppState | undefined) =>
      state?.kind === "running" ? state.startedAt.getTime() : undefined;
    for (const app of after.apps) {
      check(
        app.restartCount === 0 && app.state.kind === "running",
        () => `creating the same hash again restarted ${app.name}: ${describeStatus(after)}`,
      );
      const before = running.apps.find((a) => a.name === app.name);
      check(
        startedAt(before?.state) === startedAt(app.state),
        `creating the same hash again started ${app.name} anew`,
      );
    }
    check(
      (await rig.provider.listPods()).filter((p) => p.pod.uid === w.pod.uid).length === 1,
      "listed twice",
    );
  });

/** A new hash for the same pod replaces what runs. */
export const update = (target: Target) =>
  runScenario(target, "update", async (rig) => {
    const v1 = rig.workload("upd");
    await rig.create(v1);
    await rig.waitRunning(v1);
    const v2 = rig.next(v1, 2);
    const since = rig.mark();
    await rig.update(v2);
    const listed = await rig.listed(v2.pod);
    check(listed?.hash === v2.hash, `after updatePod, listPods says hash ${listed?.hash}, not ${v2.hash}`);
    await rig.waitRunning(v2, since);
  });

/** updatePod of a pod the provider does not hold creates it (types.ts, updatePod). */
export const updateUnknownCreates = (target: Target) =>
  runScenario(target, "update of an unknown pod creates it", async (rig) => {
    const w = rig.workload("lost");
    const since = rig.mark();
    await rig.update(w);
    const listed = await rig.listed(w.pod);
    check(
      listed?.hash === w.hash,
      `after updatePod of an unknown pod listPods says ${listed?.hash ?? "nothing"}`,
    );
    await rig.waitRunning(w, since);
  });

/** deletePod with a grace period: resolves, the deletion is reported once, the pod is gone. */
export const deleteWithGrace = (target: Target) =>
  runScenario(target, "delete with grace", async (rig) => {
    const w = rig.workload("del", { terminationGracePeriodSeconds: 2 });
    await rig.create(w);
    await rig.waitRunning(w);
    const since = rig.mark();
    await rig.delete(refOf(w), 2);
    await rig.waitDeleted(w.pod, since);
    await rig.settle();
    check((await rig.listed(w.pod)) === undefined, `${key(w.pod)} came back in listPods`);
    if (hasDeletionNotifier(rig.provider)) {
      const n = rig.deletionsOf(w.pod, since);
      check(n === 1, `the deletion of ${key(w.pod)} was reported ${n} times`);
    }
  });

/** Unknown pods: deletePod resolves, getPodStatus resolves undefined; neither throws. */
export const unknownPods = (target: Target) =>
  runScenario(target, "unknown pods", async (rig) => {
    const ref = rig.unknownRef("ghost");
    try {
      await rig.delete(ref, 0);
    } catch (err) {
      check(false, `deletePod of an unknown pod threw: ${(err as Error).message}`);
    }
    let status;
    try {
      status = await rig.provider.getPodStatus(ref);
    } catch (err) {
      check(false, `getPodStatus of an unknown pod threw: ${(err as Error).message}`);
    }
    check(status === undefined, () => `getPodStatus of an unknown pod says ${describeStatus(status)}`);
    check((await rig.listed(ref)) === undefined, "listPods lists a pod that was never created");
  });

/**
 * A delete is durable once deletePod resolved: a restart right after it (the device away, so the
 * delete cannot have reached it yet) carries the delete out, never runs the pod again.
 */
export const durableDelete = (target: Target) =>
  runScenario(target, "delete is durable across a restart", async (rig) => {
    const device = rig.devices[0];
    const away = rig.workload("away");
    const here = rig.workload("here", { deviceId: rig.devices[1] });
    await rig.create(away);
    await rig.create(here);
    await rig.waitRunning(away);
    await rig.waitRunning(here);
    await rig.setOnline(device, false);
    await rig.delete(refOf(away), 1);
    await rig.delete(refOf(here), 0);
    const restarted = await rig.restart();
    await rig.setOnline(device, true);
    // The device got the delete from the new instance: it reports it (it could not have before).
    await rig.waitDeleted(away.pod, restarted);
    await rig.waitDeleted(here.pod, 0, { notice: false });
    await rig.settle();
    for (const w of [away, here]) {
      check((await rig.listed(w.pod)) === undefined, `${key(w.pod)} is listed again after the restart`);
      const status = await rig.provider.getPodStatus(refOf(w));
      check(status === undefined, () => `${key(w.pod)} has a status again: ${describeStatus(status)}`);
    }
  });

/**
 * A create or update is durable once it resolved: a restart right after it (nothing waited for)
 * finds the pod, and the device ends up running the version last given.
 */
export const durableCreate = (target: Target) =>
  runScenario(target, "create and update are durable across a restart", async (rig) => {
    const changed = rig.workload("changed");
    await rig.create(changed);
    await rig.waitRunning(changed);
    const fresh = rig.workload("fresh");
    const v2 = rig.next(changed, 2);
    await rig.create(fresh);
    await rig.update(v2);
    const since = await rig.restart();
    for (const w of [fresh, v2])
      check((await rig.listed(w.pod)) !== undefined, `after a restart listPods lacks ${key(w.pod)}`);
    await rig.waitRunning(fresh, since);
    await rig.waitRunning(v2, since);
  });

/** Pods created before a restart are listed after it, and their status arrives again. */
export const restartKeepsPods = (target: Target) =>
  runScenario(target, "listPods after a restart", async (rig) => {
    const pods = [rig.workload("keep-a"), rig.workload("keep-b", { deviceId: rig.devices[1] })];
    for (const w of pods) await rig.create(w);
    for (const w of pods) await rig.waitRunning(w);
    const since = await rig.restart();
    const listed = await rig.provider.listPods();
    for (const w of pods) {
      const entry = listed.find((p) => p.pod.uid === w.pod.uid);
      check(entry !== undefined, `after a restart listPods lacks ${key(w.pod)}`);
      check(entry.nodeName === w.nodeName, `after a restart ${key(w.pod)} is on ${entry.nodeName}`);
      check(
        entry.pod.namespace === w.pod.namespace && entry.pod.name === w.pod.name,
        `after a restart ${w.pod.uid} is listed as ${key(entry.pod)}`,
      );
    }
    for (const w of pods) await rig.waitRunning(w, since);
  });

/** listPods keeps the hash of the workload last given across a restart (ProviderPod.hash). */
export const restartKeepsHash = (target: Target) =>
  runScenario(target, "listPods keeps the hash across a restart", async (rig) => {
    const v1 = rig.workload("hash");
    await rig.create(v1);
    const v2 = rig.next(v1, 2);
    await rig.update(v2);
    await rig.waitRunning(v2);
    await rig.restart();
    const listed = await rig.listed(v2.pod);
    check(listed !== undefined, `after a restart listPods lacks ${key(v2.pod)}`);
    check(
      listed.hash === v2.hash,
      `after a restart listPods says hash ${listed.hash}, the workload last given was ${v2.hash}`,
    );
  });

/** Calls for different pods overlap: many creates at once on one device all resolve and run. */
export const concurrentPods = (target: Target) =>
  runScenario(target, "calls for different pods overlap", async (rig) => {
    const pods = Array.from({ length: 8 }, (_, i) => rig.workload(`many-${i}`));
    const since = rig.mark();
    await Promise.all(pods.map((w) => rig.create(w)));
    const listed = await rig.provider.listPods();
    for (const w of pods) {
      const entry = listed.find((p) => p.pod.uid === w.pod.uid);
      check(entry?.hash === w.hash, `listPods says ${entry?.hash ?? "nothing"} for ${key(w.pod)}`);
    }
    for (const w of pods) await rig.waitRunning(w, since);
  });

/**
 * Calls for one pod in sequence: create then delete leaves it deleted; create, delete, create
 * under the same name with a new uid leaves only the new one, running its own apps.
 */
export const onePodSequences = (target: Target) =>
  runScenario(target, "calls for one pod in sequence", async (rig) => {
    const brief = rig.workload("brief");
    const since = rig.mark();
    await rig.create(brief);
    await rig.delete(refOf(brief), 0);
    await rig.waitDeleted(brief.pod, since);

    const old = rig.workload("again");
    await rig.create(old);
    await rig.delete(refOf(old), 0);
    const renewed = rig.workload("again", { version: 2 });
    const recreated = rig.mark();
    await rig.create(renewed);
    await rig.waitRunning(renewed, recreated);
    await rig.waitDeleted(old.pod, since);
    await rig.settle();
    const listed = (await rig.provider.listPods()).filter((p) => p.pod.name === renewed.pod.name);
    check(
      listed.length === 1 && listed[0]?.pod.uid === renewed.pod.uid,
      () => `listPods has ${listed.map((p) => key(p.pod)).join(", ") || "nothing"} for ${renewed.pod.name}`,
    );
    check((await rig.listed(brief.pod)) === undefined, `${key(brief.pod)} came back`);
  });
