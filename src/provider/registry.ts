/**
 * Finds the provider plugin a configuration names: a built-in (`mock`) or an npm package that
 * exports `plugin` (or a default export) of shape {@link ProviderPlugin}.
 *
 *   const plugin = await resolveProvider("mock");
 *   const provider = plugin.create(config.provider.config, { logger, store, recordEvent });
 */
import type { PodLifecycleProvider, ProviderContext } from "./types.ts";
import { invalidInput } from "./errors.ts";

export interface ProviderPlugin {
  readonly type: string;
  /** JSON Schema of the provider's `provider.config` section, validated with the core config. */
  readonly configSchema: object;
  create(config: never, context: ProviderContext): PodLifecycleProvider;
}

const builtIns: Record<string, () => Promise<ProviderPlugin>> = {
  mock: async () => (await import("../../providers/mock/index.ts")).mockPlugin,
  mqtt: async () => (await import("../../providers/mqtt/index.ts")).mqttPlugin,
};

const isPlugin = (value: unknown): value is ProviderPlugin =>
  typeof value === "object" &&
  value !== null &&
  typeof (value as ProviderPlugin).create === "function" &&
  typeof (value as ProviderPlugin).configSchema === "object";

export async function resolveProvider(type: string): Promise<ProviderPlugin> {
  const builtIn = builtIns[type];
  if (builtIn) return builtIn();
  let module: Record<string, unknown>;
  try {
    module = (await import(type)) as Record<string, unknown>;
  } catch (err) {
    throw invalidInput(
      `provider "${type}" is neither built in (${Object.keys(builtIns).join(", ")}) nor an installed package`,
      { cause: err },
    );
  }
  const plugin = module.plugin ?? module.default;
  if (!isPlugin(plugin))
    throw invalidInput(
      `package "${type}" does not export a provider plugin ({ type, configSchema, create })`,
    );
  return plugin;
}
