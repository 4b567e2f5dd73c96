/**
 * The example third-party provider (examples/provider-http) against the contract layer of the
 * conformance kit, with its simulated devices polling it over real HTTP on 127.0.0.1; and the
 * package seen as devicelet sees it: found by its name from its own folder, its shipped
 * configuration valid. The engine layer and `devicelet run` are in
 * test/integration/example-provider-http.test.ts.
 */
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { describeProviderContract, testContext, workload } from "devicelet/provider/testing";
import ts from "typescript";
import { describe, expect, it } from "vitest";
import { SimulatedDevice } from "../../examples/provider-http/src/device.ts";
import { HttpProvider, plugin } from "../../examples/provider-http/src/index.ts";
import { STATE_KEY } from "../../examples/provider-http/src/state.ts";
import { httpTarget } from "../../examples/provider-http/test/target.ts";
import { eventually } from "../support/eventually.ts";
import { resolveProvider } from "../../src/cli/providers.ts";
import { parseConfig } from "../../src/config/index.ts";
import { isInvalidInput } from "../../src/provider/errors.ts";

const exampleDir = path.resolve(import.meta.dirname, "../../examples/provider-http");

describeProviderContract(httpTarget({ name: "http example", devices: ["http-c-0", "http-c-1"] }));

describe("the example as a package", () => {
  it("imports devicelet only as `devicelet/provider` (and the kit in its tests)", () => {
    const allowed = (file: string, specifier: string) =>
      specifier.startsWith("node:") ||
      specifier === "devicelet/provider" ||
      (file.startsWith("test/") && specifier === "devicelet/provider/testing") ||
      // Relative imports stay inside the package.
      (specifier.startsWith(".") &&
        !path.relative(exampleDir, path.resolve(exampleDir, path.dirname(file), specifier)).startsWith(".."));
    // Not node_modules: its devicelet link leads to the whole repository.
    const files = ["src", "test"].flatMap((dir) =>
      readdirSync(path.join(exampleDir, dir), { recursive: true, encoding: "utf8" })
        .filter((f) => f.endsWith(".ts"))
        .map((f) => path.join(dir, f)),
    );
    expect(files).toContain(path.join("src", "index.ts"));
    const offenders = files.flatMap((file) =>
      ts
        .preProcessFile(readFileSync(path.join(exampleDir, file), "utf8"), true, true)
        .importedFiles.map((i) => i.fileName)
        .filter((specifier) => !allowed(file.split(path.sep).join("/"), specifier))
        .map((specifier) => `${file} imports ${specifier}`),
    );
    expect(offenders).toEqual([]);
  });

  it("is found by its name from its folder, as `provider.type` in a config file there finds it", async () => {
    // Resolved through its package.json "exports" (a package's own name resolves inside it).
    const loaded = await resolveProvider("devicelet-provider-http-example", [exampleDir]);
    expect(loaded.type).toBe("devicelet-provider-http-example");
    expect(loaded.configSchema).toBe(plugin.configSchema);
  });

  it("ships a configuration devicelet accepts, defaults filled in", () => {
    const file = path.join(exampleDir, "devicelet.yaml");
    const config = parseConfig(readFileSync(file, "utf8"), file, {
      providerSchemas: { [plugin.type]: plugin.configSchema },
    });
    expect(config.provider.type).toBe(plugin.type);
    expect(config.provider.config).toMatchObject({
      listen: { host: "127.0.0.1", port: 8480 },
      devices: { allow: ["http-*"] },
    });
  });

  it("refuses a configuration whose devices would be offline between polls", () => {
    const config = { ...defaults(), pollSeconds: 5, offlineAfterSeconds: 5 };
    let error: unknown;
    try {
      plugin.create(config, testContext());
    } catch (err) {
      error = err;
    }
    expect(isInvalidInput(error), String(error)).toBe(true);
    expect((error as Error).message).toMatch(/must exceed pollSeconds/);
  });
});

describe("the example's store writes", () => {
  it("stores a burst of creates in one write, each create resolving once stored", async () => {
    const context = testContext();
    const provider = new HttpProvider({ ...defaults(), listen: { host: "127.0.0.1", port: 0 } }, context);
    await provider.start(new AbortController().signal);
    const device = new SimulatedDevice({ id: "burst-0", url: provider.url ?? "", retryMs: 50 });
    try {
      await device.setOnline(true);
      await eventually(async () =>
        expect((await provider.listDevices()).map((d) => d.id)).toEqual(["burst-0"]),
      );
      await device.setOnline(false); // no poll (and its writes) during the burst
      const before = context.store.writes;
      const pods = Array.from({ length: 20 }, (_, i) =>
        workload({ name: `burst-${i}`, deviceId: "burst-0", image: "example/app:1" }),
      );
      await Promise.all(pods.map((w) => provider.createPod(w)));
      // Made in one tick, they all wait for the same write.
      expect(context.store.writes - before).toBe(1);
      const stored = JSON.parse(context.store.values.get(STATE_KEY) ?? "{}") as { pods?: unknown[] };
      expect(stored.pods).toHaveLength(pods.length);
    } finally {
      await device.setOnline(false);
      await provider.stop();
    }
  });
});

/** The config `provider: { config: {} }` validates into. */
function defaults() {
  const config = parseConfig(`provider: { type: ${plugin.type} }`, "defaults", {
    providerSchemas: { [plugin.type]: plugin.configSchema },
  });
  return config.provider.config as Parameters<typeof plugin.create>[0];
}
