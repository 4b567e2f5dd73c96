import type { V1Pod } from "../kube/types.ts";
import { describe, expect, it } from "vitest";
import { PodFeature } from "../provider/types.ts";
import type { Plain } from "./shape.ts";
import { checkSupported, requiredFeatures, unsupportedFields } from "./features.ts";

const plain: Plain<V1Pod> = {
  metadata: { name: "p", namespace: "ns" },
  spec: {
    containers: [
      {
        name: "app",
        image: "sensor:1.0",
        command: ["run"],
        args: ["--fast"],
        env: [{ name: "A", value: "1" }],
        envFrom: [{ configMapRef: { name: "cm" } }],
        resources: {},
      },
    ],
  },
};

const injectedTokenVolume = {
  name: "kube-api-access-x7k2p",
  projected: {
    defaultMode: 420,
    sources: [
      { serviceAccountToken: { expirationSeconds: 3607, path: "token" } },
      { configMap: { name: "kube-root-ca.crt", items: [{ key: "ca.crt", path: "ca.crt" }] } },
      { downwardAPI: { items: [{ path: "namespace", fieldRef: { fieldPath: "metadata.namespace" } }] } },
    ],
  },
};

describe("requiredFeatures", () => {
  it("finds nothing in a pod of plain containers", () => {
    expect(requiredFeatures(plain)).toEqual([]);
    expect(checkSupported(plain, [], "mock")).toBeUndefined();
  });

  it("names every feature with its concrete field path", () => {
    const pod: Plain<V1Pod> = {
      metadata: { name: "p" },
      spec: {
        hostNetwork: true,
        initContainers: [{ name: "init", image: "i", volumeMounts: [{ name: "cfg", mountPath: "/c" }] }],
        containers: [
          {
            name: "a",
            image: "a",
            ports: [{ containerPort: 80 }],
            livenessProbe: { exec: { command: ["true"] } },
            startupProbe: { exec: { command: ["true"] } },
            lifecycle: { preStop: { exec: { command: ["x"] } } },
            securityContext: { privileged: true },
            resources: { limits: { cpu: "1" } },
          },
          { name: "b", image: "b", volumeMounts: [{ name: "host", mountPath: "/h" }] },
        ],
        volumes: [
          { name: "cfg", configMap: { name: "c" } },
          { name: "host", hostPath: { path: "/dev" } },
          { name: "tmp", emptyDir: {} },
          { name: "s", secret: { secretName: "s" } },
          { name: "d", downwardAPI: { items: [] } },
          { name: "pv", persistentVolumeClaim: { claimName: "c" } },
          { name: "proj", projected: { sources: [] } },
        ],
      },
    };
    expect(requiredFeatures(pod)).toEqual([
      { feature: PodFeature.InitContainers, field: "spec.initContainers" },
      { feature: PodFeature.VolumeMounts, field: "spec.initContainers[0].volumeMounts" },
      { feature: PodFeature.Ports, field: "spec.containers[0].ports" },
      { feature: PodFeature.Probes, field: "spec.containers[0].livenessProbe" },
      { feature: PodFeature.Probes, field: "spec.containers[0].startupProbe" },
      { feature: PodFeature.Lifecycle, field: "spec.containers[0].lifecycle" },
      { feature: PodFeature.Privileged, field: "spec.containers[0].securityContext.privileged" },
      { feature: PodFeature.ResourceLimits, field: "spec.containers[0].resources" },
      { feature: PodFeature.VolumeMounts, field: "spec.containers[1].volumeMounts" },
      { feature: PodFeature.ConfigMapVolumes, field: "spec.volumes[0].configMap" },
      { feature: PodFeature.HostPathVolumes, field: "spec.volumes[1].hostPath" },
      { feature: PodFeature.EmptyDirVolumes, field: "spec.volumes[2].emptyDir" },
      { feature: PodFeature.SecretVolumes, field: "spec.volumes[3].secret" },
      { feature: PodFeature.DownwardAPIVolumes, field: "spec.volumes[4].downwardAPI" },
      { feature: PodFeature.PersistentVolumeClaims, field: "spec.volumes[5].persistentVolumeClaim" },
      { feature: PodFeature.ProjectedVolumes, field: "spec.volumes[6].projected" },
      { feature: PodFeature.HostNetwork, field: "spec.hostNetwork" },
    ]);
  });

  it("ignores the injected service-account volume and its mounts", () => {
    const pod: Plain<V1Pod> = {
      metadata: { name: "p" },
      spec: {
        containers: [
          {
            name: "a",
            image: "a",
            volumeMounts: [
              { name: injectedTokenVolume.name, mountPath: "/var/run/secrets/kubernetes.io/serviceaccount" },
            ],
          },
        ],
        volumes: [injectedTokenVolume],
      },
    };
    expect(requiredFeatures(pod)).toEqual([]);
    expect(unsupportedFields(pod, "mock")).toEqual([]);
    expect(checkSupported(pod, [], "mock")).toBeUndefined();
  });

  it("does not mistake a user's token volume for the injected one", () => {
    const pod: Plain<V1Pod> = {
      metadata: { name: "p" },
      spec: {
        containers: [{ name: "a", image: "a" }],
        volumes: [{ name: "token", projected: { sources: [{ serviceAccountToken: { path: "t" } }] } }],
      },
    };
    expect(checkSupported(pod, [PodFeature.ProjectedVolumes], "mqtt")).toEqual({
      field: "spec.volumes[0].projected.sources[0].serviceAccountToken",
      message: "spec.volumes[0].projected.sources[0].serviceAccountToken is not supported by provider mqtt",
    });
  });
});

