import type { V1Volume } from "../kube/types.ts";
import { describe, expect, it } from "vitest";
import type { Plain } from "./shape.ts";
import { app, b64, cm, opts, pod, secret, store } from "./test-fixtures.ts";
import { translatePod } from "./translate.ts";

describe("translatePod: volumes", () => {
  const lookups = store(
    [cm("cfg", { "app.yaml": "level: info", "extra.txt": "x" }, { "logo.bin": b64("\u0000\u0001") })],
    [secret("tls", { "tls.crt": "CERT", "tls.key": "KEY" })],
  );

  it("mounts a whole ConfigMap, text and binary, with the default mode", () => {
    const files = app(
      translatePod(
        pod(
          { volumeMounts: [{ name: "c", mountPath: "/etc/app/" }] },
          { volumes: [{ name: "c", configMap: { name: "cfg" } }] },
        ),
        opts(lookups),
      ),
    ).files;
    expect(files).toEqual([
      { path: "/etc/app/app.yaml", content: "level: info", encoding: "utf8", mode: 0o644, secret: false },
      { path: "/etc/app/extra.txt", content: "x", encoding: "utf8", mode: 0o644, secret: false },
      {
        path: "/etc/app/logo.bin",
        content: b64("\u0000\u0001"),
        encoding: "base64",
        mode: 0o644,
        secret: false,
      },
    ]);
  });

  it("honours items, modes and subPath", () => {
    const volumes: Plain<V1Volume>[] = [
      {
        name: "c",
        configMap: {
          name: "cfg",
          defaultMode: 0o600,
          items: [
            { key: "app.yaml", path: "conf/app.yaml", mode: 0o400 },
            { key: "extra.txt", path: "e.txt" },
          ],
        },
      },
      { name: "s", secret: { secretName: "tls", items: [{ key: "tls.key", path: "key.pem" }] } },
    ];
    const files = app(
      translatePod(
        pod(
          {
            volumeMounts: [
              { name: "c", mountPath: "/etc/app" },
              { name: "c", mountPath: "/srv/app.yaml", subPath: "conf/app.yaml" },
              { name: "s", mountPath: "/etc/tls" },
            ],
          },
          { volumes },
        ),
        opts(lookups),
      ),
    ).files;
    expect(files).toEqual([
      {
        path: "/etc/app/conf/app.yaml",
        content: "level: info",
        encoding: "utf8",
        mode: 0o400,
        secret: false,
      },
      { path: "/etc/app/e.txt", content: "x", encoding: "utf8", mode: 0o600, secret: false },
      { path: "/srv/app.yaml", content: "level: info", encoding: "utf8", mode: 0o400, secret: false },
      // A Secret's file keeps only its owner bits: 0644 → 0600 (other apps share the device).
      { path: "/etc/tls/key.pem", content: b64("KEY"), encoding: "base64", mode: 0o600, secret: true },
    ]);
  });

  it("expands subPathExpr with the container env", () => {
    const files = app(
      translatePod(
        pod(
          {
            env: [{ name: "SUB", value: "conf" }],
            volumeMounts: [{ name: "c", mountPath: "/x", subPathExpr: "$(SUB)" }],
          },
          {
            volumes: [
              { name: "c", configMap: { name: "cfg", items: [{ key: "app.yaml", path: "conf/a.yaml" }] } },
            ],
          },
        ),
        opts(lookups),
      ),
    ).files;
    expect(files.map((f) => f.path)).toEqual(["/x/a.yaml"]);
  });

  it("builds downwardAPI and projected volumes", () => {
    const volumes: Plain<V1Volume>[] = [
      {
        name: "meta",
        downwardAPI: {
          items: [
            { path: "labels", fieldRef: { fieldPath: "metadata.labels" } },
            {
              path: "mem",
              resourceFieldRef: { containerName: "app", resource: "limits.memory", divisor: "1Mi" },
              mode: 0o444,
            },
          ],
        },
      },
      {
        name: "all",
        projected: {
          defaultMode: 0o640,
          sources: [
            { configMap: { name: "cfg", items: [{ key: "extra.txt", path: "extra" }] } },
            { secret: { name: "tls", items: [{ key: "tls.crt", path: "tls/crt" }] } },
            { downwardAPI: { items: [{ path: "name", fieldRef: { fieldPath: "metadata.name" } }] } },
            { configMap: { name: "absent", optional: true } },
          ],
        },
      },
    ];
    const r = translatePod(
      pod(
        {
          resources: { limits: { memory: "32Mi" } },
          volumeMounts: [
            { name: "meta", mountPath: "/meta" },
            { name: "all", mountPath: "/all" },
          ],
        },
        { volumes },
      ),
      opts(lookups),
    );
    expect(app(r).files).toEqual([
      {
        path: "/meta/labels",
        content: 'app="sensor"\ntier="edge"',
        encoding: "utf8",
        mode: 0o644,
        secret: false,
      },
      { path: "/meta/mem", content: "32", encoding: "utf8", mode: 0o444, secret: false },
      { path: "/all/extra", content: "x", encoding: "utf8", mode: 0o640, secret: false },
      { path: "/all/name", content: "sensor", encoding: "utf8", mode: 0o640, secret: false },
      { path: "/all/tls/crt", content: b64("CERT"), encoding: "base64", mode: 0o600, secret: true },
    ]);
    expect(r.events).toEqual([
      {
        type: "Warning",
        reason: "OptionalConfigMapNotFound",
        message: 'skipping optional volume "all": configmap "absent" not found',
      },
    ]);
  });

  it("fails on a missing mandatory volume object or item key, skips optional ones", () => {
    const missingObject = translatePod(
      pod({}, { volumes: [{ name: "v", secret: { secretName: "gone" } }] }),
      opts(lookups),
    );
    expect(missingObject).toMatchObject({
      kind: "configError",
      message: 'MountVolume.SetUp failed for volume "v" : secret "gone" not found',
      events: [{ type: "Warning", reason: "MandatorySecretNotFound", message: 'secret "gone" not found' }],
    });
    const missingKey = translatePod(
      pod({}, { volumes: [{ name: "v", configMap: { name: "cfg", items: [{ key: "nope", path: "n" }] } }] }),
      opts(lookups),
    );
    expect(missingKey).toMatchObject({
      kind: "configError",
      message: 'MountVolume.SetUp failed for volume "v" : configmap references non-existent config key: nope',
    });
    const optionalKey = translatePod(
      pod(
        { volumeMounts: [{ name: "v", mountPath: "/v" }] },
        {
          volumes: [
            { name: "v", configMap: { name: "cfg", optional: true, items: [{ key: "nope", path: "n" }] } },
          ],
        },
      ),
      opts(lookups),
    );
    expect(app(optionalKey).files).toEqual([]);
  });

  it("skips the injected service-account volume", () => {
    const r = translatePod(
      pod(
        {
          volumeMounts: [
            { name: "kube-api-access-abcde", mountPath: "/var/run/secrets/kubernetes.io/serviceaccount" },
          ],
        },
        {
          volumes: [
            {
              name: "kube-api-access-abcde",
              projected: {
                sources: [
                  { serviceAccountToken: { path: "token" } },
                  { configMap: { name: "kube-root-ca.crt" } },
                ],
              },
            },
          ],
        },
      ),
      opts(),
    );
    expect(app(r).files).toEqual([]);
    expect(r.events).toEqual([]);
  });
});
