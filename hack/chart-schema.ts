/**
 * Keeps the `config` part of the chart's values.schema.json equal to devicelet's own schema, so
 * `helm install` refuses a bad `config.api.qps` (or any other key of a section the chart passes
 * through) naming it, instead of the pod failing at start. The sections the chart renders itself
 * (`health`, `metrics`, `kubelet`, `leaderElection`, `state`, `kubeconfig`) stay out of `config`;
 * `provider.config` stays a free object (each provider's schema differs; the chart's tests
 * validate the rendered config against it). Run it after a change to src/config/schema.ts; a unit
 * test (test/unit/chart.test.ts) fails while the file differs.
 *
 *   node hack/chart-schema.ts
 */
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { format, resolveConfig } from "prettier";
import { coreConfigSchema } from "../src/config/schema.ts";

export const valuesSchemaPath = path.resolve(import.meta.dirname, "../charts/devicelet/values.schema.json");

/** The sections of devicelet's config that `config` in the chart's values may set, as they are. */
export const PASSED_THROUGH = ["nodes", "api", "lease", "nodeStatus", "pods", "log"] as const;

interface ValuesSchema {
  properties: { config: { properties: Record<string, unknown> } };
}

/** `current` (the parsed values.schema.json) with its `config` sections taken from devicelet's schema. */
export function withCoreSections(current: ValuesSchema): ValuesSchema {
  const next = structuredClone(current);
  for (const key of PASSED_THROUGH) {
    next.properties.config.properties[key] = structuredClone(coreConfigSchema.properties[key]);
  }
  return next;
}

/** values.schema.json's text as it should be: the current file with the sections spliced, formatted. */
export async function expectedValuesSchemaText(): Promise<string> {
  const current = JSON.parse(readFileSync(valuesSchemaPath, "utf8")) as ValuesSchema;
  const options = (await resolveConfig(valuesSchemaPath)) ?? {};
  return format(JSON.stringify(withCoreSections(current)), { ...options, filepath: valuesSchemaPath });
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  writeFileSync(valuesSchemaPath, await expectedValuesSchemaText());
}
