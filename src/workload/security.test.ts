import type { V1Pod } from "../kube/types.ts";
import { describe, expect, it } from "vitest";
import { PodFeature } from "../provider/types.ts";
import { checkSupported, requiredFeatures } from "./features.ts";
import type { Plain } from "./shape.ts";
import { app, ok, opts, pod } from "./test-fixtures.ts";
import { translatePod } from "./translate.ts";

type Spec = Partial<Plain<V1Pod>["spec"]>;
const withContext = (container: object, podLevel?: object, more: Spec = {}) =>
  pod(
    { securityContext: container },
    { more: { ...(podLevel === undefined ? {} : { securityContext: podLevel }), ...more } },
  );

describe("translatePod: securityContext", () => {
  it("merges the pod's context into the container's, the container winning (as Kubernetes)", () => {
    const p = withContext(
      {
        runAsUser: 1001,
        readOnlyRootFilesystem: false,
        allowPrivilegeEscalation: false,
        capabilities: { drop: ["ALL"], add: [] },
        seccompProfile: { type: "Unconfined" },
      },
      {
        runAsUser: 2000,
        runAsGroup: 3000,
        runAsNonRoot: true,
        fsGroup: 4000,
        supplementalGroups: [5000, 5001],
        seccompProfile: { type: "RuntimeDefault" },
      },
    );
    expect(app(translatePod(p, opts())).securityContext).toEqual({
      runAsUser: 1001,
      runAsGroup: 3000,
      runAsNonRoot: true,
      seccompProfile: { type: "Unconfined" },
      readOnlyRootFilesystem: false,
      allowPrivilegeEscalation: false,
      capabilities: { drop: ["ALL"] },
      fsGroup: 4000,
      supplementalGroups: [5000, 5001],
    });
  });

  it("leaves it out when nothing is set, so workload hashes of such pods do not change", () => {
    const bare = ok(translatePod(pod({}), opts()));
    for (const p of [
      withContext({}, {}),
      withContext({ privileged: false, capabilities: {} }, { supplementalGroups: [] }),
    ]) {
      const w = ok(translatePod(p, opts()));
      expect(w.apps[0]).not.toHaveProperty("securityContext");
      expect(w.hash).toBe(bare.hash);
    }
    expect(ok(translatePod(withContext({ runAsUser: 1 }), opts())).hash).not.toBe(bare.hash);
  });
});

describe("features: securityContext", () => {
  it("needs the SecurityContext feature for every set field, each with its path", () => {
    const p = withContext({ runAsUser: 1, capabilities: { drop: ["ALL"] } }, { fsGroup: 2 });
    expect(requiredFeatures(p)).toEqual([
      { feature: PodFeature.SecurityContext, field: "spec.securityContext.fsGroup" },
      { feature: PodFeature.SecurityContext, field: "spec.containers[0].securityContext.runAsUser" },
      { feature: PodFeature.SecurityContext, field: "spec.containers[0].securityContext.capabilities" },
    ]);
    expect(checkSupported(p, [PodFeature.SecurityContext], "mqtt")).toBeUndefined();
    expect(checkSupported(p, [], "x")?.message).toBe(
      "spec.securityContext.fsGroup, spec.containers[0].securityContext.runAsUser, spec.containers[0].securityContext.capabilities are not supported by provider x",
    );
  });

  it("refuses fields no device can honour, whatever the provider declares", () => {
    const all = Object.values(PodFeature);
    const refused = (p: Plain<V1Pod>) => checkSupported(p, all, "mqtt")?.message;
    expect(refused(withContext({}, { seLinuxOptions: { level: "s0:c1" } }))).toBe(
      "spec.securityContext.seLinuxOptions is not supported by provider mqtt",
    );
    expect(refused(withContext({}, { sysctls: [{ name: "net.core.somaxconn", value: "1024" }] }))).toBe(
      "spec.securityContext.sysctls is not supported by provider mqtt",
    );
    expect(refused(withContext({ appArmorProfile: { type: "RuntimeDefault" } }))).toBe(
      "spec.containers[0].securityContext.appArmorProfile is not supported by provider mqtt",
    );
    expect(refused(withContext({ procMount: "Unmasked" }))).toBe(
      "spec.containers[0].securityContext.procMount is not supported by provider mqtt",
    );
    expect(refused(withContext({ seccompProfile: { type: "Localhost", localhostProfile: "p.json" } }))).toBe(
      "spec.containers[0].securityContext.seccompProfile is not supported by provider mqtt",
    );
    expect(
      refused(withContext({ windowsOptions: { runAsUserName: "x" } }, { fsGroupChangePolicy: "Always" })),
    ).toBe(
      "spec.securityContext.fsGroupChangePolicy, spec.containers[0].securityContext.windowsOptions are not supported by provider mqtt",
    );
    // A value of the wrong shape is refused rather than read as unset.
    expect(refused(withContext({ runAsUser: -1 }))).toBe(
      "spec.containers[0].securityContext.runAsUser is not supported by provider mqtt",
    );
    // What the API server defaults, or asks for nothing, passes.
    expect(refused(withContext({ procMount: "Default", privileged: false }, {}))).toBeUndefined();
  });
});
