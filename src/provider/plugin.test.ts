import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { resolveProvider } from "../cli/providers.ts";
import { isInvalidInput } from "./errors.ts";
import { defineProvider, erasePlugin, loadProvider, type LoadedPlugin } from "./plugin.ts";
import type { PodLifecycleProvider, ProviderContext } from "./types.ts";

const toy = (name: string): PodLifecycleProvider => ({
  name,
  supports: [],
  createPod: () => Promise.resolve(),
  updatePod: () => Promise.resolve(),
  deletePod: () => Promise.resolve(),
  getPodStatus: () => Promise.resolve(undefined),
  listPods: () => Promise.resolve([]),
});
const plugin = defineProvider({
  type: "@acme/toy",
  configSchema: { type: "object", properties: { name: { type: "string", default: "toy" } } } as const,
  create: (config) => toy(config.name),
});
const context = {} as ProviderContext;
const noBuiltIns: Readonly<Record<string, () => Promise<LoadedPlugin>>> = {};

describe("loadProvider", () => {
  it("prefers a built-in of that name and imports nothing", async () => {
    const builtIns = { toy: () => Promise.resolve(erasePlugin({ ...plugin, type: "toy" })) };
    const loaded = await loadProvider("toy", builtIns, () => Promise.reject(new Error("imported")));
    expect(loaded.create({ name: "a" }, context).name).toBe("a");
  });

  it("loads a package's `plugin` export, or its default export", async () => {
    const named = await loadProvider("@acme/toy", noBuiltIns, () => Promise.resolve({ plugin }));
    const byDefault = await loadProvider("@acme/toy", noBuiltIns, () => Promise.resolve({ default: plugin }));
    expect(named.create({ name: "n" }, context).name).toBe("n");
    expect(byDefault.configSchema).toBe(plugin.configSchema);
  });

  it("says what was tried when the package is missing or is not a plugin", async () => {
    const missing = loadProvider("@acme/none", { mock: () => Promise.reject(new Error("unused")) }, () =>
      Promise.reject(new Error("Cannot find package '@acme/none'")),
    );
    await expect(missing).rejects.toSatisfy(isInvalidInput);
    await expect(missing).rejects.toThrow(/neither built in \(mock\).*Cannot find package/);
    const notPlugin = loadProvider("@acme/toy", noBuiltIns, () =>
      Promise.resolve({ plugin: { type: "@acme/toy" } }),
    );
    await expect(notPlugin).rejects.toThrow(/does not export a provider plugin/);
    const renamed = loadProvider("@acme/other", noBuiltIns, () => Promise.resolve({ plugin }));
    await expect(renamed).rejects.toThrow(/exports a plugin of type "@acme\/toy"/);
  });
});

describe("resolveProvider (the CLI's registry)", () => {
  const dirs: string[] = [];
  afterAll(() => Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true }))));

  it("knows the built-ins without any package", async () => {
    expect((await resolveProvider("mock")).type).toBe("mock");
    expect((await resolveProvider("mqtt")).type).toBe("mqtt");
  });

  it("finds a package by name from the config file's folder", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "devicelet-plugin-"));
    dirs.push(dir);
    const pkg = path.join(dir, "node_modules", "@acme", "devicelet-provider-files");
    await mkdir(pkg, { recursive: true });
    await writeFile(
      path.join(pkg, "package.json"),
      JSON.stringify({
        name: "@acme/devicelet-provider-files",
        type: "module",
        exports: { ".": "./index.js" },
      }),
    );
    await writeFile(
      path.join(pkg, "index.js"),
      `export const plugin = { type: "@acme/devicelet-provider-files", configSchema: { type: "object" },
         create: () => ({ name: "files", supports: [] }) };\n`,
    );
    const loaded = await resolveProvider("@acme/devicelet-provider-files", [path.join(dir, "conf")]);
    expect(loaded.create({}, context).name).toBe("files");
    await expect(resolveProvider("@acme/devicelet-provider-absent", [dir])).rejects.toThrow(
      /neither built in \(mock, mqtt, iothub\) nor a package/,
    );
  });
});
