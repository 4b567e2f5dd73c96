/**
 * Contract scenarios about devices that go away and callbacks: status never says Running before
 * the device runs the app, offline queueing (latest wins), deletes while away as tombstones, no
 * callback after `stop`, and the optional DeviceInventory and Lifecycle capabilities. Plain
 * `(target) => Promise<void>` functions like scenarios-pods.ts; they expect `target.setUp` to
 * have run.
 */
import {
  hasDeletionNotifier,
  hasDeviceInventory,
  hasLifecycle,
  hasStatusNotifier,
  type WorkloadStatus,
} from "../provider/types.ts";
import { check, describeStatus, key, saysRunning } from "./checks.ts";
import { runScenario } from "./harness.ts";
import type { ProviderTarget } from "./target.ts";
import { refOf } from "./workload.ts";

type Target = ProviderTarget;

const notRunningOffline = (s: WorkloadStatus | undefined): boolean =>
  s !== undefined &&
  (s.phase === "Pending" || s.phase === "Unknown") &&
  !saysRunning(s) &&
  !s.deviceConnected;

/**
 * A pod created for a device that is away: its status says so (Pending or Unknown, not connected,
 * nothing running), pushed as well as read; back online, Running arrives.
 */
export const offlineCreate = (target: Target) =>
  runScenario(target, "status: not Running before the device runs it", async (rig) => {
    const device = rig.devices[0];
    await rig.setOnline(device, false);
    const w = rig.workload("queued");
    const since = rig.mark();
    await rig.create(w);
    await rig.waitFor(`${key(w.pod)} reported as waiting for its device`, async () => {
      const status = await rig.provider.getPodStatus(refOf(w));
      check(notRunningOffline(status), () => `getPodStatus says ${describeStatus(status)}`);
      if (hasStatusNotifier(rig.provider))
        check(rig.pushedFor(w.pod, since).length > 0, "no status pushed for the new pod");
    });
    const online = rig.mark();
    for (const s of rig.pushedFor(w.pod, since))
      check(notRunningOffline(s), `a status pushed while the device was away says ${describeStatus(s)}`);
    await rig.setOnline(device, true);
    await rig.waitRunning(w, online);
  });

/** Two updates while the device is away: on reconnect the latest runs; the one between never does. */
export const offlineLatestWins = (target: Target) =>
  runScenario(target, "offline: the latest of two updates runs", async (rig) => {
    const device = rig.devices[0];
    const v1 = rig.workload("latest");
    await rig.create(v1);
    await rig.waitRunning(v1);
    await rig.setOnline(device, false);
    const since = rig.mark();
    const v2 = rig.next(v1, 2);
    const v3 = rig.next(v1, 3);
    await rig.update(v2);
    await rig.update(v3);
    const listed = await rig.listed(v3.pod);
    check(listed?.hash === v3.hash, `while away, listPods says ${listed?.hash ?? "nothing"}, not the latest`);
    const newApps = new Set([...v2.apps, ...v3.apps].map((a) => a.name));
    const runsNew = (s: WorkloadStatus) =>
      s.apps.some((a) => newApps.has(a.name) && a.state.kind === "running");
    const status = await rig.provider.getPodStatus(refOf(v3));
    check(
      status !== undefined && !runsNew(status),
      () => `while away, getPodStatus says ${describeStatus(status)}`,
    );
    const online = rig.mark();
    for (const s of rig.pushedFor(v3.pod, since))
      check(!runsNew(s), `while away, a pushed status says ${describeStatus(s)}`);
    await rig.setOnline(device, true);
    await rig.waitRunning(v3, online);
    await rig.settle();
    const between = v2.apps.map((a) => a.name);
    for (const s of rig.pushedFor(v3.pod, since)) {
      const ran = s.apps.find((a) => between.includes(a.name) && a.state.kind === "running");
      check(ran === undefined, `the intermediate version ran: ${describeStatus(s)}`);
    }
    check((await rig.listed(v3.pod))?.hash === v3.hash, "listPods lost the latest hash");
  });

/**
 * A delete while the device is away is a tombstone: deletePod resolves at once; the deletion is
 * not reported while the app may still run (grace 30 s, device away); on reconnect it is.
 */
export const offlineDelete = (target: Target) =>
  runScenario(target, "offline: a delete waits for the device", async (rig) => {
    const device = rig.devices[0];
    const w = rig.workload("tomb", { terminationGracePeriodSeconds: 30 });
    await rig.create(w);
    await rig.waitRunning(w);
    await rig.setOnline(device, false);
    const since = rig.mark();
    await rig.delete(refOf(w), 30);
    // A round trip on another device (when there is one): time for a premature report to show.
    if (rig.devices[1] !== device) await rig.settle(rig.devices[1]);
    if (hasDeletionNotifier(rig.provider))
      check(
        rig.deletionsOf(w.pod, since) === 0,
        `the deletion of ${key(w.pod)} was reported while its device was away, within its grace period`,
      );
    await rig.setOnline(device, true);
    await rig.waitDeleted(w.pod, since);
  });

/**
 * No callback after `stop` resolved, even with work in flight when it was called: the provider is
 * stopped right after a create and a delete resolved, a new instance runs a round trip through
 * the device (the old one had that long to misbehave), and the rig's checks report anything late.
 */
export const quietAfterStop = (target: Target) =>
  runScenario(target, "callbacks: none after stop", async (rig) => {
    if (!hasLifecycle(rig.provider)) return;
    const a = rig.workload("inflight-a");
    const b = rig.workload("inflight-b");
    await rig.create(a);
    await rig.waitRunning(a);
    await rig.create(b);
    await rig.delete(refOf(a), 0);
    await rig.restart();
    await rig.settle();
    await rig.waitDeleted(a.pod, 0, { notice: false });
    await rig.waitRunning(b);
  });

/** DeviceInventory: every target device is listed, and presence changes are reported. */
export const deviceInventory = (target: Target) =>
  runScenario(target, "device inventory", async (rig) => {
    const provider = rig.provider;
    if (!hasDeviceInventory(provider)) return;
    const listed = await provider.listDevices();
    for (const id of rig.target.devices) {
      const info = listed.find((d) => d.id === id);
      check(info !== undefined, `listDevices lacks ${id}`);
      check(info.connected, `listDevices says ${id} is not connected`);
    }
    const device = rig.devices[0];
    for (const online of [false, true]) {
      const since = rig.mark();
      await rig.setOnline(device, online);
      await rig.waitFor(`${device} reported ${online ? "back" : "away"}`, async () => {
        const changed = rig.deviceChanges.filter((c) => c.seq > since && c.value.id === device).at(-1);
        check(changed?.value.connected === online, `watchDevices said ${String(changed?.value.connected)}`);
        const info = (await provider.listDevices()).find((d) => d.id === device);
        check(info?.connected === online, `listDevices says connected=${String(info?.connected)}`);
      });
    }
  });

/** Lifecycle: start resolved (the rig awaited it); stop resolves, and again when called twice. */
export const lifecycle = (target: Target) =>
  runScenario(target, "lifecycle", async (rig) => {
    const provider = rig.provider;
    if (!hasLifecycle(provider)) return;
    const w = rig.workload("life");
    await rig.create(w);
    await rig.waitRunning(w);
    await rig.delete(refOf(w), 0);
    await rig.stop();
    await provider.stop();
  });
