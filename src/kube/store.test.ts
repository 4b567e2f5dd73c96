import { describe, expect, it } from "vitest";
import { ObjectStore } from "./store.ts";
import type { Pod } from "./types.ts";

const pod = (name: string, rv: string, node?: string, namespace = "ns"): Pod => ({
  metadata: { namespace, name, resourceVersion: rv, uid: `uid-${name}` },
  spec: { containers: [], ...(node ? { nodeName: node } : {}) },
});

describe("ObjectStore", () => {
  it("keys namespaced objects by namespace/name and cluster-scoped ones by name", () => {
    const store = new ObjectStore<Pod>();
    store.upsert(pod("a", "1"));
    store.upsert({ metadata: { name: "node-1", resourceVersion: "1" } });
    expect([...store.keys()]).toEqual(["ns/a", "node-1"]);
  });

  it("reports add, then update only when the resourceVersion changes, then delete", () => {
    const store = new ObjectStore<Pod>();
    expect(store.upsert(pod("a", "1"))?.type).toBe("add");
    expect(store.upsert(pod("a", "1"))).toBeUndefined();
    const update = store.upsert(pod("a", "2"));
    expect(update?.type).toBe("update");
    expect(update?.type === "update" && update.old.metadata?.resourceVersion).toBe("1");
    expect(store.remove(pod("a", "3"))).toEqual({ type: "delete", object: pod("a", "3") });
    expect(store.remove(pod("a", "3"))).toBeUndefined();
    expect(store.size).toBe(0);
  });

  it("diffs a re-list: adds, changed objects, and deletes for what vanished (with its last state)", () => {
    const store = new ObjectStore<Pod>();
    store.replace([pod("keep", "1"), pod("change", "1"), pod("gone", "1")]);
    const changes = store.replace([pod("keep", "1"), pod("change", "5"), pod("new", "6")]);
    expect(changes.map((c) => `${c.type} ${c.object.metadata?.name ?? ""}`).sort()).toEqual([
      "add new",
      "delete gone",
      "update change",
    ]);
    const deleted = changes.find((c) => c.type === "delete");
    expect(deleted?.object.metadata?.resourceVersion).toBe("1");
    expect([...store.keys()].sort()).toEqual(["ns/change", "ns/keep", "ns/new"]);
  });

  it("keeps secondary indexes in step with adds, moves and deletes", () => {
    const store = new ObjectStore<Pod>();
    store.upsert(pod("early", "1", "dev-1"));
    store.addIndex("node", (p) => p.spec?.nodeName);
    store.upsert(pod("a", "2", "dev-1"));
    store.upsert(pod("b", "3", "dev-2"));
    store.upsert(pod("unbound", "4"));
    expect(
      store
        .byIndex("node", "dev-1")
        .map((p) => p.metadata?.name)
        .sort(),
    ).toEqual(["a", "early"]);
    store.upsert(pod("a", "5", "dev-2"));
    expect(store.byIndex("node", "dev-1").map((p) => p.metadata?.name)).toEqual(["early"]);
    expect(
      store
        .byIndex("node", "dev-2")
        .map((p) => p.metadata?.name)
        .sort(),
    ).toEqual(["a", "b"]);
    store.replace([pod("b", "3", "dev-2")]);
    expect(store.byIndex("node", "dev-1")).toEqual([]);
    expect(store.byIndex("node", "dev-2").map((p) => p.metadata?.name)).toEqual(["b"]);
    expect(() => store.byIndex("nope", "x")).toThrow("no index nope");
    expect(() => {
      store.addIndex("node", () => undefined);
    }).toThrow("already exists");
  });
});
