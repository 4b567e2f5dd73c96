/**
 * A provider that reports a fatal error (ProviderContext.fail) stops devicelet the way SIGTERM
 * does, but with exit status 1 so that whatever runs it restarts it: the provider is stopped (the
 * mock writes its state file), nodes stay registered, and the log says why.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startDevicelet, type RunningDevicelet } from "../support/devicelet.ts";
import { eventually } from "../support/eventually.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import { uniqueName } from "../support/testenv.ts";
import { pod, type PodJson } from "../support/workloads.ts";

const id = uniqueName("fatal");
const ns = id;
const device = `${id}-0`;
let devicelet: RunningDevicelet;

beforeAll(async () => {
  await kubectl(["create", "namespace", ns]);
  devicelet = await startDevicelet({
    id,
    // Long enough for the pod below to start; the test waits for the exit, not for the time.
    provider: { devices: [{ id: device }], appStartDelayMs: 100, fatalErrorAfterMs: 15_000 },
    expectNodes: 1,
  });
});

afterAll(async () => {
  await devicelet.stop();
  await kubectl(["delete", "namespace", ns, "--wait=false"]);
});

describe("a fatal provider error", () => {
  it("stops devicelet with status 1 after stopping the provider, leaving its nodes registered", async () => {
    await apply(
      pod({
        namespace: ns,
        name: "app",
        testId: id,
        spec: "  containers:\n    - { name: app, image: example/app:1 }",
      }),
    );
    await eventually(async () => {
      const p = await getJson<PodJson>(["pod", "app", "-n", ns]);
      expect(p.status.phase).toBe("Running");
    });
    const code = await devicelet.exited();
    expect(code).toBe(1);
    const messages = devicelet.logLines().map((l) => l.msg);
    expect(messages).toContain("the provider reported a fatal error; stopping");
    expect(messages).toContain("devicelet stopped: the provider failed");
    expect(messages).not.toContain("devicelet stopped");
    // The provider's stop ran: the mock wrote its state, with the running pod in it.
    const state = devicelet.mockState();
    expect(state.pods.map((p) => p.workload.pod.name)).toEqual(["app"]);
    expect(state.pods[0]?.running).toBeDefined();
    const nodes = await getJson<{ items: unknown[] }>(["nodes", "-l", devicelet.nodeSelector]);
    expect(nodes.items).toHaveLength(1);
  });
});
