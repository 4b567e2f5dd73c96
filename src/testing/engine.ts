/**
 * The engine layer of the conformance kit: the real devicelet engine (`runEngine`) in this
 * process, with the target's provider, against a real control plane (etcd, kube-apiserver,
 * controller-manager, scheduler; see ./controlplane). Where the contract layer asks "does each call
 * keep its promise", this one asks "does devicelet, built on this provider, do the right thing to
 * pods and nodes", asserting on what the API server holds.
 *
 *   // test/integration/conformance-engine-foo.test.ts
 *   import { describeEngineConformance } from "devicelet/provider/testing";
 *   describeEngineConformance({
 *     name: "foo", devices: ["dev-0", "dev-1"], image: "example/app:1",
 *     create: (context) => plugin.create(fooConfig, context),
 *     setDeviceOnline: (provider, id, online) => fooLab.setOnline(id, online),
 *   });
 *
 * Scenarios (each waits for end states; none sleeps):
 * - a pod the scheduler places (no nodeName) is scheduled while its device is away, and runs only
 *   once the device is back; with a provider that reports device sync, its node then shows
 *   DeviceInSync=True (label `devicelet.dev/in-sync=true`);
 * - an offline device keeps its node Ready (DeviceConnected=False), its pods bound, nothing evicted;
 * - changes made while a device is away (a pod replaced, a mounted ConfigMap edited) reach it once,
 *   as their latest version, and the replaced pod never runs;
 * - a pod deleted while its device is away stays Terminating, past its grace period, until the
 *   device is back and stopped it;
 * - a devicelet restart (a new engine with a new provider from `target.create`, same durable store)
 *   creates nothing again, updates nothing to anything but the workload it held, and no app starts
 *   again (same container start time and restart count).
 *
 * Needs: `create` returning the provider itself (not a promise), as a plugin's `create` does; the
 * state the provider keeps outside the store (a file, retained messages) found again by a second
 * instance. The suite takes a few minutes; its hooks and tests carry their own timeouts.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { hasDeviceSync, PodFeature, type PodLifecycleProvider } from "../provider/types.ts";
import { conditionOf, eventually, isRunning, type PodJson } from "./engine-cluster.ts";
import { EngineSuite, type EngineConformanceOptions } from "./engine-suite.ts";
import type { ProviderTarget } from "./target.ts";

export type { EngineConformanceOptions } from "./engine-suite.ts";

const DEVICE_CONNECTED = "devicelet.dev/DeviceConnected";
/** When each container of a pod last started, and how often it restarted. */
const containerStarts = (pod: PodJson) =>
  (pod.status.containerStatuses ?? []).map((c) => ({
    name: c.name,
    startedAt: c.state.running?.startedAt,
    restartCount: c.restartCount,
  }));
const STOP_CONFIRMED = "devicelet.dev/StopConfirmed";

