/**
 * The built-in providers, registered here, at the composition root: the engine and `src/provider`
 * know no provider. Any other `provider.type` is loaded as a package of that name.
 */
import { createRequire } from "node:module";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { erasePlugin, loadProvider, type LoadedPlugin } from "../provider/plugin.ts";

const builtIns: Readonly<Record<string, () => Promise<LoadedPlugin>>> = {
  mock: async () => erasePlugin((await import("../../providers/mock/index.ts")).mockPlugin),
  mqtt: async () => erasePlugin((await import("../../providers/mqtt/index.ts")).mqttPlugin),
  iothub: async () => erasePlugin((await import("../../providers/iothub/index.ts")).iothubPlugin),
};

/**
 * The plugin for `type`: a built-in, or a package by that name, looked up from each of `from`
 * (directories, e.g. the config file's) and then from where devicelet is installed.
 */
export const resolveProvider = (type: string, from: readonly string[] = []): Promise<LoadedPlugin> =>
  loadProvider(type, builtIns, (name) => importPackageFrom(name, from));

async function importPackageFrom(name: string, from: readonly string[]): Promise<unknown> {
  for (const dir of from) {
    let resolved: string;
    try {
      // require.resolve honours the package's `exports` ("default" or "require" entries; a package
      // that lists only "import" is found from devicelet's own folder) and loads nothing: the
      // module is then imported as an ES module.
      resolved = createRequire(path.join(dir, "noop.js")).resolve(name);
    } catch {
      continue;
    }
    return import(pathToFileURL(resolved).href);
  }
  return import(name);
}
