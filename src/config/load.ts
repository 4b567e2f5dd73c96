/**
 * Reading the configuration file: YAML → one ajv pass (core + the provider's schema) → semantic
 * cross-checks → a deep-frozen {@link DeviceletConfig}. Every problem found is reported at once in
 * a single {@link ConfigError}; nothing is half-applied.
 */
import { readFile } from "node:fs/promises";
import { isIP } from "node:net";
import { Ajv, type ErrorObject, type SchemaObject, type ValidateFunction } from "ajv";
import { isCollection, isPair, LineCounter, parseDocument, visit, type Document } from "yaml";
import { deepFreeze } from "../base/freeze.ts";
import { deviceLabelConfigProblems } from "../node/labels.ts";
import type { ConfigProblem } from "./problem.ts";
import { coreChecks, type ConfigCheck, type RuleProblem } from "./rules.ts";
import { coreConfigSchema, type DeviceletConfig } from "./schema.ts";

export type { ConfigProblem } from "./problem.ts";

/** Thrown when a configuration cannot be used; `problems` lists every issue, `message` prints them. */
export class ConfigError extends Error {
  readonly code = "DEVICELET_CONFIG_INVALID";
  readonly source: string;
  readonly problems: readonly ConfigProblem[];
  constructor(source: string, problems: readonly ConfigProblem[], options?: ErrorOptions) {
    const n = problems.length;
    const lines = problems.map((p) => `  ${formatProblem(p)}`);
    super(
      `invalid configuration ${source} (${n} problem${n === 1 ? "" : "s"}):\n${lines.join("\n")}`,
      options,
    );
    this.name = "ConfigError";
    this.source = source;
    this.problems = problems;
  }
}

/** `/api/qps: must be >= 1 (line 4)`; YAML syntax errors read `line 3, column 1: ...`. */
export const formatProblem = (p: ConfigProblem): string => {
  if (p.path === "" && p.column !== undefined) return `line ${p.line ?? 1}, column ${p.column}: ${p.message}`;
  if (p.path === "" && p.line === undefined) return p.message;
  return `${p.path === "" ? "/" : p.path}: ${p.message}${p.line === undefined ? "" : ` (line ${p.line})`}`;
};

/** A provider's configuration schema: a JSON Schema for an object, compiled into the same pass. */
export type ProviderConfigSchema = SchemaObject;

const registry = new Map<string, ProviderConfigSchema>();

/**
 * Makes `schema` validate `provider.config` whenever `provider.type === type`. Built-in providers
 * are registered by the CLI; a plugin package is imported after a first parse told its type, then
 * registered (or passed through {@link ParseOptions.providerSchemas}) and the file parsed again.
 * Registering a type twice replaces the schema.
 */
export const registerProviderSchema = (type: string, schema: ProviderConfigSchema): void => {
  registry.set(type, schema);
};

const checks = new WeakMap<SchemaObject, ConfigCheck>();

/**
 * Attaches rules a JSON Schema cannot state (relations between fields, files that must exist) to
 * `schema`: wherever that schema validates, in {@link parseConfig} or {@link validateWithSchema},
 * `check` then runs on the defaulted data and its problems are listed with the schema's. Paths
 * are relative to the object the schema validates. Attaching again replaces the rules.
 */
export const registerConfigCheck = (schema: SchemaObject, check: ConfigCheck): void => {
  checks.set(schema, check);
};

export interface ParseOptions {
  /** Provider schemas by type, consulted before the registry. */
  readonly providerSchemas?: Readonly<Record<string, ProviderConfigSchema>>;
}

/**
 * Keys that are mappings or lists (`? [a, b]: 1`): no configuration key is one, and turning them
 * into an object would stringify them with a process warning instead of a clear error.
 */
function collectionKeys(doc: Document, lineCounter: LineCounter): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  visit(doc, {
    Pair: (_key, pair) => {
      if (!isPair(pair) || !isCollection(pair.key)) return;
      const { line, col } = lineCounter.linePos(pair.key.range?.[0] ?? 0);
      problems.push({
        path: "",
        message: "a key must be a plain name, not a mapping or a list",
        line,
        column: col,
      });
    },
  });
  return problems;
}

/**
 * Reads and parses the file at `path`. Rejects with {@link ConfigError} when the file cannot be
 * read or is invalid; resolves to a deep-frozen config owned by the caller.
 */
export const loadConfig = async (path: string, options: ParseOptions = {}): Promise<DeviceletConfig> => {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    throw new ConfigError(path, [{ path: "", message: `cannot read file: ${(err as Error).message}` }], {
      cause: err,
    });
  }
  return parseConfig(text, path, options);
};

