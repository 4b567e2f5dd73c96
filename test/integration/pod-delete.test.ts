/**
 * Deletes in Kubernetes' sense, with the real CLI, a real Mosquitto and a simulated device: a pod
 * whose device is offline stays Terminating (condition `devicelet.dev/StopConfirmed=False`) past
 * its grace period, so the StatefulSet controller never starts a second instance; once the device
 * is back and reports the app stopped, the old object goes and the replacement runs.
 *
 * A pod deleted while devicelet was down, and whose grace period ran out before devicelet came back,
 * gets the whole grace period from devicelet's stop request: its online device confirms the stop
 * and the pod goes, with no status written as "waiting for the device" in between.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { eventually, expectContinuous } from "../support/eventually.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import { auditWrites } from "../support/leader.ts";
import { barePod } from "../support/mqtt.ts";
import { mqttScene } from "../support/scene.ts";
import { uniqueName } from "../support/testenv.ts";
import { condition, isReady, type PodJson } from "../support/workloads.ts";

const id = uniqueName("pdel");
const ns = id;
const gw = `${id}-gw`;
const scene = mqttScene({ id, devices: [{ id: gw, kind: "gateway" }] });

// start() resolves once the device is a node.
beforeAll(() => scene.start());
afterAll(() => scene.stop());

const statefulSet = `apiVersion: apps/v1
kind: StatefulSet
metadata: { name: x, namespace: ${ns} }
spec:
  replicas: 1
  serviceName: x
  selector: { matchLabels: { app: x } }
  template:
    metadata: { labels: { app: x } }
    spec:
      nodeSelector: { kubernetes.io/hostname: ${gw} }
      tolerations: [{ key: virtual-kubelet.io/provider, operator: Exists, effect: NoSchedule }]
      terminationGracePeriodSeconds: 2
      containers:
        - { name: app, image: example/x:1 }
`;

const instances = async () =>
  (await getJson<{ items: PodJson[] }>(["pods", "-n", ns, "-l", "app=x"])).items.filter(
    (p) => p.metadata.name === "x-0",
  );

describe("a one-replica StatefulSet on a device that goes offline", () => {
  it("never runs a second instance while the first is not confirmed stopped", async () => {
    await apply(statefulSet);
    const first = await eventually(async () => {
      const [p] = await instances();
      expect(p && isReady(p)).toBe(true);
      return p as PodJson;
    });
    const uid = first.metadata.uid;
    await scene.device(gw).goOffline();
    await eventually(
      async () =>
        expect(condition((await instances())[0] as PodJson, "devicelet.dev/DeviceConnected")?.status).toBe(
          "False",
        ),
      { timeoutMs: 30_000 },
    );
    await kubectl(["delete", "pod", "x-0", "-n", ns, "--wait=false"]);

    // The grace period (2 s) passes; the old object stays, waiting for the device, and no x-0 of
    // another uid exists. Watched for five times the grace period.
    await eventually(async () => {
      const [p] = await instances();
      expect(p?.metadata.uid).toBe(uid);
      expect(condition(p as PodJson, "devicelet.dev/StopConfirmed")).toMatchObject({
        status: "False",
        reason: "WaitingForDevice",
      });
      // Written from the cached status, which keeps devicelet's own container IDs as one marker:
      // the API server has the ID.
      const statuses = (p as { status: { containerStatuses?: { containerID?: string }[] } }).status
        .containerStatuses;
      expect(statuses?.map((c) => c.containerID)).toEqual([`device://${ns}/x-0/app`]);
    });
    const from = Date.now();
    const until = from + 10_000;
    /** When each look answered. */
    const polls: number[] = [];
    while (polls.length === 0 || (polls.at(-1) ?? 0) < until) {
      const pods = await instances();
      expect(pods.map((p) => p.metadata.uid)).toEqual([uid]);
      expect(pods[0]?.metadata.deletionTimestamp).toBeDefined();
      polls.push(Date.now());
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
    expectContinuous(polls, { from: polls[0] ?? from, to: until, maxGapMs: 5_000 });
    expect(scene.device(gw).runningPods()).toContain(uid); // still running there, as far as it knows

    await scene.device(gw).goOnline();
    await eventually(() => expect(scene.device(gw).runningPods()).not.toContain(uid), { timeoutMs: 30_000 });
    const replacement = await eventually(
      async () => {
        const pods = await instances();
        expect(pods).toHaveLength(1);
        expect(pods[0]?.metadata.uid).not.toBe(uid);
        expect(isReady(pods[0] as PodJson)).toBe(true);
        return pods[0] as PodJson;
      },
      { timeoutMs: 60_000 },
    );
    expect(scene.device(gw).runningPods()).toEqual([replacement.metadata.uid]);
  });
});

describe("a pod deleted while devicelet is down, past its grace period when devicelet is back", () => {
  it("is stopped on its online device and removed, with no status written in between", async () => {
    await apply(barePod({ namespace: ns, testId: id, name: "late", node: gw, graceSeconds: 1 }));
    const pod = await eventually(async () => {
      const p = await getJson<PodJson>(["pod", "late", "-n", ns]);
      expect(isReady(p)).toBe(true);
      return p;
    });
    const uid = pod.metadata.uid;
    expect(scene.device(gw).runningPods()).toContain(uid);

    const killedAt = Date.now();
    await scene.devicelet.kill();
    await kubectl(["delete", "pod", "late", "-n", ns, "--wait=false"]);
    // Twice the grace period: devicelet first sees the pod with its deletionTimestamp behind it.
    await new Promise((resolve) => setTimeout(resolve, 2_000));
    await scene.devicelet.restart();

    await eventually(
      async () => {
        const names = (await getJson<{ items: PodJson[] }>(["pods", "-n", ns])).items.map(
          (p) => p.metadata.name,
        );
        expect(names).not.toContain("late");
      },
      { timeoutMs: 30_000 },
    );
    expect(scene.device(gw).runningPods()).not.toContain(uid);
    // devicelet's writes on the pod since the delete: the delete that removes it, and no status.
    const writes = auditWrites((e) => e.resource === "pods" && e.namespace === ns && e.name === "late");
    expect(writes.filter((e) => e.at >= killedAt).map((e) => `${e.verb} ${e.subresource}`.trim())).toEqual([
      "delete",
    ]);
  });
});
