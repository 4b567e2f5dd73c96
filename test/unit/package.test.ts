/**
 * What the npm package ships: every public entry in package.json "exports" is built from a source
 * file the build compiles, with its types beside it, and devicelet's own test helpers are not in
 * the build (nor imported by anything that is).
 */
import { readFileSync } from "node:fs";
import path from "node:path";
import ts from "typescript";
import { describe, expect, it } from "vitest";

const root = path.resolve(import.meta.dirname, "../..");
const pkg = JSON.parse(readFileSync(path.join(root, "package.json"), "utf8")) as {
  exports: Record<string, string | Record<string, string>>;
  files: string[];
};
const build = ts.getParsedCommandLineOfConfigFile(
  path.join(root, "tsconfig.build.json"),
  {},
  {
    ...ts.sys,
    onUnRecoverableConfigFileDiagnostic: (d) => {
      throw new Error(ts.flattenDiagnosticMessageText(d.messageText, "\n"));
    },
  },
);
const built = new Set((build?.fileNames ?? []).map((f) => path.relative(root, f)));
const testHelpers = ["src/workload/test-fixtures.ts", "src/device/fixtures.ts", "providers/mock/testing.ts"];

describe("the package", () => {
  it("builds every public entry, with types, from the source its checkout condition names", () => {
    const entries = Object.entries(pkg.exports).filter(([name]) => name !== "./package.json");
    expect(entries.map(([name]) => name)).toEqual(["./provider", "./provider/testing"]);
    for (const [name, target] of entries) {
      if (typeof target === "string") throw new Error(`${name}: expected conditions`);
      // The first condition wins: the sources only where the checkout asks for them.
      expect(Object.keys(target), name).toEqual(["devicelet-source", "types", "default"]);
      const source = target["devicelet-source"]?.replace(/^\.\//, "") ?? "";
      expect(built.has(source), `${source} is compiled`).toBe(true);
      const js = `dist/${source.replace(/\.ts$/, ".js")}`;
      expect(target.default).toBe(`./${js}`);
      expect(target.types).toBe(`./${js.replace(/\.js$/, ".d.ts")}`);
    }
    expect(pkg.files).toContain("dist");
  });

  it("leaves devicelet's test helpers out of the build", () => {
    for (const helper of testHelpers) expect(built.has(helper), helper).toBe(false);
    expect([...built].filter((f) => f.endsWith(".test.ts"))).toEqual([]);
    const importers = [...built].filter((file) => {
      const text = readFileSync(path.join(root, file), "utf8");
      return testHelpers.some((helper) => text.includes(`/${path.basename(helper)}"`));
    });
    expect(importers).toEqual([]);
  });
});
