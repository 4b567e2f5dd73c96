/**
 * Reads a V8 heap snapshot (`--heapsnapshot-signal`, `v8.writeHeapSnapshot`) to tell what a process
 * still holds: the strings reachable from its roots, and how each is reached, for tests that check
 * a process keeps nothing of what it was done with.
 *
 *   const d = await startDevicelet({ ..., nodeFlags: heapSnapshotFlags(dir) });
 *   const heap = readHeapSnapshot(await takeHeapSnapshot(d, dir), { ignoreEdges: ["#removedCreates"] });
 *   heap.held("a-pod-uid");          // the path from a root to it, or undefined
 *   podsHeld(heap, namespace, pods); // "name: path" for each pod whose UID or key is held
 *
 * Only strong references count: weak edges, and the tables of internalized and external strings
 * (V8 drops an entry of theirs once nothing else holds its string), are not followed.
 */
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { eventually } from "./eventually.ts";

interface Snapshot {
  readonly snapshot: {
    readonly meta: {
      readonly node_fields: string[];
      readonly node_types: [string[], ...unknown[]];
      readonly edge_fields: string[];
      readonly edge_types: [string[], ...unknown[]];
    };
  };
  readonly nodes: number[];
  readonly edges: number[];
  readonly strings: string[];
}

const STRING_TYPES = new Set(["string", "concatenated string", "sliced string"]);
const WEAK_ROOTS = new Set(["(Internalized strings)", "(External strings)"]);

export interface HeapStrings {
  /**
   * How a reachable string containing `needle` is held, root first (`Map ─table→ …`), or
   * undefined when no reachable string contains it.
   */
  held(needle: string): string | undefined;
}

/**
 * Parses the snapshot and marks what its roots reach. `ignoreEdges`: property names not followed,
 * for what a test knows is kept on purpose (a bounded history).
 */
export function readHeapSnapshot(
  file: string,
  o: { readonly ignoreEdges?: readonly string[] } = {},
): HeapStrings {
  const s = JSON.parse(readFileSync(file, "utf8")) as Snapshot;
  const { meta } = s.snapshot;
  const nodeFields = meta.node_fields.length;
  const edgeFields = meta.edge_fields.length;
  const [nodeTypes] = meta.node_types;
  const [edgeTypes] = meta.edge_types;
  const nType = meta.node_fields.indexOf("type");
  const nName = meta.node_fields.indexOf("name");
  const nEdges = meta.node_fields.indexOf("edge_count");
  const eType = meta.edge_fields.indexOf("type");
  const eName = meta.edge_fields.indexOf("name_or_index");
  const eTo = meta.edge_fields.indexOf("to_node");
  const count = s.nodes.length / nodeFields;
  const nodeName = (i: number) => s.strings[s.nodes[i * nodeFields + nName] ?? 0] ?? "";
  const nodeType = (i: number) => nodeTypes[s.nodes[i * nodeFields + nType] ?? 0] ?? "";
  const edgeType = (e: number) => edgeTypes[s.edges[e + eType] ?? 0] ?? "";
  const edgeName = (e: number) => {
    const n = s.edges[e + eName] ?? 0;
    const t = edgeType(e);
    return t === "element" || t === "hidden" ? `[${n}]` : (s.strings[n] ?? "");
  };
  const firstEdge = new Uint32Array(count + 1);
  for (let i = 0, e = 0; i < count; i++) {
    firstEdge[i] = e;
    e += (s.nodes[i * nodeFields + nEdges] ?? 0) * edgeFields;
  }
  firstEdge[count] = s.edges.length;
  const ignored = new Set(o.ignoreEdges ?? []);
  // Breadth first from the root (node 0): each node's parent, on a shortest path.
  const parent = new Int32Array(count).fill(-1);
  const parentEdge = new Int32Array(count).fill(-1);
  parent[0] = 0;
  const queue = [0];
  for (let head = 0; head < queue.length; head++) {
    const from = queue[head] ?? 0;
    for (let e = firstEdge[from] ?? 0; e < (firstEdge[from + 1] ?? 0); e += edgeFields) {
      if (edgeType(e) === "weak" || ignored.has(edgeName(e))) continue;
      const to = (s.edges[e + eTo] ?? 0) / nodeFields;
      if (parent[to] !== -1 || WEAK_ROOTS.has(nodeName(to))) continue;
      parent[to] = from;
      parentEdge[to] = e;
      queue.push(to);
    }
  }
  const reachable: number[] = [];
  for (let i = 0; i < count; i++) if (parent[i] !== -1 && STRING_TYPES.has(nodeType(i))) reachable.push(i);
  return {
    held(needle) {
      const found = reachable.find((i) => nodeName(i).includes(needle));
      if (found === undefined) return undefined;
      const path: string[] = [];
      for (let i = found; i !== 0 && path.length < 30; i = parent[i] ?? 0) {
        path.unshift(`─${edgeName(parentEdge[i] ?? 0)}→ ${nodeType(i)} ${nodeName(i).slice(0, 60)}`);
      }
      return path.join("\n");
    },
  };
}

/** Node.js flags for a process whose heap a test will read: SIGUSR2 writes a snapshot into `dir`. */
export const heapSnapshotFlags = (dir: string): string[] => [
  "--heapsnapshot-signal=SIGUSR2",
  `--diagnostic-dir=${dir}`,
];

/**
 * Has the process (started with {@link heapSnapshotFlags}) write a heap snapshot into `dir`, the
 * first one there; resolves with its path once it is written whole. V8 collects the garbage first.
 */
export async function takeHeapSnapshot(
  process_: { signal(signal: NodeJS.Signals): void },
  dir: string,
): Promise<string> {
  process_.signal("SIGUSR2");
  return eventually(
    () => {
      const name = readdirSync(dir).find((n) => n.endsWith(".heapsnapshot"));
      if (!name) throw new Error("no heap snapshot yet");
      const file = path.join(dir, name);
      if (!readFileSync(file, "utf8").endsWith("]}")) throw new Error("heap snapshot not written whole yet");
      return file;
    },
    { timeoutMs: 60_000 },
  );
}

/** For each pod the heap still holds by its UID or its `<namespace>/<name>` key: its name and how. */
export function podsHeld(
  heap: HeapStrings,
  namespace: string,
  pods: readonly { readonly metadata: { readonly name: string; readonly uid: string } }[],
): string[] {
  return pods.flatMap((p) => {
    const how = heap.held(p.metadata.uid) ?? heap.held(`${namespace}/${p.metadata.name}`);
    return how === undefined ? [] : [`${p.metadata.name}:\n${how}`];
  });
}
