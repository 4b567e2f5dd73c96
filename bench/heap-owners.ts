/**
 * What holds the heap a bench added, by owner: reads two V8 heap snapshots of one process (from
 * `THROUGHPUT_HEAP_DIR`, before the first pod and after the last), and charges every object's own
 * size to its nearest owner, the closest object that is an instance of a named class (a store, a
 * controller, a provider's record) and dominates it, keyed by that class and the field the object
 * hangs from. An owner's row is what would be freed if that field were emptied, split among owners
 * so that the rows add up to the heap: a pod in a cache is `ObjectStore.#objects`, a provider's
 * record of it `MockProvider.#pods` with its own fields under `MockPod.*`.
 *
 *   node bench/heap-owners.ts <before.heapsnapshot> <after.heapsnapshot> [pods]
 *
 * prints bytes (and objects) per pod by owner, most first. Values shared between pods (interned
 * strings, frozen shared values) are charged once, to the owner that dominates them, which is
 * often no owner at all (`(root)`).
 */
import { readFileSync } from "node:fs";

/** The parts of V8's heap snapshot format (`.heapsnapshot`) read here. */
export interface HeapSnapshot {
  snapshot: {
    meta: {
      node_fields: string[];
      node_types: [string[], ...unknown[]];
      edge_fields: string[];
      edge_types: [string[], ...unknown[]];
    };
  };
  nodes: number[];
  edges: number[];
  strings: string[];
}

/** Bytes and objects charged to one owner's field. */
export interface Charge {
  bytes: number;
  objects: number;
}

/** Constructors too common to own anything: their instances are the structure, not the owner. */
const STRUCTURAL = new Set(["Object", "Array", "Map", "Set", "WeakMap", "Promise", "Date"]);

/** Every object's own size charged to `Owner.field` (see the module's comment), from one snapshot. */
export function chargeOwners(snapshot: HeapSnapshot): Map<string, Charge> {
  const { meta } = snapshot.snapshot;
  const nodeTypes = meta.node_types[0];
  const edgeTypes = meta.edge_types[0];
  const N = meta.node_fields.length;
  const E = meta.edge_fields.length;
  const fType = meta.node_fields.indexOf("type");
  const fName = meta.node_fields.indexOf("name");
  const fSize = meta.node_fields.indexOf("self_size");
  const fEdges = meta.node_fields.indexOf("edge_count");
  const eType = meta.edge_fields.indexOf("type");
  const eName = meta.edge_fields.indexOf("name_or_index");
  const eTo = meta.edge_fields.indexOf("to_node");
  const { nodes, edges, strings } = snapshot;
  const count = nodes.length / N;
  const weak = edgeTypes.indexOf("weak");
  const shortcut = edgeTypes.indexOf("shortcut");

  const firstEdge = new Uint32Array(count + 1);
  for (let k = 0, e = 0; k < count; k++) {
    firstEdge[k] = e;
    e += (nodes[k * N + fEdges] ?? 0) * E;
    firstEdge[k + 1] = e;
  }
  /** The targets of a node's strong edges. */
  const targets = (k: number, visit: (to: number) => void) => {
    for (let j = firstEdge[k] ?? 0; j < (firstEdge[k + 1] ?? 0); j += E) {
      const t = edges[j + eType];
      if (t !== weak && t !== shortcut) visit((edges[j + eTo] ?? 0) / N);
    }
  };

  // Predecessors, as offsets into one array.
  const predStart = new Uint32Array(count + 1);
  for (let k = 0; k < count; k++) targets(k, (to) => (predStart[to + 1] = (predStart[to + 1] ?? 0) + 1));
  for (let k = 0; k < count; k++) predStart[k + 1] = (predStart[k + 1] ?? 0) + (predStart[k] ?? 0);
  const preds = new Uint32Array(predStart[count] ?? 0);
  const fill = predStart.slice(0, count);
  for (let k = 0; k < count; k++) targets(k, (to) => (preds[(fill[to] = (fill[to] ?? 0) + 1) - 1] = k));

  // Depth-first post-order from the root (node 0), without recursion.
  const postIndex = new Int32Array(count).fill(-1);
  const order: number[] = [];
  const seen = new Uint8Array(count);
  const stack = [0];
  const cursor = [firstEdge[0] ?? 0];
  seen[0] = 1;
  while (stack.length > 0) {
    const k = stack[stack.length - 1] ?? 0;
    let descended = false;
    while ((cursor[cursor.length - 1] ?? 0) < (firstEdge[k + 1] ?? 0)) {
      const j = cursor[cursor.length - 1] ?? 0;
      cursor[cursor.length - 1] = j + E;
      const t = edges[j + eType];
      if (t === weak || t === shortcut) continue;
      const to = (edges[j + eTo] ?? 0) / N;
      if (seen[to]) continue;
      seen[to] = 1;
      stack.push(to);
      cursor.push(firstEdge[to] ?? 0);
      descended = true;
      break;
    }
    if (!descended) {
      stack.pop();
      cursor.pop();
      postIndex[k] = order.length;
      order.push(k);
    }
  }

  // Immediate dominators, by iteration to a fixed point in reverse post-order (Cooper, Harvey and
  // Kennedy, "A Simple, Fast Dominance Algorithm").
  const idom = new Int32Array(count).fill(-1);
  idom[0] = 0;
  const post = (k: number) => postIndex[k] ?? -1;
  const up = (k: number) => idom[k] ?? 0;
  const intersect = (a: number, b: number) => {
    while (a !== b) {
      while (post(a) < post(b)) a = up(a);
      while (post(b) < post(a)) b = up(b);
    }
    return a;
  };
  for (let changed = true; changed;) {
    changed = false;
    for (let i = order.length - 2; i >= 0; i--) {
      const k = order[i] ?? 0;
      let dominator = -1;
      for (let p = predStart[k] ?? 0; p < (predStart[k + 1] ?? 0); p++) {
        const q = preds[p] ?? 0;
        if (!seen[q] || idom[q] === -1) continue;
        dominator = dominator === -1 ? q : intersect(q, dominator);
      }
      if (dominator !== -1 && idom[k] !== dominator) {
        idom[k] = dominator;
        changed = true;
      }
    }
  }

  const type = (k: number) => nodeTypes[nodes[k * N + fType] ?? 0] ?? "";
  const name = (k: number) => strings[nodes[k * N + fName] ?? 0] ?? "";
  const isOwner = (k: number) =>
    k === 0 ||
    type(k) === "closure" ||
    (type(k) === "object" && !STRUCTURAL.has(name(k)) && !name(k).startsWith("system /"));
  /** The name of the edge from `owner` to `child`, `~` when the dominator holds it indirectly. */
  const field = (owner: number, child: number) => {
    for (let j = firstEdge[owner] ?? 0; j < (firstEdge[owner + 1] ?? 0); j += E) {
      if ((edges[j + eTo] ?? 0) / N !== child) continue;
      const t = edgeTypes[edges[j + eType] ?? 0];
      return t === "element" || t === "hidden" ? `[${t}]` : String(strings[edges[j + eName] ?? 0]);
    }
    return "~";
  };

  const charges = new Map<string, Charge>();
  for (const k of order) {
    if (k === 0) continue;
    let child = k;
    let owner = up(k);
    while (!isOwner(owner)) {
      child = owner;
      owner = up(owner);
    }
    const key = owner === 0 ? "(root)" : `${name(owner).slice(0, 40)}.${field(owner, child).slice(0, 40)}`;
    const charge = charges.get(key) ?? { bytes: 0, objects: 0 };
    charge.bytes += nodes[k * N + fSize] ?? 0;
    charge.objects += 1;
    charges.set(key, charge);
  }
  return charges;
}

