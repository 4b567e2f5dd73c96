import type { V1Container } from "../kube/types.ts";
import { describe, expect, it } from "vitest";
import type { Plain } from "./shape.ts";
import { app, cm, ok, opts, pod, secret, store } from "./test-fixtures.ts";
import { referencedObjects, translatePod } from "./translate.ts";

describe("translatePod: basics", () => {
  it("carries identity, defaults and the container as an app", () => {
    const w = ok(
      translatePod(
        pod({ command: ["run"], args: ["-v"], ports: [{ containerPort: 80, name: "http" }] }),
        opts(),
      ),
    );
    expect(w.pod).toEqual({
      namespace: "ns",
      name: "sensor",
      uid: "uid-1",
      labels: { app: "sensor", tier: "edge" },
      annotations: { note: 'say "hi"' },
    });
    expect(w.nodeName).toBe("dev-1");
    expect(w.deviceId).toBe("Dev_1");
    expect(w.restartPolicy).toBe("Always");
    expect(w.terminationGracePeriodSeconds).toBe(30);
    expect(w.apps[0]).toMatchObject({
      name: "app",
      image: "registry/sensor:1.2",
      command: ["run"],
      args: ["-v"],
      env: {},
      secretEnv: [],
      files: [],
      ports: [{ name: "http", containerPort: 80, protocol: "TCP" }],
      resources: { requests: {}, limits: {} },
    });
    expect(Object.isFrozen(w.apps[0]?.env)).toBe(true);
  });

  it("honours restartPolicy and terminationGracePeriodSeconds", () => {
    const w = ok(
      translatePod(
        pod({}, { more: { restartPolicy: "OnFailure", terminationGracePeriodSeconds: 5 } }),
        opts(),
      ),
    );
    expect([w.restartPolicy, w.terminationGracePeriodSeconds]).toEqual(["OnFailure", 5]);
  });

  it("refuses a malformed pod with a configError, not an exception", () => {
    const r = translatePod({ metadata: { name: "x" }, spec: { containers: [{ name: "a" }] } }, opts());
    expect(r).toMatchObject({
      kind: "configError",
      message: "invalid pod: spec.containers[0].image is missing",
    });
  });
});

