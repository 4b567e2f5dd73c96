/**
 * Spec changes to a pod the device already runs: `kubectl debug` adds an ephemeral container
 * (through the pod's `ephemeralcontainers` subresource, which is how the API server takes it), a
 * field the provider does not support. The pod must not be marked Failed while its app keeps
 * running: devicelet records a Warning Event and ignores the new field.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startDevicelet, type RunningDevicelet } from "../support/devicelet.ts";
import { eventually } from "../support/eventually.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import { uniqueName } from "../support/testenv.ts";
import { isReady, pod, type PodJson } from "../support/workloads.ts";

const id = uniqueName("pspec");
const ns = id;
let devicelet: RunningDevicelet;

beforeAll(async () => {
  await kubectl(["create", "namespace", ns]);
  devicelet = await startDevicelet({
    id,
    provider: { devices: { count: 1, idPrefix: id }, appStartDelayMs: 0 },
    expectNodes: 1,
  });
});

afterAll(async () => {
  await devicelet.stop();
  await kubectl(["delete", "namespace", ns, "--wait=false"]);
});

describe("a new unsupported field on a running pod", () => {
  it("is ignored with an Event; the pod stays Running and its app keeps running", async () => {
    await apply(
      pod({
        namespace: ns,
        name: "held",
        testId: id,
        spec: "  containers:\n    - { name: app, image: example/app:1 }",
      }),
    );
    const running = await eventually(async () => {
      const p = await getJson<PodJson>(["pod", "held", "-n", ns]);
      expect(isReady(p)).toBe(true);
      return p;
    });
    await kubectl([
      "patch",
      "pod",
      "held",
      "-n",
      ns,
      "--subresource=ephemeralcontainers",
      "--type=strategic",
      "-p",
      JSON.stringify({ spec: { ephemeralContainers: [{ name: "debugger", image: "example/debug:1" }] } }),
    ]);
    // devicelet saw the change: it says it ignores the field.
    await eventually(
      async () => {
        const events = await getJson<{ items: { reason: string; involvedObject: { uid?: string } }[] }>([
          "events",
          "-n",
          ns,
        ]);
        expect(
          events.items.some(
            (e) => e.reason === "UnsupportedFieldIgnored" && e.involvedObject.uid === running.metadata.uid,
          ),
        ).toBe(true);
      },
      { timeoutMs: 30_000 },
    );
    // From then on, sampled for ten seconds: still Running and Ready, the same pod, app running.
    const phases: string[] = [];
    for (let i = 0; i < 10; i++) {
      const p = await getJson<PodJson>(["pod", "held", "-n", ns]);
      expect(p.metadata.uid).toBe(running.metadata.uid);
      phases.push(`${p.status.phase}/${isReady(p) ? "ready" : "unready"}`);
      await new Promise((r) => setTimeout(r, 1_000));
    }
    expect(new Set(phases)).toEqual(new Set(["Running/ready"]));
    expect(
      devicelet.mockState().pods.find((h) => h.workload.pod.uid === running.metadata.uid)?.running,
    ).toBeTruthy();
  });
});
