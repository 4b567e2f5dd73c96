/**
 * Coverage of the child processes the integration tests spawn (`devicelet run`, the reference agent):
 * Node writes their raw V8 coverage under `NODE_V8_COVERAGE` when they exit normally (a SIGKILLed
 * child writes nothing). This module reads those files, keeps the scripts under the given folders,
 * merges each script across processes (raw V8, before converting: one conversion per file however
 * many processes ran it) and converts the result to Istanbul's format.
 *
 *   const raw = readChildCoverage({ dir: "coverage/children", urlPrefixes: [`${rootUrl}/src/`] });
 *   const map = await childCoverageToIstanbul(raw);   // CoverageMapData keyed by file path
 *
 * The children run the TypeScript sources with Node's type stripping, which keeps every character
 * at its position, so V8's offsets are offsets into `stripTypeScriptTypes(source)` and the
 * locations converted from them are locations in the .ts file itself.
 */
import { readdirSync, readFileSync } from "node:fs";
import type { Profiler } from "node:inspector";
import { createRequire, stripTypeScriptTypes } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { CoverageMapData } from "@vitest/istanbul-lib-coverage";
import convert from "ast-v8-to-istanbul";
import { parseAstAsync } from "vitest/node";

type ScriptCoverage = Profiler.ScriptCoverage;

// The package ships CommonJS without types; this is the one function used (vitest merges with it too).
const { mergeScriptCovs } = createRequire(import.meta.url)("@bcoe/v8-coverage") as {
  mergeScriptCovs: (scripts: ScriptCoverage[]) => ScriptCoverage | undefined;
};

/**
 * Reads every `*.json` V8 coverage file in `dir` (none when it does not exist) and returns, per
 * script whose URL starts with one of `urlPrefixes` and that `include` accepts, the coverage of all
 * processes merged.
 */
export function readChildCoverage(options: {
  readonly dir: string;
  readonly urlPrefixes: readonly string[];
  readonly include?: (url: string) => boolean;
}): ScriptCoverage[] {
  let files: string[];
  try {
    files = readdirSync(options.dir).filter((f) => f.endsWith(".json"));
  } catch {
    return [];
  }
  const byUrl = new Map<string, ScriptCoverage[]>();
  for (const file of files) {
    const text = readFileSync(path.join(options.dir, file), "utf8");
    for (const script of scriptsIn(text, options.urlPrefixes)) {
      if (options.include && !options.include(script.url)) continue;
      const list = byUrl.get(script.url) ?? [];
      list.push(script);
      byUrl.set(script.url, list);
    }
  }
  return [...byUrl.values()].flatMap((scripts) => mergeScriptCovs(scripts) ?? []);
}

/**
 * The entries of one coverage file (`{"result":[{"scriptId":…,"url":…,"functions":…},…],…}`, as
 * Node writes it) whose URL starts with a prefix. A devicelet process's file is megabytes, mostly
 * Node's internals and node_modules; parsing only the entries wanted is some twenty times faster
 * than parsing it whole, which is done instead when the layout is not the expected one.
 */
function scriptsIn(text: string, urlPrefixes: readonly string[]): ScriptCoverage[] {
  const entry = '{"scriptId":';
  const scripts: ScriptCoverage[] = [];
  try {
    if (!text.startsWith(`{"result":[${entry}`)) throw new Error("unexpected layout");
    for (const prefix of urlPrefixes) {
      const needle = `"url":${JSON.stringify(prefix).slice(0, -1)}`;
      for (let at = text.indexOf(needle); at >= 0; at = text.indexOf(needle, at + needle.length)) {
        const start = text.lastIndexOf(entry, at);
        const next = text.indexOf(`,${entry}`, at);
        const end = next >= 0 ? next : text.indexOf('],"timestamp"', at);
        if (start < 0 || end < 0) throw new Error("unexpected layout");
        scripts.push(JSON.parse(text.slice(start, end)) as ScriptCoverage);
      }
    }
    return scripts;
  } catch {
    const { result } = JSON.parse(text) as { result: ScriptCoverage[] };
    return result.filter((s) => urlPrefixes.some((prefix) => s.url.startsWith(prefix)));
  }
}

/** Converts merged scripts (file URLs of .ts or .js sources) to Istanbul coverage keyed by path. */
export async function childCoverageToIstanbul(scripts: readonly ScriptCoverage[]): Promise<CoverageMapData> {
  // All at once: the parser works off the main thread while the conversions run on it.
  const converted = await Promise.all(
    scripts.map(async (script) => {
      const file = fileURLToPath(script.url);
      let source: string;
      try {
        source = readFileSync(file, "utf8");
      } catch {
        return {}; // written by a test and removed since
      }
      const code = /\.[mc]?ts$/.test(file) ? stripTypeScriptTypes(source) : source;
      // The parser vitest converts its own coverage with, so that both maps start entries alike
      // (./merge.ts matches them by start); vitest re-exports it under this name only.
      // eslint-disable-next-line @typescript-eslint/no-deprecated
      const ast = parseAstAsync(code);
      return convert({ code, ast, coverage: { url: script.url, functions: script.functions } });
    }),
  );
  return Object.assign({}, ...converted) as CoverageMapData;
}