describe("translatePod: env", () => {
  it("expands $(VAR) against earlier variables, with $$ as an escape", () => {
    const a = app(
      translatePod(
        pod({
          env: [
            { name: "HOST", value: "broker" },
            { name: "URL", value: "mqtt://$(HOST):$(PORT)/$$(HOST)" },
            { name: "PORT", value: "1883" },
            { name: "EMPTY" },
          ],
          command: ["run", "--url=$(URL)"],
          args: ["$(PORT)", "$(NOPE)"],
        }),
        opts(),
      ),
    );
    expect(a.env).toEqual({ HOST: "broker", URL: "mqtt://broker:$(PORT)/$(HOST)", PORT: "1883", EMPTY: "" });
    expect(a.command).toEqual(["run", "--url=mqtt://broker:$(PORT)/$(HOST)"]);
    expect(a.args).toEqual(["1883", "$(NOPE)"]);
  });

  it("resolves configMapKeyRef and secretKeyRef, listing secret names", () => {
    const lookups = store([cm("cfg", { level: "debug" })], [secret("creds", { password: "s3cret" })]);
    const a = app(
      translatePod(
        pod({
          env: [
            { name: "LEVEL", valueFrom: { configMapKeyRef: { name: "cfg", key: "level" } } },
            { name: "PASS", valueFrom: { secretKeyRef: { name: "creds", key: "password" } } },
            { name: "DSN", value: "user:$(PASS)@db" },
          ],
        }),
        opts(lookups),
      ),
    );
    expect(a.env).toEqual({ LEVEL: "debug", PASS: "s3cret", DSN: "user:s3cret@db" });
    expect(a.secretEnv).toEqual(["DSN", "PASS"]);
  });

  it("resolves fieldRef paths", () => {
    const paths = [
      "metadata.name",
      "metadata.namespace",
      "metadata.uid",
      "metadata.labels['app']",
      "metadata.annotations['note']",
      "metadata.labels['missing']",
      "spec.nodeName",
      "spec.serviceAccountName",
      "status.podIP",
      "status.hostIP",
      "metadata.labels",
    ];
    const a = app(
      translatePod(
        pod({
          env: paths.map((fieldPath, i) => ({ name: `F${i}`, valueFrom: { fieldRef: { fieldPath } } })),
        }),
        opts(),
      ),
    );
    expect(Object.values(a.env)).toEqual([
      "sensor",
      "ns",
      "uid-1",
      "sensor",
      'say "hi"',
      "",
      "dev-1",
      "default",
      "10.0.0.7",
      "192.0.2.1",
      'app="sensor"\ntier="edge"',
    ]);
  });

  it("fails on an unsupported fieldRef path", () => {
    const r = translatePod(
      pod({ env: [{ name: "X", valueFrom: { fieldRef: { fieldPath: "spec.hostname" } } }] }),
      opts(),
    );
    expect(r).toMatchObject({ kind: "configError", message: "unsupported fieldPath: spec.hostname" });
  });

  it("resolves resourceFieldRef with divisors, falling back to allocatable for limits", () => {
    const container: Partial<Plain<V1Container>> = {
      resources: { requests: { cpu: "250m", memory: "64Mi" }, limits: { memory: "128Mi" } },
      env: [
        { name: "REQ_CPU", valueFrom: { resourceFieldRef: { resource: "requests.cpu" } } },
        { name: "REQ_CPU_M", valueFrom: { resourceFieldRef: { resource: "requests.cpu", divisor: "1m" } } },
        {
          name: "LIM_MEM_MI",
          valueFrom: { resourceFieldRef: { resource: "limits.memory", divisor: "1Mi" } },
        },
        { name: "REQ_MEM", valueFrom: { resourceFieldRef: { resource: "requests.memory" } } },
        { name: "LIM_CPU", valueFrom: { resourceFieldRef: { resource: "limits.cpu", divisor: "1m" } } },
      ],
    };
    const a = app(translatePod(pod(container), { ...opts(), allocatable: { cpu: "2" } }));
    expect(a.env).toEqual({
      REQ_CPU: "1",
      REQ_CPU_M: "250",
      LIM_MEM_MI: "128",
      REQ_MEM: "67108864",
      LIM_CPU: "2000",
    });
    expect(a.resources).toEqual({ requests: { cpu: "250m", memory: "64Mi" }, limits: { memory: "128Mi" } });
  });

  it("loads envFrom with prefixes, skipping invalid names with a Warning", () => {
    const lookups = store(
      [cm("cfg", { LEVEL: "info", "1bad": "x", "has space": "y" })],
      [secret("creds", { TOKEN: "t" })],
    );
    const r = translatePod(
      pod({
        envFrom: [
          { configMapRef: { name: "cfg" }, prefix: "CFG_" },
          { configMapRef: { name: "cfg" } },
          { secretRef: { name: "creds" } },
        ],
        env: [{ name: "LEVEL", value: "override-$(CFG_LEVEL)" }],
      }),
      opts(lookups),
    );
    const a = app(r);
    expect(a.env).toEqual({ CFG_1bad: "x", CFG_LEVEL: "info", LEVEL: "override-info", TOKEN: "t" });
    expect(a.secretEnv).toEqual(["TOKEN"]);
    expect(r.events).toEqual([
      {
        type: "Warning",
        reason: "InvalidEnvironmentVariableNames",
        message:
          "Keys [CFG_has space] from the EnvFrom configMap ns/cfg were skipped since they are considered invalid environment variable names.",
      },
      {
        type: "Warning",
        reason: "InvalidEnvironmentVariableNames",
        message:
          "Keys [1bad, has space] from the EnvFrom configMap ns/cfg were skipped since they are considered invalid environment variable names.",
      },
    ]);
  });

  it("ignores ConfigMap keys named like Object.prototype members", () => {
    const lookups = store([cm("cfg", {})]);
    const r = translatePod(
      pod({ env: [{ name: "X", valueFrom: { configMapKeyRef: { name: "cfg", key: "toString" } } }] }),
      opts(lookups),
    );
    expect(r).toMatchObject({
      kind: "configError",
      message: "couldn't find key toString in ConfigMap ns/cfg",
    });
  });
});

