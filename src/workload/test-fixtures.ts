/**
 * Fixtures shared by the workload tests: a pod builder, ConfigMap/Secret builders and an in-memory
 * {@link ObjectLookups}. Test support only; nothing in the engine imports it.
 */
import type { V1ConfigMap, V1Container, V1Pod, V1Secret, V1Volume } from "../kube/types.ts";
import type { Workload } from "../provider/types.ts";
import type { ObjectLookups } from "./resolver.ts";
import type { Plain } from "./shape.ts";
import type { TranslateResult } from "./translate.ts";

export const b64 = (s: string) => Buffer.from(s, "utf8").toString("base64");

export function store(configMaps: Plain<V1ConfigMap>[] = [], secrets: Plain<V1Secret>[] = []): ObjectLookups {
  const find = <T extends { metadata?: { name?: string; namespace?: string } }>(
    list: T[],
    ns: string,
    name: string,
  ) => list.find((o) => o.metadata?.name === name && (o.metadata.namespace ?? "ns") === ns);
  return {
    configMap: (ns, name) => find(configMaps, ns, name),
    secret: (ns, name) => find(secrets, ns, name),
  };
}

export const cm = (
  name: string,
  data: Record<string, string>,
  binaryData?: Record<string, string>,
): Plain<V1ConfigMap> => ({
  metadata: { name, namespace: "ns" },
  data,
  ...(binaryData ? { binaryData } : {}),
});
export const secret = (name: string, data: Record<string, string>): Plain<V1Secret> => ({
  metadata: { name, namespace: "ns" },
  data: Object.fromEntries(Object.entries(data).map(([k, v]) => [k, b64(v)])),
});

export function pod(
  container: Partial<Plain<V1Container>>,
  extra: { volumes?: Plain<V1Volume>[]; more?: Partial<Plain<V1Pod>["spec"]> } = {},
): Plain<V1Pod> {
  return {
    metadata: {
      name: "sensor",
      namespace: "ns",
      uid: "uid-1",
      labels: { app: "sensor", tier: "edge" },
      annotations: { note: 'say "hi"' },
    },
    spec: {
      nodeName: "dev-1",
      serviceAccountName: "default",
      containers: [{ name: "app", image: "registry/sensor:1.2", ...container }],
      ...(extra.volumes ? { volumes: extra.volumes } : {}),
      ...extra.more,
    },
  };
}

export const opts = (lookups: ObjectLookups = store()) => ({
  deviceId: "Dev_1",
  nodeName: "dev-1",
  lookups,
  podIP: "10.0.0.7",
  hostIP: "192.0.2.1",
});

export function ok(result: TranslateResult): Workload {
  if (result.kind !== "ok") throw new Error(`expected ok, got ${result.message}`);
  return result.workload;
}
export const app = (result: TranslateResult) => {
  const first = ok(result).apps[0];
  if (first === undefined) throw new Error("no app");
  return first;
};
