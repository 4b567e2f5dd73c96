/**
 * The coverage gate of `npm test`, run after `vitest run --coverage`: adds what the child processes
 * of the integration tests ran (raw V8 coverage under coverage/children, see
 * test/child-coverage.setup.ts) to vitest's own (coverage/coverage-final.json), writes the sum to
 * coverage/coverage-merged.json, prints a summary and exits 1 when a total is below its threshold.
 *
 *   node hack/coverage.ts            # after vitest run --coverage
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { createCoverageMap, type CoverageMapData, type Totals } from "@vitest/istanbul-lib-coverage";
import { childCoverageToIstanbul, readChildCoverage } from "./child-coverage/convert.ts";
import { addChildHits } from "./child-coverage/merge.ts";

/** Percent of each total that must be covered, core (src/) and providers together. */
const THRESHOLDS = { lines: 80, branches: 70, statements: 80, functions: 80 } as const;

const repoRoot = path.resolve(import.meta.dirname, "..");
const reportsDir = path.join(repoRoot, "coverage");
const rootUrl = pathToFileURL(repoRoot).href;
// What vitest.config.ts counts: src/** and providers/**, not the tests.
const countedFolders = [`${rootUrl}/src/`, `${rootUrl}/providers/`];
const counted = (url: string) => !url.endsWith(".test.ts");

const vitestReport = path.join(reportsDir, "coverage-final.json");
if (!existsSync(vitestReport)) {
  console.error(`ERROR: no ${path.relative(repoRoot, vitestReport)}: run \`vitest run --coverage\` first`);
  process.exit(1);
}
const started = performance.now();
const vitestMap = createCoverageMap(JSON.parse(readFileSync(vitestReport, "utf8")) as CoverageMapData);
const inProcess = vitestMap.getCoverageSummary();
const children = readChildCoverage({
  dir: path.join(reportsDir, "children"),
  urlPrefixes: countedFolders,
  include: counted,
});
const childMap = await childCoverageToIstanbul(children);
const merged = createCoverageMap(vitestMap.toJSON());
for (const [file, child] of Object.entries(childMap)) {
  if (merged.files().includes(file)) addChildHits(merged.fileCoverageFor(file).data, child);
  else merged.addFileCoverage(child);
}
writeFileSync(path.join(reportsDir, "coverage-merged.json"), JSON.stringify(merged.toJSON()));
const total = merged.getCoverageSummary();

const pct = (t: Totals) => (t.total === 0 ? 100 : (100 * t.covered) / t.total);
const row = (name: keyof typeof THRESHOLDS) =>
  `${name.padEnd(11)}: ${pct(total[name]).toFixed(2).padStart(6)} % (${total[name].covered}/${total[name].total})` +
  `  in-process only ${pct(inProcess[name]).toFixed(2)} %  threshold ${THRESHOLDS[name]} %`;
const names = ["statements", "branches", "functions", "lines"] as const;
console.log(
  `Coverage with the child processes (${children.length} scripts from coverage/children, ` +
    `${Math.round(performance.now() - started)} ms)`,
);
for (const name of names) console.log(row(name));
const failed = names.filter((name) => pct(total[name]) < THRESHOLDS[name]);
for (const name of failed)
  console.error(
    `ERROR: ${name} coverage ${pct(total[name]).toFixed(2)} % is below the threshold of ${THRESHOLDS[name]} %`,
  );
process.exitCode = failed.length > 0 ? 1 : 0;
