/**
 * bench/heap-owners.ts against heap snapshots of a real Node.js process: what a class's fields
 * gained between two snapshots is charged to those fields, objects reached through another owner
 * go to that owner, and a value shared by two owners goes to neither.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { chargeOwners, ownersGrowth, type HeapSnapshot } from "./heap-owners.ts";

const dir = mkdtempSync(path.join(os.tmpdir(), "devicelet-bench-heap-owners-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/**
 * 1,000 records in a store's map, each with a name of its own and a Tag object, then 2,000 more
 * (a snapshot after each step); every record also holds one Shared value the second store holds
 * too.
 */
const target = `
const { writeHeapSnapshot } = require("node:v8");
class Tag { constructor(i) { this.label = "tag-" + i.toString(36).padStart(40, "x"); } }
class Store {
  #records = new Map();
  add(i, shared) { this.#records.set(i, { name: "record-" + i.toString(36).padStart(60, "y"), tag: new Tag(i), shared }); }
}
const shared = { payload: Array.from({ length: 1_500_000 }, (_, i) => i + 0.5) };
const store = new Store();
const other = new Store();
other.add(-1, shared);
for (let i = 0; i < 1000; i++) store.add(i, shared);
writeHeapSnapshot(process.argv[1] + "/1.heapsnapshot");
for (let i = 1000; i < 3000; i++) store.add(i, shared);
writeHeapSnapshot(process.argv[1] + "/2.heapsnapshot");
`;

describe("bench/heap-owners.ts", () => {
  it("charges what a class's field gained to that field, and shared values to no field", () => {
    execFileSync(process.execPath, ["-e", target, dir], { stdio: "ignore" });
    expect(readdirSync(dir).sort()).toEqual(["1.heapsnapshot", "2.heapsnapshot"]);
    const read = (name: string) =>
      chargeOwners(JSON.parse(readFileSync(path.join(dir, name), "utf8")) as HeapSnapshot);
    const before = read("1.heapsnapshot");
    const after = read("2.heapsnapshot");
    const growth = new Map(ownersGrowth(before, after));

    // Each record: its object and its name string under the store's map, its Tag's label under Tag.
    const records = growth.get("Store.#records");
    const labels = growth.get("Tag.label");
    expect(records?.objects).toBeGreaterThanOrEqual(2 * 2_000);
    expect(records?.bytes).toBeGreaterThanOrEqual(2_000 * (60 + 16 + 40));
    expect(labels?.objects).toBeGreaterThanOrEqual(2_000);
    expect(labels?.bytes).toBeGreaterThanOrEqual(2_000 * 40);
    // The biggest growth of all is the store's: the rows are ranked by bytes.
    expect(ownersGrowth(before, after)[0]?.[0]).toBe("Store.#records");
    // The shared value (12 MB of doubles) belongs to neither store, in either snapshot: it is the root's.
    for (const charges of [before, after]) {
      expect(charges.get("Store.#records")?.bytes).toBeLessThan(2_000_000);
      expect(charges.get("(root)")?.bytes).toBeGreaterThan(10_000_000);
    }
  }, 60_000);
});
