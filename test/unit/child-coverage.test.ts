/**
 * hack/coverage.ts: real child processes run a small TypeScript file under NODE_V8_COVERAGE; their
 * raw coverage is read, merged across the processes and converted, and exactly the lines they ran
 * are reported covered, then added to a map of the same file as vitest describes it.
 */
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { createFileCoverage, type FileCoverageData } from "@vitest/istanbul-lib-coverage";
import { afterAll, describe, expect, it } from "vitest";
import { childCoverageToIstanbul, readChildCoverage } from "../../hack/child-coverage/convert.ts";
import { addChildHits } from "../../hack/child-coverage/merge.ts";

// Type annotations on purpose: the converted locations must be the .ts file's own.
const FIXTURE = `type Parity = "even" | "odd";
export function parity(n: number): Parity {
  if (n % 2 === 0) {
    return "even";
  }
  return "odd";
}
const unused = (x: number): number => {
  return x * 2;
};
console.log(parity(Number(process.argv[2])), typeof unused);
`;
const line = (text: string) => FIXTURE.split("\n").findIndex((l) => l.includes(text)) + 1;

const dir = mkdtempSync(path.join(os.tmpdir(), "devicelet-child-coverage-"));
const fixture = path.join(dir, "src", "parity.ts");
mkdirSync(path.dirname(fixture));
writeFileSync(path.join(dir, "package.json"), '{ "type": "module" }');
writeFileSync(fixture, FIXTURE);
// Run too, but outside the folder read: its coverage must be left out.
writeFileSync(path.join(dir, "outside.ts"), "console.log(1);\n");
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** Runs the fixture with `arg` (and outside.ts) in children writing their coverage to `raw`. */
function runChildren(raw: string, arg: string): void {
  for (const args of [[fixture, arg], [path.join(dir, "outside.ts")]]) {
    const run = spawnSync(process.execPath, args, {
      env: { ...process.env, NODE_V8_COVERAGE: raw },
      encoding: "utf8",
    });
    expect(run.status).toBe(0);
  }
}

async function childFile(raw: string): Promise<FileCoverageData> {
  const scripts = readChildCoverage({ dir: raw, urlPrefixes: [`${pathToFileURL(dir).href}/src/`] });
  expect(scripts.map((s) => s.url)).toEqual([pathToFileURL(fixture).href]);
  const file = (await childCoverageToIstanbul(scripts))[fixture];
  if (!file) throw new Error(`no coverage for ${fixture}`);
  return file;
}

const lineHits = (file: FileCoverageData) => createFileCoverage(file).getLineCoverage();

describe("child process coverage", () => {
  it("reports the lines a child ran as covered and the others not", async () => {
    const raw = path.join(dir, "raw-one");
    runChildren(raw, "2");
    const hits = lineHits(await childFile(raw));
    expect(hits[line('return "even"')]).toBe(1);
    expect(hits[line('return "odd"')]).toBe(0);
    expect(hits[line("return x * 2")]).toBe(0);
    expect(hits[line("console.log")]).toBe(1);
  });

  it("adds up the processes: a line run by either of two children is covered", async () => {
    const raw = path.join(dir, "raw-two");
    runChildren(raw, "2");
    runChildren(raw, "3");
    const hits = lineHits(await childFile(raw));
    expect(hits[line('return "even"')]).toBe(1);
    expect(hits[line('return "odd"')]).toBe(1);
    expect(hits[line("console.log")]).toBe(2);
    expect(hits[line("return x * 2")]).toBe(0);
  });

  it("reads a coverage file laid out otherwise by parsing it whole", async () => {
    const compact = path.join(dir, "raw-compact");
    runChildren(compact, "3");
    const pretty = path.join(dir, "raw-pretty");
    mkdirSync(pretty);
    for (const name of readdirSync(compact)) {
      const data = JSON.parse(readFileSync(path.join(compact, name), "utf8")) as unknown;
      writeFileSync(path.join(pretty, name), JSON.stringify(data, null, 2));
    }
    const hits = lineHits(await childFile(pretty));
    expect(hits[line('return "odd"')]).toBe(1);
    expect(hits[line('return "even"')]).toBe(0);
  });

  it("adds a child's hits to vitest's map of the file, whose ends differ and some starts are off", async () => {
    const raw = path.join(dir, "raw-merge");
    runChildren(raw, "3");
    const child = await childFile(raw);
    // vitest's map of the same file, unrun: ends as its source maps give them (often none), and
    // one statement starting two columns off (a declaration Vite rewrote).
    const vitest = structuredClone(child);
    for (const r of Object.values(vitest.statementMap)) r.end.column = null as unknown as number;
    const logStatement = Object.values(vitest.statementMap).find((r) => r.start.line === line("console.log"));
    if (!logStatement) throw new Error("no statement on the console.log line");
    logStatement.start.column += 2;
    for (const id of Object.keys(vitest.s)) vitest.s[id] = 0;
    for (const id of Object.keys(vitest.f)) vitest.f[id] = 0;
    for (const id of Object.keys(vitest.b)) vitest.b[id] = vitest.b[id]?.map(() => 0) ?? [];
    const counts = structuredClone({ s: vitest.s, f: vitest.f, b: vitest.b });

    addChildHits(vitest, child);

    expect(Object.keys(vitest.s)).toEqual(Object.keys(counts.s)); // the totals stay vitest's
    expect(vitest.s).toEqual(child.s);
    expect(vitest.f).toEqual(child.f);
    expect(vitest.b).toEqual(child.b);
    expect(lineHits(vitest)[line('return "odd"')]).toBe(1);
    expect(lineHits(vitest)[line('return "even"')]).toBe(0);
  });
});
