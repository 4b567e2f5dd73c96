/**
 * Secrets without list or watch, with the real CLI (mock provider) on the harness identity, which
 * has exactly the Helm chart's RBAC (`get` on Secrets, nothing more): with
 * `pods.secretRefreshSeconds: 2`, an edit of a mounted Secret reaches the device within about the
 * refresh interval, a pod whose mandatory Secret is created later starts, and the API server's
 * audit log shows devicelet reading Secrets only by GET.
 */
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { PersistedState } from "../../providers/mock/state-file.ts";
import { startDevicelet, type RunningDevicelet } from "../support/devicelet.ts";
import { eventually } from "../support/eventually.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import { testenvDir, uniqueName } from "../support/testenv.ts";
import { isReady, pod, type PodJson } from "../support/workloads.ts";

const id = uniqueName("secttl");
const ns = id;
const REFRESH_SECONDS = 2;
let devicelet: RunningDevicelet;

beforeAll(async () => {
  await kubectl(["create", "namespace", ns]);
  devicelet = await startDevicelet({
    id,
    provider: { devices: { count: 1, idPrefix: id }, appStartDelayMs: 0 },
    core: { pods: { statusDebounceMs: 50, secretRefreshSeconds: REFRESH_SECONDS } },
    expectNodes: 1,
  });
});

afterAll(async () => {
  await devicelet.stop();
  await kubectl(["delete", "namespace", ns, "--wait=false"]);
});

const secret = (name: string, value: string) => `apiVersion: v1
kind: Secret
metadata: { name: ${name}, namespace: ${ns} }
stringData: { token: "${value}" }
`;

/** The content of `file` of the pod's first app, as the mock device was last asked to run it. */
function deviceFile(podName: string, file: string): string | undefined {
  // Written debounced after the device took the workload: absent until its first write.
  if (!existsSync(devicelet.stateFile)) return undefined;
  const state = JSON.parse(readFileSync(devicelet.stateFile, "utf8")) as PersistedState;
  const found = state.pods
    .find((p) => p.workload.pod.namespace === ns && p.workload.pod.name === podName)
    ?.workload.apps[0]?.files.find((f) => f.path === file);
  if (!found) return undefined;
  return found.encoding === "base64" ? Buffer.from(found.content, "base64").toString() : found.content;
}

describe("Secrets read by GET on a refresh interval", () => {
  it("an edit of a mounted Secret reaches the device within about the interval", async () => {
    await apply(secret("creds", "one"));
    await apply(
      pod({
        namespace: ns,
        name: "mounted",
        testId: id,
        spec: `  containers:
    - name: app
      image: example/app:1
      volumeMounts: [{ name: creds, mountPath: /etc/creds }]
  volumes: [{ name: creds, secret: { secretName: creds } }]`,
      }),
    );
    await eventually(async () =>
      expect(isReady(await getJson<PodJson>(["pod", "mounted", "-n", ns]))).toBe(true),
    );
    await eventually(() => expect(deviceFile("mounted", "/etc/creds/token")).toBe("one"));

    await apply(secret("creds", "two"));
    // Only the 2 s refresh brings the edit within this wait: there is no watch on Secrets, and the
    // default refresh (60 s) and the pods' resync come later. (Usually it takes the interval plus
    // the reconcile and the mock's debounced state write; a time limit here would measure CI.)
    await eventually(() => expect(deviceFile("mounted", "/etc/creds/token")).toBe("two"), {
      timeoutMs: 30_000,
    });
  });

  it("a pod whose mandatory Secret is created later starts once it exists", async () => {
    await apply(
      pod({
        namespace: ns,
        name: "waiting",
        testId: id,
        spec: `  containers:
    - name: app
      image: example/app:1
      env: [{ name: TOKEN, valueFrom: { secretKeyRef: { name: later, key: token } } }]`,
      }),
    );
    await eventually(async () => {
      const p = await getJson<PodJson>(["pod", "waiting", "-n", ns]);
      expect(p.status.containerStatuses?.[0]?.state.waiting?.reason).toBe("CreateContainerConfigError");
    });
    await apply(secret("later", "now"));
    await eventually(
      async () => expect(isReady(await getJson<PodJson>(["pod", "waiting", "-n", ns]))).toBe(true),
      {
        timeoutMs: 30_000,
      },
    );
  });

  it("devicelet reads Secrets only by GET: the audit log holds no list or watch of them", async () => {
    // The audit log is written in batches: a request made now shows up once all before it has.
    const marker = new Date().toISOString();
    await kubectl(["get", "namespace", ns, "-o", "name"]);
    const log = path.join(testenvDir, "audit.log");
    type Entry = {
      stageTimestamp: string;
      verb: string;
      user: { username: string };
      objectRef?: { resource?: string; namespace?: string };
    };
    const secretReads = await eventually(() => {
      const lines = readFileSync(log, "utf8").split("\n");
      const entries = lines
        .filter((l) => l.includes(ns) || l.includes('"resource":"secrets"'))
        .map((l) => JSON.parse(l) as Entry);
      expect(entries.some((e) => e.user.username !== "devicelet" && e.stageTimestamp >= marker)).toBe(true);
      return entries.filter((e) => e.user.username === "devicelet" && e.objectRef?.resource === "secrets");
    });
    // Every devicelet of the run shares the harness user: none of them listed or watched Secrets.
    expect(secretReads.filter((e) => e.verb !== "get" && e.verb !== "create" && e.verb !== "update")).toEqual(
      [],
    );
    expect(secretReads.filter((e) => e.objectRef?.namespace === ns).length).toBeGreaterThan(0);
  });
});