/** What each owner gained from `before` to `after`, most bytes first. */
export function ownersGrowth(before: Map<string, Charge>, after: Map<string, Charge>): [string, Charge][] {
  const keys = new Set([...before.keys(), ...after.keys()]);
  return [...keys]
    .map((key): [string, Charge] => {
      const a = before.get(key) ?? { bytes: 0, objects: 0 };
      const b = after.get(key) ?? { bytes: 0, objects: 0 };
      return [key, { bytes: b.bytes - a.bytes, objects: b.objects - a.objects }];
    })
    .sort((x, y) => y[1].bytes - x[1].bytes);
}

const read = (file: string) => JSON.parse(readFileSync(file, "utf8")) as HeapSnapshot;

function main(): void {
  const [beforeFile, afterFile, podsText = "1"] = process.argv.slice(2);
  const pods = Number(podsText);
  if (beforeFile === undefined || afterFile === undefined || !(pods > 0))
    throw new Error("usage: node bench/heap-owners.ts <before.heapsnapshot> <after.heapsnapshot> [pods]");
  const growth = ownersGrowth(chargeOwners(read(beforeFile)), chargeOwners(read(afterFile)));
  const total = growth.reduce((sum, [, c]) => sum + c.bytes, 0);
  console.log(`heap grew ${(total / pods).toFixed(0)} bytes a pod (objects' own sizes)`);
  console.log("bytes/pod  objects/pod  owner.field");
  for (const [key, c] of growth.filter(([, c]) => c.bytes !== 0).slice(0, 30)) {
    console.log(
      `${(c.bytes / pods).toFixed(1).padStart(9)}  ${(c.objects / pods).toFixed(2).padStart(11)}  ${key}`,
    );
  }
}

if (import.meta.main) main();