describe("translatePod: missing references", () => {
  it.each([
    ["configMapKeyRef", "configmap", "MandatoryConfigMapNotFound"],
    ["secretKeyRef", "secret", "MandatorySecretNotFound"],
  ] as const)("a mandatory %s to a missing object is a configError", (ref, kind, reason) => {
    const r = translatePod(
      pod({ env: [{ name: "X", valueFrom: { [ref]: { name: "gone", key: "k" } } }] }),
      opts(),
    );
    expect(r).toEqual({
      kind: "configError",
      message: `${kind} "gone" not found`,
      events: [{ type: "Warning", reason, message: `${kind} "gone" not found` }],
    });
  });

  it.each([
    ["configMapKeyRef", "ConfigMap"],
    ["secretKeyRef", "Secret"],
  ] as const)("a mandatory %s to a missing key is a configError", (ref, label) => {
    const lookups = store([cm("obj", { other: "1" })], [secret("obj", { other: "1" })]);
    const r = translatePod(
      pod({ env: [{ name: "X", valueFrom: { [ref]: { name: "obj", key: "k" } } }] }),
      opts(lookups),
    );
    expect(r).toMatchObject({ kind: "configError", message: `couldn't find key k in ${label} ns/obj` });
    expect(r.events.map((e) => e.reason)).toEqual([`Mandatory${label}KeyNotFound`]);
  });

  it("optional references that are missing leave the variable unset and record Warnings", () => {
    const lookups = store([cm("cfg", {})]);
    const r = translatePod(
      pod({
        envFrom: [
          { configMapRef: { name: "nocm", optional: true } },
          { secretRef: { name: "nosecret", optional: true } },
        ],
        env: [
          { name: "A", valueFrom: { configMapKeyRef: { name: "cfg", key: "k", optional: true } } },
          { name: "B", valueFrom: { secretKeyRef: { name: "nosecret", key: "k", optional: true } } },
          { name: "C", value: "c" },
        ],
      }),
      opts(lookups),
    );
    expect(app(r).env).toEqual({ C: "c" });
    expect(r.events).toEqual([
      { type: "Warning", reason: "OptionalConfigMapNotFound", message: 'configmap "nocm" not found' },
      { type: "Warning", reason: "OptionalSecretNotFound", message: 'secret "nosecret" not found' },
      {
        type: "Warning",
        reason: "OptionalConfigMapKeyNotFound",
        message: 'skipping optional envvar "A": key "k" does not exist in configmap "cfg"',
      },
      {
        type: "Warning",
        reason: "OptionalSecretNotFound",
        message: 'skipping optional envvar "B": secret "nosecret" not found',
      },
    ]);
  });

  it("a mandatory envFrom to a missing Secret is a configError", () => {
    const r = translatePod(pod({ envFrom: [{ secretRef: { name: "creds" } }] }), opts());
    expect(r).toMatchObject({ kind: "configError", message: 'secret "creds" not found' });
    expect(r.events[0]?.reason).toBe("MandatorySecretNotFound");
  });
});

describe("translatePod: hash", () => {
  const make = (value: string, uid = "uid-1") => {
    const p = pod({
      env: [{ name: "LEVEL", valueFrom: { configMapKeyRef: { name: "cfg", key: "level" } } }],
      envFrom: [{ configMapRef: { name: "more" } }],
    });
    return translatePod(
      { ...p, metadata: { ...p.metadata, uid } },
      opts(store([cm("cfg", { level: value }), cm("more", { B: "2", A: "1" })])),
    );
  };

  it("is a stable sha256 hex that ignores the pod uid", () => {
    const a = ok(make("info"));
    expect(a.hash).toMatch(/^[0-9a-f]{64}$/);
    expect(ok(make("info")).hash).toBe(a.hash);
    expect(ok(make("info", "uid-2")).hash).toBe(a.hash);
  });

  it("changes when a ConfigMap value, a label or the node changes", () => {
    const base = ok(make("info")).hash;
    expect(ok(make("debug")).hash).not.toBe(base);
    const p = pod({});
    const h1 = ok(translatePod(p, opts())).hash;
    expect(
      ok(translatePod({ ...p, metadata: { ...p.metadata, labels: { app: "other" } } }, opts())).hash,
    ).not.toBe(h1);
    expect(ok(translatePod(p, { ...opts(), nodeName: "dev-2" })).hash).not.toBe(h1);
  });
});