export function describeEngineConformance<P extends PodLifecycleProvider>(
  target: ProviderTarget<P>,
  options: EngineConformanceOptions = {},
): void {
  describe(`engine conformance: ${target.name}`, () => {
    const suite = new EngineSuite(target, options);
    const patience = suite.patienceMs;
    const timeout = 10 * patience;
    const [first] = target.devices;
    const second = target.devices[1] ?? first;
    const away = new Set<string>();

    // A cold control-plane build takes minutes; a warm start seconds.
    beforeAll(() => suite.start(), 15 * 60_000);
    afterAll(() => suite.stop(), 5 * patience);
    // A failed scenario must not leave a device away for the next one.
    afterEach(async () => {
      for (const deviceId of away) await setOnline(deviceId, true);
    }, 3 * patience);

    const pod = (name: string) => suite.cluster.pod(suite.namespace, name);
    const apply = (o: Parameters<typeof suite.podManifest>[0]) => suite.cluster.apply(suite.podManifest(o));
    const deviceConnected = async (deviceId: string) =>
      conditionOf(await suite.cluster.node(suite.nodeOf(deviceId)), "DeviceConnected")?.status;

    /** Takes a device away or back, and waits until its node says so (the engine noticed). */
    async function setOnline(deviceId: string, online: boolean) {
      await target.setDeviceOnline(suite.running.provider, deviceId, online);
      if (online) away.delete(deviceId);
      else away.add(deviceId);
      await eventually(
        async () => expect(await deviceConnected(deviceId)).toBe(online ? "True" : "False"),
        patience,
      );
    }

    const runningPod = (name: string) =>
      eventually(async () => {
        const p = await pod(name);
        expect(isRunning(p), `${name} Running and Ready`).toBe(true);
        expect(conditionOf(p, DEVICE_CONNECTED)?.status).toBe("True");
        return p;
      }, 2 * patience);

    /** Scheduled to the device's node and handed to the provider, but not running: the device is away. */
    const queuedPod = (name: string, deviceId: string) =>
      eventually(async () => {
        const p = await pod(name);
        expect(p.spec.nodeName).toBe(suite.nodeOf(deviceId));
        expect(conditionOf(p, DEVICE_CONNECTED)).toMatchObject({ status: "False", reason: "DeviceOffline" });
        expect(p.status.phase).toBe("Pending");
        expect(conditionOf(p, "Ready")?.status).toBe("False");
        expect(suite.running.recorder.lastHash(p.metadata.uid), "handed to the provider").toBeDefined();
        return p;
      }, patience);

    it(
      "runs a pod the scheduler placed only once its device says so",
      async () => {
        await setOnline(first, false);
        await apply({ name: "placed", deviceId: first });
        const queued = await queuedPod("placed", first);
        expect(suite.running.recorder.everRunning(queued.metadata.uid)).toBe(false);

        await setOnline(first, true);
        const placed = await runningPod("placed");
        expect(placed.metadata.uid).toBe(queued.metadata.uid);
        expect(placed.spec.nodeName).toBe(suite.nodeOf(first));
        // A provider that reports device sync shows the device in sync once it runs what it was given.
        if (hasDeviceSync(suite.running.provider)) {
          await eventually(async () => {
            const n = await suite.cluster.node(suite.nodeOf(first));
            expect(conditionOf(n, "DeviceInSync")).toMatchObject({ status: "True", reason: "InSync" });
            expect(n.metadata.labels?.["devicelet.dev/in-sync"]).toBe("true");
          }, patience);
        }
      },
      timeout,
    );

    it(
      "keeps an offline device's node Ready and its pods bound, evicts nothing, and recovers",
      async () => {
        await apply({ name: "steady", deviceId: second });
        const steady = await runningPod("steady");
        const node = suite.nodeOf(second);

        await setOnline(second, false);
        await eventually(async () => {
          const n = await suite.cluster.node(node);
          expect(conditionOf(n, "Ready")?.status).toBe("True");
          expect(conditionOf(n, "DeviceConnected")).toMatchObject({
            status: "False",
            reason: "DeviceOffline",
          });
          const p = await pod("steady");
          expect(p.metadata.uid).toBe(steady.metadata.uid);
          expect(p.spec.nodeName).toBe(node);
          expect(p.metadata.deletionTimestamp).toBeUndefined();
          expect(conditionOf(p, DEVICE_CONNECTED)?.status).toBe("False");
          expect(conditionOf(p, "Ready")?.status).toBe("False");
        }, patience);

        await setOnline(second, true);
        const back = await runningPod("steady");
        expect(back.metadata.uid).toBe(steady.metadata.uid);
        const n = await suite.cluster.node(node);
        expect(conditionOf(n, "Ready")?.status).toBe("True");
        expect((n.spec.taints ?? []).map((t) => t.key)).not.toContain("node.kubernetes.io/unreachable");
        // The outage itself is no reason to apply anything again.
        expect(suite.running.recorder.writes.filter((w) => w.uid === steady.metadata.uid)).toHaveLength(1);
      },
      timeout,
    );

    it(
      "applies only the latest of the changes made while the device was away",
      async () => {
        const { supports } = suite.running.engine.provider;
        const withFiles =
          supports.includes(PodFeature.ConfigMapVolumes) && supports.includes(PodFeature.VolumeMounts);
        if (withFiles)
          await suite.cluster.kubectl([
            "create",
            "configmap",
            "settings",
            "-n",
            suite.namespace,
            "--from-literal=mode=one",
          ]);
        await setOnline(second, false);

        // A pod replaced by another before the device ever saw it.
        await apply({ name: "replaced", deviceId: second });
        const replaced = await queuedPod("replaced", second);
        await suite.cluster.kubectl(["delete", "pod", "replaced", "-n", suite.namespace, "--wait=false"]);
        await apply({ name: "replacement", deviceId: second });
        await queuedPod("replacement", second);

        // A mounted ConfigMap edited after the pod was handed over: the engine passes the change on.
        let configured: PodJson | undefined;
        if (withFiles) {
          await apply({
            name: "configured",
            deviceId: second,
            container: { volumeMounts: [{ name: "settings", mountPath: "/etc/settings" }] },
            spec: { volumes: [{ name: "settings", configMap: { name: "settings" } }] },
          });
          configured = await queuedPod("configured", second);
          const uid = configured.metadata.uid;
          const firstHash = suite.running.recorder.lastHash(uid);
          await suite.cluster.kubectl([
            "patch",
            "configmap",
            "settings",
            "-n",
            suite.namespace,
            "--type=merge",
            "-p",
            JSON.stringify({ data: { mode: "two" } }),
          ]);
          await eventually(() => expect(suite.running.recorder.lastHash(uid)).not.toBe(firstHash), patience);
        }

        await setOnline(second, true);
        const replacement = await runningPod("replacement");
        if (configured) await runningPod("configured");
        await eventually(async () => {
          expect(await suite.cluster.podNames(suite.namespace)).not.toContain("replaced");
          const held = await suite.providerPods();
          expect(held.has(replaced.metadata.uid), "replaced pod dropped by the provider").toBe(false);
          const { recorder } = suite.running;
          expect(held.get(replacement.metadata.uid)).toBe(recorder.lastHash(replacement.metadata.uid));
          if (configured)
            expect(held.get(configured.metadata.uid)).toBe(recorder.lastHash(configured.metadata.uid));
        }, patience);
        expect(suite.running.recorder.everRunning(replaced.metadata.uid), "the replaced pod ran").toBe(false);
      },
      timeout,
    );

    it(
      "keeps a pod deleted while its device is away Terminating until the device has stopped it",
      async () => {
        await apply({ name: "doomed", deviceId: first });
        const { uid } = (await runningPod("doomed")).metadata;
        await setOnline(first, false);
        await suite.cluster.kubectl(["delete", "pod", "doomed", "-n", suite.namespace, "--wait=false"]);
        const terminating = await eventually(async () => {
          const p = await pod("doomed");
          expect(p.metadata.uid).toBe(uid);
          expect(conditionOf(p, STOP_CONFIRMED)).toMatchObject({
            status: "False",
            reason: "WaitingForDevice",
          });
          return p;
        }, patience);
        // Its grace period (2 s) is over, and it is still there: a tombstone the provider holds.
        const graceEnds = Date.parse(terminating.metadata.deletionTimestamp ?? "");
        await eventually(() => expect(Date.now()).toBeGreaterThan(graceEnds), patience);
        const still = await pod("doomed");
        expect(still.metadata.uid).toBe(uid);
        expect(conditionOf(still, STOP_CONFIRMED)?.status).toBe("False");
        expect((await suite.providerPods()).has(uid), "the provider holds the delete").toBe(true);

        await setOnline(first, true);
        await eventually(async () => {
          expect(await suite.cluster.podNames(suite.namespace)).not.toContain("doomed");
          expect((await suite.providerPods()).has(uid)).toBe(false);
        }, 2 * patience);
      },
      timeout,
    );

    it(
      "re-applies nothing after a devicelet restart with a new provider instance",
      async () => {
        await apply({ name: "survivor", deviceId: first });
        await runningPod("survivor");
        const given = suite.running.recorder;
        const held = await suite.providerPods();
        const before = (
          await suite.cluster.getJson<{ items: PodJson[] }>(["pods", "-n", suite.namespace])
        ).items.filter(isRunning);
        expect(before.map((p) => p.metadata.name)).toContain("survivor");
        for (const p of before)
          expect(
            containerStarts(p).map((c) => c.startedAt),
            `${p.metadata.name} start times`,
          ).not.toContain(undefined);

        const { engine, recorder } = await suite.restartEngine();
        // The new engine works (a new pod runs), and has been through every pod it holds.
        await apply({ name: "after-restart", deviceId: first });
        await runningPod("after-restart");
        await eventually(() => {
          const queue = engine.pods.stats().queue;
          expect(queue.processed).toBeGreaterThan(held.size);
          expect(queue.pending + queue.active).toBe(0);
        }, patience);

        // Nothing created again. An update is tolerated only with the very workload the first
        // engine gave (the contract makes that a no-op): a provider that cannot keep the engine's
        // hash across a restart gets each pod once more, unchanged.
        expect(recorder.writes.filter((w) => held.has(w.uid) && w.method === "createPod")).toEqual([]);
        for (const w of recorder.writes.filter((w) => held.has(w.uid)))
          expect(w.hash, `update of ${w.name} after the restart`).toBe(given.lastHash(w.uid));
        const after = await suite.providerPods();
        for (const uid of held.keys()) expect(after.get(uid), `held ${uid}`).toBe(given.lastHash(uid));
        // And no app was started again: same pod, same container start, no restart counted.
        for (const p of before) {
          const now = await pod(p.metadata.name);
          expect(now.metadata.uid).toBe(p.metadata.uid);
          expect(isRunning(now), `${p.metadata.name} still Running`).toBe(true);
          expect(containerStarts(now), `${p.metadata.name} not started again`).toEqual(containerStarts(p));
        }
      },
      timeout,
    );
  });
}