/**
 * Parses YAML `text` (named `sourceName` in messages), validates it against the core schema and
 * the provider's schema in one pass, fills defaults and returns it deep-frozen. Synchronous.
 * @throws ConfigError listing every YAML syntax error, or else every schema and cross-field problem.
 */
export const parseConfig = (
  text: string,
  sourceName: string,
  options: ParseOptions = {},
): DeviceletConfig => {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false });
  if (doc.errors.length > 0) {
    throw new ConfigError(
      sourceName,
      doc.errors.map((e) => {
        const { line, col } = lineCounter.linePos(e.pos[0]);
        return { path: "", message: `${e.message} (${e.code})`, line, column: col };
      }),
    );
  }
  const complexKeys = collectionKeys(doc, lineCounter);
  if (complexKeys.length > 0) throw new ConfigError(sourceName, complexKeys);
  let data: unknown;
  try {
    data = doc.toJS({ maxAliasCount: 100 });
  } catch (err) {
    throw new ConfigError(sourceName, [{ path: "", message: (err as Error).message }], { cause: err });
  }
  data ??= {};

  const providerSchema = providerSchemaFor(data, options);
  const validate = validatorFor(providerSchema);
  const problems: ConfigProblem[] = validate(data) ? [] : fromAjv(validate.errors ?? []);
  const providerCheck = providerSchema && checks.get(providerSchema);
  const providerConfig = (data as { provider?: { config?: unknown } } | null)?.provider?.config;
  problems.push(
    ...ruleProblems(problems, [
      ...coreChecks(data),
      ...deviceLabelConfigProblems(data),
      ...(providerCheck ? under("/provider/config", providerCheck(providerConfig)) : []),
    ]),
  );
  if (problems.length > 0) {
    const located = dedupe(problems).map(({ path, message }) => locate({ path, message }, doc, lineCounter));
    throw new ConfigError(sourceName, located);
  }
  return deepFreeze(data as DeviceletConfig);
};

/**
 * Validates `data` against one schema with the same ajv options, formats and messages as
 * {@link parseConfig}: for a provider checking its own config when constructed programmatically.
 * Returns a deep-frozen, defaulted copy (the input is not touched), for the caller to type.
 * @param basePath JSON pointer prefixed to problem paths, e.g. `/provider/config`.
 * @throws ConfigError listing every problem.
 */
export const validateWithSchema = (
  schema: SchemaObject,
  data: unknown,
  sourceName: string,
  basePath = "",
): unknown => {
  const copy: unknown = structuredClone(data);
  const validate = validatorFor(schema, true);
  const problems = validate(copy) ? [] : fromAjv(validate.errors ?? []);
  const check = checks.get(schema);
  const schemaProblems = problems.map((p) => ({ ...p, path: basePath + p.path }));
  schemaProblems.push(...ruleProblems(schemaProblems, under(basePath, check ? check(copy) : [])));
  if (schemaProblems.length > 0) throw new ConfigError(sourceName, dedupe(schemaProblems));
  return deepFreeze(copy);
};

const providerSchemaFor = (data: unknown, options: ParseOptions): ProviderConfigSchema | undefined => {
  const type = (data as { provider?: { type?: unknown } } | null)?.provider?.type;
  if (typeof type !== "string") return undefined;
  return Object.hasOwn(options.providerSchemas ?? {}, type)
    ? options.providerSchemas?.[type]
    : registry.get(type);
};

// One ajv instance per provider schema (the core schema carries an $id, and so may a provider's).
const validators = new WeakMap<ProviderConfigSchema, ValidateFunction>();
const standalone = new WeakMap<SchemaObject, ValidateFunction>();
const NO_PROVIDER: ProviderConfigSchema = {};

const validatorFor = (
  providerSchema: ProviderConfigSchema = NO_PROVIDER,
  alone = false,
): ValidateFunction => {
  const cache = alone ? standalone : validators;
  const cached = cache.get(providerSchema);
  if (cached) return cached;
  const ajv = new Ajv({ allErrors: true, useDefaults: true, verbose: true, allowUnionTypes: true });
  ajv.addFormat("ip", (s: string) => isIP(s) !== 0);
  ajv.addFormat("cidr", isCidr);
  const schema = alone
    ? providerSchema
    : providerSchema === NO_PROVIDER
      ? coreConfigSchema
      : {
          ...coreConfigSchema,
          properties: {
            ...coreConfigSchema.properties,
            provider: {
              ...coreConfigSchema.properties.provider,
              properties: {
                ...coreConfigSchema.properties.provider.properties,
                config: { default: {}, ...providerSchema },
              },
            },
          },
        };
  const validate = ajv.compile(schema);
  cache.set(providerSchema, validate);
  return validate;
};