describe("referencedObjects", () => {
  it("lists ConfigMaps and Secrets from env, envFrom and volumes", () => {
    const p = pod(
      {
        envFrom: [{ configMapRef: { name: "a" } }, { secretRef: { name: "s1" } }],
        env: [
          { name: "X", valueFrom: { configMapKeyRef: { name: "b", key: "k" } } },
          { name: "Y", valueFrom: { secretKeyRef: { name: "s2", key: "k" } } },
        ],
      },
      {
        volumes: [
          { name: "v1", configMap: { name: "c" } },
          { name: "v2", secret: { secretName: "s3" } },
          { name: "v3", projected: { sources: [{ configMap: { name: "a" } }, { secret: { name: "s4" } }] } },
          {
            name: "kube-api-access-1",
            projected: {
              sources: [{ serviceAccountToken: { path: "t" } }, { configMap: { name: "kube-root-ca.crt" } }],
            },
          },
        ],
      },
    );
    expect(referencedObjects(p)).toEqual({ configMaps: ["a", "b", "c"], secrets: ["s1", "s2", "s3", "s4"] });
  });
});

describe("translatePod: what replicas repeat", () => {
  const replica = (name: string, env: Plain<V1Container>["env"], lookups = store(), args?: string[]) => {
    const p = pod({ env, resources: { limits: { cpu: "500m" } }, ...(args ? { args } : {}) });
    p.metadata = { ...p.metadata, name, uid: `uid-${name}` };
    return ok(translatePod(p, opts(lookups)));
  };

  it("gives equal apps, labels and annotations one frozen copy, and keeps each pod its own", () => {
    const [a, b] = ["sensor-a", "sensor-b"].map((name) => replica(name, [{ name: "MODE", value: "x" }]));
    expect(a?.apps[0]).toBe(b?.apps[0]);
    // The list of apps too, when every app in it is shared.
    expect(a?.apps).toBe(b?.apps);
    expect(a?.pod.labels).toBe(b?.pod.labels);
    expect(a?.pod.annotations).toBe(b?.pod.annotations);
    expect(a?.pod).not.toBe(b?.pod);
    expect(a?.pod.name).toBe("sensor-a");
    // An app that differs (the downward API puts the pod's name in it) is its own; its parts are shared.
    const named = (name: string) =>
      replica(name, [{ name: "ME", valueFrom: { fieldRef: { fieldPath: "metadata.name" } } }]);
    const [c, d] = [named("sensor-c"), named("sensor-d")];
    expect(c.apps[0]).not.toBe(d.apps[0]);
    expect(c.apps[0]?.env).toEqual({ ME: "sensor-c" });
    expect(c.apps[0]?.resources).toBe(d.apps[0]?.resources);
  });

  it("never shares what came from a Secret", () => {
    const lookups = store([], [secret("creds", { password: "s3cret" })]);
    const env = [{ name: "PASS", valueFrom: { secretKeyRef: { name: "creds", key: "password" } } }];
    const [a, b] = ["sensor-a", "sensor-b"].map((name) => replica(name, env, lookups, ["--pass=$(PASS)"]));
    expect(a?.apps[0]?.env).toEqual({ PASS: "s3cret" });
    expect(a?.apps[0]?.args).toEqual(["--pass=s3cret"]);
    expect(a?.apps[0]).not.toBe(b?.apps[0]);
    expect(a?.apps).not.toBe(b?.apps);
    expect(a?.apps[0]?.env).not.toBe(b?.apps[0]?.env);
    // The value reaches args through $(PASS): those are not shared either.
    expect(a?.apps[0]?.args).not.toBe(b?.apps[0]?.args);
    expect(Object.isFrozen(a?.apps[0]?.env)).toBe(true);
    // What did not come from it still is.
    expect(a?.apps[0]?.resources).toBe(b?.apps[0]?.resources);
  });
});
