/**
 * `apps[].securityContext` in the desired document: the MQTT provider declares the feature, carries
 * the effective context, and leaves the field out (same document, same hash) for pods without one.
 */
import { describe, expect, it } from "vitest";
import { desiredContentHash, encodeMessage } from "../../src/protocol/codec.ts";
import type { DesiredPod } from "../../src/protocol/types.ts";
import { checkSupported } from "../../src/workload/features.ts";
import { ok, opts, pod } from "../../src/workload/test-fixtures.ts";
import { translatePod } from "../../src/workload/translate.ts";
import { MOCK_DEFAULT_SUPPORTS } from "../mock/schema.ts";
import { MQTT_DEFAULT_SUPPORTS } from "./schema.ts";
import { toDesiredPod } from "./translate.ts";

const withContext = (container: object, podLevel?: object) =>
  pod({ securityContext: container }, podLevel === undefined ? {} : { more: { securityContext: podLevel } });
const desired = (p: ReturnType<typeof pod>) => toDesiredPod(ok(translatePod(p, opts())));
const encode = (p: DesiredPod) =>
  encodeMessage({
    protocol: 1,
    kind: "desired",
    deviceId: "dev-1",
    epoch: "e",
    generation: 1,
    issuedAt: new Date(0).toISOString(),
    pods: [p],
    tombstones: [],
    contentHash: desiredContentHash([p], []),
  });

describe("mqtt: apps[].securityContext", () => {
  it("is declared by the MQTT provider; the mock refuses such pods, naming the field", () => {
    const p = withContext({ runAsNonRoot: true });
    expect(checkSupported(p, MQTT_DEFAULT_SUPPORTS, "mqtt")).toBeUndefined();
    expect(checkSupported(p, MOCK_DEFAULT_SUPPORTS, "mock")).toEqual({
      field: "spec.containers[0].securityContext.runAsNonRoot",
      message: "spec.containers[0].securityContext.runAsNonRoot is not supported by provider mock",
    });
  });

  it("carries the effective context, which the schema accepts", () => {
    const d = desired(withContext({ runAsUser: 1000, capabilities: { drop: ["ALL"] } }, { fsGroup: 1000 }));
    expect(d.apps[0]?.securityContext).toEqual({
      runAsUser: 1000,
      capabilities: { drop: ["ALL"] },
      fsGroup: 1000,
    });
    expect(() => encode(d)).not.toThrow();
    const app = { ...d.apps[0], securityContext: { runAsUser: 1, seLinuxOptions: { level: "s0" } } };
    const bad = { ...d, apps: [app] } as unknown as DesiredPod;
    expect(() => encode(bad)).toThrow(/securityContext/);
  });

  it("is absent for pods that set nothing: their document and device hash stay as before", () => {
    const bare = desired(pod({}));
    const empty = desired(withContext({ privileged: false }, {}));
    expect(empty.apps[0]).not.toHaveProperty("securityContext");
    expect(empty).toEqual(bare);
    expect(desired(withContext({ runAsUser: 1 })).hash).not.toBe(bare.hash);
  });
});
