/**
 * The shape of the house, checked: which folder may import which. Reads every `.ts` file under
 * `src/` and `providers/` (test files only where a rule says so) with TypeScript's own import
 * scanner (`preProcessFile`: static `import`/`export … from`, `import "…"`, and `import("…")` with a
 * literal, type-only imports included) and resolves the relative ones to project files.
 *
 * Each rule is one test whose failure message lists every offender, so a violation reads as
 * "this file imports that one", not as a boolean.
 */
import { readFileSync, readdirSync } from "node:fs";
import { dirname, join, relative, sep } from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";
import { describe, expect, it } from "vitest";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

/** A project file (path relative to the root, `/`-separated) and what it imports. */
interface SourceFile {
  readonly path: string;
  /** Relative imports resolved to project paths. */
  readonly local: readonly string[];
  /** Bare specifiers (`node:fs`, `@kubernetes/client-node`, …) as written. */
  readonly packages: readonly string[];
}

function listTs(dir: string): string[] {
  return readdirSync(join(root, dir), { recursive: true, encoding: "utf8" })
    .filter((f) => f.endsWith(".ts") && !f.endsWith(".d.ts"))
    .map((f) => `${dir}/${f.split(sep).join("/")}`)
    .sort();
}

function isTest(path: string): boolean {
  return path.endsWith(".test.ts");
}

function scan(path: string): SourceFile {
  const text = readFileSync(join(root, path), "utf8");
  const { importedFiles } = ts.preProcessFile(text, true, true);
  const local: string[] = [];
  const packages: string[] = [];
  for (const { fileName } of importedFiles) {
    if (fileName.startsWith(".")) {
      const target = relative(root, join(root, dirname(path), fileName))
        .split(sep)
        .join("/");
      local.push(target.replace(/\.js$/, ".ts"));
    } else {
      packages.push(fileName);
    }
  }
  return { path, local, packages };
}

const allFiles = [...listTs("src"), ...listTs("providers")].map(scan);
const sources = allFiles.filter((f) => !isTest(f.path));

const under = (folder: string) => (path: string) => path.startsWith(`${folder}/`);

/** `file → import` lines for every local import of a file matching `from` that matches `to`. */
function offenders(
  files: readonly SourceFile[],
  from: (path: string) => boolean,
  to: (path: string) => boolean,
): string[] {
  return files
    .filter((f) => from(f.path))
    .flatMap((f) => f.local.filter(to).map((target) => `${f.path} → ${target}`));
}

/**
 * Every elementary cycle through the local import graph, reported once each as `a → b → a`
 * (rotated to start at its smallest path, so the report is stable). A depth-first search from
 * each node that only visits nodes greater than the start finds each cycle exactly once.
 */
function findCycles(files: readonly SourceFile[]): string[] {
  const graph = new Map(files.map((f) => [f.path, [...new Set(f.local)].sort()]));
  const cycles: string[] = [];
  const nodes = [...graph.keys()].sort();
  for (const start of nodes) {
    const stack: string[] = [start];
    const onStack = new Set(stack);
    const walk = (node: string): void => {
      for (const next of graph.get(node) ?? []) {
        if (next === start) {
          cycles.push([...stack, start].join(" → "));
        } else if (next > start && !onStack.has(next) && graph.has(next)) {
          stack.push(next);
          onStack.add(next);
          walk(next);
          onStack.delete(next);
          stack.pop();
        }
      }
    };
    walk(start);
  }
  return cycles;
}

describe("module structure", () => {
  it("finds the files it checks", () => {
    // A guard against the scanner silently reading nothing (a moved root, a changed layout).
    expect(sources.length).toBeGreaterThan(50);
    expect(sources.some((f) => f.local.length > 0)).toBe(true);
  });

  it("has no import cycles", () => {
    const cycles = findCycles(sources);
    expect(cycles, `import cycles:\n${cycles.join("\n")}`).toEqual([]);
  });

  it("src/base imports nothing from the project", () => {
    const bad = offenders(sources, under("src/base"), (to) => !under("src/base")(to));
    expect(bad, `src/base must stay a leaf:\n${bad.join("\n")}`).toEqual([]);
  });

  it("src/protocol does not depend on workload, pod or node", () => {
    const bad = offenders(
      sources,
      under("src/protocol"),
      (to) => under("src/workload")(to) || under("src/pod")(to) || under("src/node")(to),
    );
    expect(bad, `src/protocol must not depend on pod translation:\n${bad.join("\n")}`).toEqual([]);
  });

  it("src/provider does not depend on any provider", () => {
    const bad = offenders(sources, under("src/provider"), under("providers"));
    expect(bad, `src/provider must not import providers/:\n${bad.join("\n")}`).toEqual([]);
  });

  it("nothing that runs in devicelet depends on the conformance kit", () => {
    const bad = offenders(sources, (path) => !under("src/testing")(path), under("src/testing"));
    expect(bad, `src/testing is for tests only:\n${bad.join("\n")}`).toEqual([]);
  });

  it("the public provider entry reaches only the contract and the leaf", () => {
    // What `devicelet/provider` drags into a plugin author's program: no engine, no transport.
    const allowed = (to: string) => under("src/provider")(to) || under("src/base")(to);
    const entry = offenders(sources, under("src/provider"), (to) => !allowed(to));
    expect(entry, `devicelet/provider must stay small:\n${entry.join("\n")}`).toEqual([]);
  });

  it("workload, node and pod reach client-node only through src/kube/types.ts", () => {
    // Test files too: they build the same objects and should use the same names.
    const bad = allFiles
      .filter((f) => ["src/workload", "src/node", "src/pod"].some((d) => under(d)(f.path)))
      .filter((f) =>
        f.packages.some((p) => p === "@kubernetes/client-node" || p.startsWith("@kubernetes/client-node/")),
      )
      .map((f) => f.path);
    expect(
      bad,
      `import from src/kube/types.ts instead of @kubernetes/client-node:\n${bad.join("\n")}`,
    ).toEqual([]);
  });
});

describe("findCycles", () => {
  it("reports each cycle once, as a path back to its start", () => {
    const f = (path: string, ...local: string[]): SourceFile => ({ path, local, packages: [] });
    expect(findCycles([f("a", "b"), f("b", "a", "c"), f("c", "d"), f("d", "b")])).toEqual([
      "a → b → a",
      "b → c → d → b",
    ]);
    expect(findCycles([f("a", "b"), f("b", "c"), f("c")])).toEqual([]);
  });
});