describe("checkSupported", () => {
  const pod: Plain<V1Pod> = {
    metadata: { name: "p" },
    spec: {
      containers: [{ name: "a", image: "a", volumeMounts: [{ name: "h", mountPath: "/h" }] }],
      volumes: [
        { name: "c", configMap: { name: "c" } },
        { name: "h", hostPath: { path: "/dev" } },
      ],
    },
  };

  it("accepts what the provider declares", () => {
    const all = [PodFeature.VolumeMounts, PodFeature.ConfigMapVolumes, PodFeature.HostPathVolumes];
    expect(checkSupported(pod, all, "mock")).toBeUndefined();
  });

  it("names the one field the provider lacks", () => {
    expect(checkSupported(pod, [PodFeature.VolumeMounts, PodFeature.ConfigMapVolumes], "mock")).toEqual({
      field: "spec.volumes[1].hostPath",
      message: "spec.volumes[1].hostPath is not supported by provider mock",
    });
  });

  it("names every field at once", () => {
    expect(checkSupported(pod, [], "mock")?.message).toBe(
      "spec.containers[0].volumeMounts, spec.volumes[0].configMap, spec.volumes[1].hostPath are not supported by provider mock",
    );
  });

  it("refuses fields that no feature covers", () => {
    const odd: Plain<V1Pod> = {
      metadata: { name: "p" },
      spec: {
        hostPID: true,
        containers: [
          {
            name: "a",
            image: "a",
            workingDir: "/srv",
            tty: true,
            env: [{ name: "X", valueFrom: { fileKeyRef: { path: "p", key: "k", volumeName: "v" } } }],
          },
        ],
        volumes: [{ name: "n", nfs: { server: "s", path: "/" } }],
      },
    };
    expect(unsupportedFields(odd, "mock").map((u) => u.field)).toEqual([
      "spec.hostPID",
      "spec.containers[0].workingDir",
      "spec.containers[0].tty",
      "spec.containers[0].env[0].valueFrom.fileKeyRef",
      "spec.volumes[0].nfs",
    ]);
    expect(checkSupported(odd, Object.values(PodFeature), "mock")?.field).toBe("spec.hostPID");
  });

  it("never throws on malformed input", () => {
    const junk = [
      null,
      1,
      "x",
      {},
      { spec: 1 },
      { spec: { containers: "no", volumes: [null, 2, { name: 3 }] } },
    ];
    for (const j of junk) expect(() => checkSupported(j as Plain<V1Pod>, [], "mock")).not.toThrow();
  });
});