/** `10.250.0.0/16`, `fd00::/64`: an IP address, a slash, and a prefix length that fits it. */
export const isCidr = (s: string): boolean => {
  const m = /^([^/]+)\/(\d{1,3})$/.exec(s);
  if (!m?.[1] || !m[2]) return false;
  const family = isIP(m[1]);
  const bits = Number(m[2]);
  return family !== 0 && bits <= (family === 4 ? 32 : 128);
};

const pointer = (base: string, key: string) => `${base}/${key.replaceAll("~", "~0").replaceAll("/", "~1")}`;

const fromAjv = (errors: readonly ErrorObject[]): ConfigProblem[] =>
  errors.flatMap((e): ConfigProblem[] => {
    // `if` only says which branch failed; the branch's own errors follow. `propertyName` marks the
    // inner error of a propertyNames check, reported below with the key's own path.
    if (e.keyword === "if" || (e as { propertyName?: string }).propertyName !== undefined) return [];
    const p = e.params as Record<string, unknown>;
    switch (e.keyword) {
      case "additionalProperties": {
        const known = Object.keys((e.parentSchema as { properties?: object } | undefined)?.properties ?? {});
        const hint = known.length > 0 ? ` (expected one of: ${known.join(", ")})` : "";
        return [
          { path: pointer(e.instancePath, String(p.additionalProperty)), message: `unknown key${hint}` },
        ];
      }
      case "required":
        return [{ path: pointer(e.instancePath, String(p.missingProperty)), message: "is required" }];
      case "propertyNames":
        return [
          { path: pointer(e.instancePath, String(p.propertyName)), message: "is not a valid key here" },
        ];
      case "enum":
        return [
          { path: e.instancePath, message: `must be one of: ${(p.allowedValues as unknown[]).join(", ")}` },
        ];
      case "format":
        return [
          {
            path: e.instancePath,
            message:
              p.format === "cidr"
                ? "must be a CIDR such as 10.250.0.0/16"
                : `must be a valid ${String(p.format)} address`,
          },
        ];
      case "pattern":
        return [
          { path: e.instancePath, message: `${JSON.stringify(e.data)} does not match ${String(p.pattern)}` },
        ];
      default:
        return [{ path: e.instancePath, message: e.message ?? `fails ${e.keyword}` }];
    }
  });

/**
 * Rule problems worth adding to the schema's: a rule is only worth reporting between fields that
 * are each valid, so one that involves a field the schema already flagged is left out.
 */
const ruleProblems = (
  schemaProblems: readonly ConfigProblem[],
  found: readonly RuleProblem[],
): ConfigProblem[] => {
  const flagged = new Set(schemaProblems.map((p) => p.path));
  return found
    .filter((r) => !(r.involves ?? [r.path]).some((path) => flagged.has(path)))
    .map(({ path, message }) => ({ path, message }));
};

/** Rule problems of a part of the document (`base`), with paths and the paths named in messages. */
const under = (base: string, found: readonly RuleProblem[]): RuleProblem[] =>
  found.map((r) => {
    const involves = r.involves ?? [r.path];
    let message = r.message;
    for (const p of involves) {
      const escaped = p.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
      message = message.replace(new RegExp(`(^|[\\s(])${escaped}(?=[\\s),:]|$)`, "g"), `$1${base}${p}`);
    }
    return { path: base + r.path, message, involves: involves.map((p) => base + p) };
  });

const dedupe = (problems: readonly ConfigProblem[]) => {
  const seen = new Set<string>();
  return problems.filter((p) => {
    const k = `${p.path}\0${p.message}`;
    return seen.has(k) ? false : (seen.add(k), true);
  });
};

/** Adds the line of the nearest node that exists in the file (missing keys point at their parent). */
const locate = (p: ConfigProblem, doc: Document, lc: LineCounter): ConfigProblem => {
  const segments = p.path
    .split("/")
    .slice(1)
    .map((s) => s.replaceAll("~1", "/").replaceAll("~0", "~"));
  for (let n = segments.length; n >= 0; n--) {
    const node: unknown = n === 0 ? doc.contents : doc.getIn(segments.slice(0, n), true);
    const range = (node as { range?: [number, number, number] } | null | undefined)?.range;
    if (range) return { ...p, line: lc.linePos(range[0]).line };
  }
  return p;
};
