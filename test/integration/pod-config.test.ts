/**
 * Config changes reach devices, with the real CLI, a real Mosquitto and a simulated device: a
 * ConfigMap mounted as a volume, edited, becomes a new desired document (the file's new content),
 * twice with the device online; edited twice while it is offline, the device applies only the
 * latest, once, on reconnect. env taken from the same ConfigMap keeps its value from the pod's
 * start, as with a kubelet. Reconciles read the ConfigMap from the cache, not with a GET each.
 */
import { readFileSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { DesiredDocument } from "../../src/protocol/types.ts";
import { eventually } from "../support/eventually.ts";
import { apply, getJson, kubectl } from "../support/kubectl.ts";
import { retainedDesired } from "../support/mqtt.ts";
import { mqttScene } from "../support/scene.ts";
import { testenvDir, uniqueName } from "../support/testenv.ts";
import { isReady, pod, type PodJson } from "../support/workloads.ts";

const id = uniqueName("pcfg");
const ns = id;
const gw = `${id}-gw`;
const scene = mqttScene({ id, devices: [{ id: gw, kind: "gateway" }] });

// start() resolves once the device is a node.
beforeAll(() => scene.start());
afterAll(() => scene.stop());

const configMap = (content: string) => `apiVersion: v1
kind: ConfigMap
metadata: { name: cfg, namespace: ${ns} }
data: { app.conf: "${content}", mode: "${content}" }
`;

/** The app's file and env in the retained document, with the document's generation. */
async function delivered(): Promise<{ doc: DesiredDocument; file?: string; mode?: string }> {
  const doc = await retainedDesired(scene.broker.url, gw);
  if (!doc) throw new Error("no retained document yet");
  const app = doc.pods[0]?.apps[0];
  const file = app?.files.find((f) => f.path === "/etc/app/app.conf");
  return { doc, file: file && "content" in file ? file.content : undefined, mode: app?.env.MODE };
}

interface AuditEntry {
  stage: string;
  stageTimestamp: string;
  verb: string;
  user: { username: string };
  objectRef?: { resource: string; namespace?: string; name?: string };
}

/** This test's namespace's entries of the harness API server's audit log. */
const auditLines = () =>
  readFileSync(path.join(testenvDir, "audit.log"), "utf8")
    .split("\n")
    .filter((line) => line.includes(ns))
    .map((line) => JSON.parse(line) as AuditEntry);

/** GETs of the ConfigMap by devicelet. */
function configMapGets(): number {
  return auditLines().filter((e) => {
    return (
      e.stage === "ResponseComplete" &&
      e.user.username === "devicelet" &&
      e.verb === "get" &&
      e.objectRef?.resource === "configmaps" &&
      e.objectRef.namespace === ns &&
      e.objectRef.name === "cfg"
    );
  }).length;
}

describe("a mounted ConfigMap, edited", () => {
  it("reaches the device online, and only the latest of two offline edits is applied, once", async () => {
    await apply(configMap("v1"));
    await apply(
      pod({
        namespace: ns,
        name: "app",
        testId: id,
        node: gw,
        spec: `  containers:
    - name: app
      image: example/app:1
      env: [{ name: MODE, valueFrom: { configMapKeyRef: { name: cfg, key: mode } } }]
      volumeMounts: [{ name: conf, mountPath: /etc/app }]
  volumes: [{ name: conf, configMap: { name: cfg } }]`,
      }),
    );
    await eventually(async () =>
      expect(isReady(await getJson<PodJson>(["pod", "app", "-n", ns]))).toBe(true),
    );
    expect(await delivered()).toMatchObject({ file: "v1", mode: "v1" });

    for (const content of ["v2", "v3"]) {
      await apply(configMap(content));
      const { doc } = await eventually(async () => {
        const now = await delivered();
        expect(now).toMatchObject({ file: content, mode: "v1" }); // env stays as at start
        return now;
      });
      await eventually(() =>
        expect(scene.device(gw).appliedGenerations).toContainEqual({
          epoch: doc.epoch,
          generation: doc.generation,
        }),
      );
    }

    await scene.device(gw).goOffline();
    await eventually(
      async () => {
        const node = await getJson<{ status: { conditions: { type: string; status: string }[] } }>([
          "node",
          gw,
        ]);
        expect(node.status.conditions.find((c) => c.type === "DeviceConnected")?.status).toBe("False");
      },
      { timeoutMs: 30_000 },
    );
    const before = scene.device(gw).appliedGenerations.length;
    await apply(configMap("v4"));
    await eventually(async () => expect((await delivered()).file).toBe("v4"));
    await apply(configMap("v5"));
    const latest = await eventually(async () => {
      const now = await delivered();
      expect(now.file).toBe("v5");
      return now.doc;
    });
    expect(scene.device(gw).appliedGenerations).toHaveLength(before);

    await scene.device(gw).goOnline();
    await eventually(() => expect(scene.device(gw).appliedGenerations.length).toBeGreaterThan(before), {
      timeoutMs: 30_000,
    });
    await eventually(async () =>
      expect(isReady(await getJson<PodJson>(["pod", "app", "-n", ns]))).toBe(true),
    );
    const after = scene.device(gw).appliedGenerations.slice(before);
    expect(after[0]).toEqual({ epoch: latest.epoch, generation: latest.generation });
    expect(after.filter((g) => g.generation === latest.generation)).toHaveLength(1);

    // Five versions of the ConfigMap; many more reconciles (status changes, presence, edits), and
    // at most one GET per version. The audit log is written in batches: a marker request made now
    // shows up once everything before it is in the file.
    const marker = new Date().toISOString();
    await kubectl(["get", "pod", "app", "-n", ns, "-o", "name"]);
    await eventually(() =>
      expect(auditLines().some((e) => e.user.username !== "devicelet" && e.stageTimestamp >= marker)).toBe(
        true,
      ),
    );
    expect(configMapGets()).toBeLessThanOrEqual(5);
  });
});
