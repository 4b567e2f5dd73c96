/**
 * A provider plugin: a type name, the JSON Schema of its `provider.config` section and a factory.
 * The engine validates the whole configuration file in one pass (core and provider section
 * together, every problem listed), then calls `create` once with the validated, defaulted config.
 *
 *   export const plugin = defineProvider({
 *     type: "@acme/devicelet-provider-foo",
 *     configSchema: { type: "object", required: ["url"], properties: { url: { type: "string" } } } as const,
 *     create: (config, context) => new FooProvider(config.url, context),   // config: { url: string }
 *   });
 *
 * A package is found by the name in `provider.type`, from the configuration file's folder and then
 * from where devicelet is installed (src/cli/providers.ts); it exports its plugin as `plugin` or as
 * the default export. docs/providers.md, section 10.
 */
import { invalidInput } from "./errors.ts";
import type { FromSchema } from "./schema-type.ts";
import type { PodLifecycleProvider, ProviderContext } from "./types.ts";

export interface ProviderPlugin<Config = unknown> {
  /** What `provider.type` says to choose this plugin: a built-in name or the package's name. */
  readonly type: string;
  /** JSON Schema of `provider.config`, validated (with defaults filled in) with the core config. */
  readonly configSchema: object;
  /**
   * Builds the provider. Called once per process, before any other call, with the config the
   * schema accepted. Must not do I/O (that belongs in `start`); may throw a ConfigError or an
   * InvalidInput ProviderError for a config the schema cannot express as wrong.
   */
  readonly create: (config: Config, context: ProviderContext) => PodLifecycleProvider;
}

/**
 * Declares a provider plugin, typing `create`'s config from the schema:
 * `defineProvider({ type, configSchema: {...} as const, create })`; or with an explicit type,
 * when the schema is beyond {@link FromSchema}: `defineProvider<MyConfig>({ ... })`.
 */
export function defineProvider<Config = never, const Schema extends object = object>(definition: {
  readonly type: string;
  readonly configSchema: Schema;
  readonly create: (
    config: [Config] extends [never] ? FromSchema<Schema> : NoInfer<Config>,
    context: ProviderContext,
  ) => PodLifecycleProvider;
}): ProviderPlugin<[Config] extends [never] ? FromSchema<Schema> : Config> {
  return Object.freeze({ ...definition });
}

/** A plugin whose config type is no longer known: what the loader hands the engine. */
export interface LoadedPlugin {
  readonly type: string;
  readonly configSchema: object;
  /** Calls the plugin's `create` with a config its schema has already accepted. */
  readonly create: (validatedConfig: unknown, context: ProviderContext) => PodLifecycleProvider;
}

/**
 * Forgets a plugin's config type. Sound only because the engine calls `create` with what
 * `configSchema` validated: the one place the config's static type meets the file's content.
 */
export const erasePlugin = <Config>(plugin: ProviderPlugin<Config>): LoadedPlugin => ({
  type: plugin.type,
  configSchema: plugin.configSchema,
  create: (config, context) => plugin.create(config as Config, context),
});

export const isProviderPlugin = (value: unknown): value is ProviderPlugin<never> =>
  typeof value === "object" &&
  value !== null &&
  typeof (value as ProviderPlugin).type === "string" &&
  typeof (value as ProviderPlugin).create === "function" &&
  typeof (value as { configSchema: unknown }).configSchema === "object" &&
  (value as { configSchema: unknown }).configSchema !== null;

/**
 * The plugin `provider.type` names: one of `builtIns` (registered by the composition root, the
 * CLI), or else a package of that name that exports `plugin` or a default export.
 * @throws ProviderError InvalidInput naming what was tried.
 */
export async function loadProvider(
  type: string,
  builtIns: Readonly<Record<string, () => Promise<LoadedPlugin>>>,
  importPackage: (name: string) => Promise<unknown> = (name) => import(name),
): Promise<LoadedPlugin> {
  const builtIn = Object.hasOwn(builtIns, type) ? builtIns[type] : undefined;
  if (builtIn) return builtIn();
  let module: Record<string, unknown>;
  try {
    module = (await importPackage(type)) as Record<string, unknown>;
  } catch (err) {
    throw invalidInput(
      `provider "${type}" is neither built in (${Object.keys(builtIns).join(", ")}) nor a package that can be imported: ${(err as Error).message}`,
      { cause: err },
    );
  }
  const plugin = module.plugin ?? module.default;
  if (!isProviderPlugin(plugin))
    throw invalidInput(
      `package "${type}" does not export a provider plugin ({ type, configSchema, create }) as "plugin" or default; use defineProvider from "devicelet/provider"`,
    );
  if (plugin.type !== type)
    throw invalidInput(`package "${type}" exports a plugin of type "${plugin.type}"; they must be equal`);
  return erasePlugin(plugin);
}
