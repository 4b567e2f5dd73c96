/**
 * Adds the hit counts of the child processes to vitest's own coverage of the same file.
 *
 * The two describe one file through different code: vitest converts what its module runner ran
 * (Vite's transform, mapped back through a source map, whose ends are often missing or a few
 * columns off), the children's through the type-stripped source itself. Merging the two by exact
 * location, as Istanbul's `merge` does, would count most statements twice. So vitest's map stays
 * the one the totals are computed on, and each of its statements, functions and branches takes the
 * child's hits of the entry starting at the same place (the same line and the nearest column when
 * no start matches exactly: a declaration Vite rewrote, about 2 % of statements).
 *
 *   addChildHits(vitestFile, childFile);   // mutates vitestFile's s, f and b
 */
import type { FileCoverageData, Range } from "@vitest/istanbul-lib-coverage";

const startKey = (r: Range) => `${r.start.line}:${r.start.column}`;

/** For each target entry, the id of the source entry starting at the same place (or nearest on its line). */
function matchByStart(target: Record<string, Range>, source: Record<string, Range>): Map<string, string> {
  const exact = new Map<string, string>();
  const byLine = new Map<number, { id: string; column: number }[]>();
  for (const [id, range] of Object.entries(source)) {
    exact.set(startKey(range), id);
    const list = byLine.get(range.start.line) ?? [];
    list.push({ id, column: range.start.column });
    byLine.set(range.start.line, list);
  }
  const matches = new Map<string, string>();
  for (const [id, range] of Object.entries(target)) {
    const same = exact.get(startKey(range));
    if (same !== undefined) {
      matches.set(id, same);
      continue;
    }
    const onLine = byLine.get(range.start.line) ?? [];
    let best: { id: string; column: number } | undefined;
    for (const c of onLine)
      if (!best || Math.abs(c.column - range.start.column) < Math.abs(best.column - range.start.column))
        best = c;
    if (best) matches.set(id, best.id);
  }
  return matches;
}

/** Adds `child`'s hits to `target` (vitest's coverage of the same file), entry by matching start. */
export function addChildHits(target: FileCoverageData, child: FileCoverageData): void {
  for (const [t, c] of matchByStart(target.statementMap, child.statementMap))
    target.s[t] = (target.s[t] ?? 0) + (child.s[c] ?? 0);

  const fnLoc = (map: FileCoverageData["fnMap"]) =>
    Object.fromEntries(Object.entries(map).map(([id, fn]) => [id, fn.loc]));
  for (const [t, c] of matchByStart(fnLoc(target.fnMap), fnLoc(child.fnMap)))
    target.f[t] = (target.f[t] ?? 0) + (child.f[c] ?? 0);

  // A branch is matched by its first location; its arms add up one by one when they are as many.
  const branchLoc = (map: FileCoverageData["branchMap"]) =>
    Object.fromEntries(
      Object.entries(map).flatMap(([id, b]) => (b.locations[0] ? [[id, b.locations[0]]] : [])),
    );
  for (const [t, c] of matchByStart(branchLoc(target.branchMap), branchLoc(child.branchMap))) {
    const mine = target.b[t];
    const theirs = child.b[c];
    if (!mine || !theirs || mine.length !== theirs.length) continue;
    target.b[t] = mine.map((hits, i) => hits + (theirs[i] ?? 0));
  }
}
