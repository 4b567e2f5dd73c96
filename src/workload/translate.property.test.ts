import type { V1Pod } from "../kube/types.ts";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { Plain } from "./shape.ts";
import { cm, opts, secret, store } from "./test-fixtures.ts";
import { referencedObjects, translatePod } from "./translate.ts";

describe("translatePod: robustness", () => {
  const key = fc.constantFrom(
    "name",
    "image",
    "value",
    "key",
    "path",
    "items",
    "optional",
    "prefix",
    "toString",
    "__proto__",
  );
  const loose = fc.letrec((tie) => ({
    value: fc.oneof(
      { depthSize: "small" },
      fc.anything({ maxDepth: 1 }),
      fc.array(tie("value"), { maxLength: 3 }),
      fc.dictionary(key, tie("value"), { maxKeys: 4 }),
    ),
  })).value;
  // Mostly well-typed, sometimes missing, sometimes anything at all.
  const field = <T>(arb: fc.Arbitrary<T>) =>
    fc.oneof(
      { arbitrary: arb, weight: 8 },
      { arbitrary: loose, weight: 1 },
      { arbitrary: fc.constant(undefined), weight: 1 },
    );
  const name = fc.constantFrom("cfg", "tls", "gone");
  const envVar = fc.record({
    name: field(fc.constantFrom("A", "B", "")),
    value: field(fc.constantFrom("$(A)", "$$", "x", "")),
    valueFrom: field(
      fc.record({
        configMapKeyRef: field(
          fc.record({
            name: field(name),
            key: field(fc.constantFrom("a", "bin", "k")),
            optional: field(fc.boolean()),
          }),
        ),
        secretKeyRef: field(
          fc.record({
            name: field(name),
            key: field(fc.constantFrom("k", "x")),
            optional: field(fc.boolean()),
          }),
        ),
        fieldRef: field(
          fc.record({
            fieldPath: field(
              fc.constantFrom("metadata.name", "metadata.labels['a']", "status.podIP", "bogus"),
            ),
          }),
        ),
        resourceFieldRef: field(
          fc.record({
            resource: field(fc.constantFrom("limits.cpu", "requests.memory", "x")),
            divisor: field(fc.constantFrom("1m", "1Mi", "0", "bad")),
            containerName: field(fc.constantFrom("app", "nope")),
          }),
        ),
      }),
    ),
  });
  const refSource = fc.record({
    name: field(name),
    optional: field(fc.boolean()),
    prefix: field(fc.string()),
  });
  const items = field(
    fc.array(
      fc.record({
        key: field(fc.constantFrom("a", "k", "bin")),
        path: field(fc.constantFrom("a", "../x", "d/f", "")),
        mode: field(fc.integer()),
      }),
    ),
  );
  const container = (strict: boolean) =>
    fc.record({
      name: strict ? fc.constant("app") : field(fc.constantFrom("app", "")),
      image: strict ? fc.constant("img:1") : field(fc.constant("img:1")),
      command: field(fc.array(fc.constantFrom("$(A)", "run"))),
      env: field(fc.array(envVar, { maxLength: 4 })),
      envFrom: field(
        fc.array(
          fc.record({
            prefix: field(fc.string()),
            configMapRef: field(refSource),
            secretRef: field(refSource),
          }),
          { maxLength: 2 },
        ),
      ),
      volumeMounts: field(
        fc.array(
          fc.record({
            name: field(fc.constantFrom("v", "w")),
            mountPath: field(fc.constantFrom("/m", "rel")),
            subPath: field(fc.constantFrom("a", "..", "")),
            subPathExpr: field(fc.constantFrom("$(A)")),
          }),
        ),
      ),
      resources: field(
        fc.record({
          limits: field(fc.dictionary(fc.constantFrom("cpu", "memory"), fc.constantFrom("1", "100m", "bad"))),
        }),
      ),
    });
  const volume = fc.record({
    name: field(fc.constantFrom("v", "w")),
    configMap: field(
      fc.record({
        name: field(name),
        items,
        optional: field(fc.boolean()),
        defaultMode: field(fc.integer()),
      }),
    ),
    secret: field(fc.record({ secretName: field(name), items, optional: field(fc.boolean()) })),
    projected: field(
      fc.record({
        sources: field(
          fc.array(fc.oneof(loose, fc.record({ configMap: field(refSource), secret: field(refSource) }))),
        ),
      }),
    ),
    downwardAPI: field(
      fc.record({
        items: field(
          fc.array(
            fc.oneof(
              loose,
              fc.record({
                path: field(fc.constantFrom("p", "")),
                fieldRef: field(fc.record({ fieldPath: field(fc.string()) })),
              }),
            ),
          ),
        ),
      }),
    ),
  });
  const podArb = (strict: boolean) =>
    fc.record({
      metadata: strict
        ? fc.record({
            name: fc.constant("p"),
            namespace: fc.constant("ns"),
            labels: field(fc.dictionary(fc.string(), fc.string())),
          })
        : field(fc.record({ name: field(fc.constantFrom("p")), namespace: field(fc.constantFrom("ns")) })),
      spec: strict
        ? fc.record({
            containers: fc.array(container(true), { minLength: 1, maxLength: 2 }),
            volumes: field(fc.array(volume, { maxLength: 2 })),
            restartPolicy: field(fc.string()),
          })
        : field(
            fc.record({
              containers: field(fc.array(field(container(false)), { maxLength: 3 })),
              volumes: field(fc.array(volume, { maxLength: 2 })),
            }),
          ),
    });
  const lookups = store([cm("cfg", { a: "1", toString: "2" }, { bin: "AAE=" })], [secret("tls", { k: "v" })]);

  const check = (input: unknown) => {
    const r = translatePod(input as Plain<V1Pod>, opts(lookups));
    expect(["ok", "configError"]).toContain(r.kind);
    if (r.kind === "configError") expect(r.message).not.toMatch(/^cannot translate pod/);
    else expect(r.workload.hash).toMatch(/^[0-9a-f]{64}$/);
    expect(() => referencedObjects(input as Plain<V1Pod>)).not.toThrow();
    return r;
  };

  it("never throws on arbitrary, partly malformed pod-shaped objects", () => {
    fc.assert(
      fc.property(
        fc.oneof({ arbitrary: podArb(false), weight: 4 }, { arbitrary: loose, weight: 1 }),
        (input) => {
          check(input);
        },
      ),
      { numRuns: 1000 },
    );
  });

  it("never throws when the skeleton is sound and the details are not", () => {
    const kinds = new Set<string>();
    fc.assert(
      fc.property(podArb(true), (input) => {
        kinds.add(check(input).kind);
      }),
      { numRuns: 1500 },
    );
    expect([...kinds].sort()).toEqual(["configError", "ok"]);
  });
});
