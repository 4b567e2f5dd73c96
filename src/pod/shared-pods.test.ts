/**
 * SharedPods against the in-memory API server of test/support/fake-kube.ts: one list and one watch
 * for every view; each view is handed only the pods its `keep` passes (as an informer with that
 * `keep` would), a pick-up delivers to the view that asked, a view opened late gets its pods, and
 * a closed view hears nothing more and leaves nothing of its own in the shared cache.
 */
import pino from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { FakeClock } from "../base/fake-clock.ts";
import { objectKey, type Pod } from "../kube/index.ts";
import { FakeKube } from "../../test/support/fake-kube.ts";
import { SharedPods, type PodSource } from "./shared-pods.ts";

const logger = pino({ level: "silent" });

let stops: AbortController[] = [];
afterEach(() => {
  for (const s of stops) s.abort();
  stops = [];
});
const stopper = () => {
  const s = new AbortController();
  stops.push(s);
  return s;
};

const pod = (name: string, node: string, labels: Record<string, string> = {}): Pod => ({
  apiVersion: "v1",
  kind: "Pod",
  metadata: { namespace: "ns", name, labels },
  spec: { nodeName: node, containers: [{ name: "app", image: "example.com/app:1" }] },
});

/** A view keeping the pods on `nodes` (a set the test changes), and what its handlers heard. */
function viewOf(shared: SharedPods, nodes: Set<string>, keepAlso: (pod: Pod) => boolean = () => false) {
  const view = shared.view((p) => nodes.has(p.spec?.nodeName ?? "") || keepAlso(p));
  const heard: string[] = [];
  const name = (p: Pod) => p.metadata?.name ?? "";
  view.onAdd((p) => heard.push(`add ${name(p)}`));
  view.onUpdate((p, old) =>
    heard.push(`update ${name(p)} ${old.metadata?.labels?.v ?? ""}>${p.metadata?.labels?.v ?? ""}`),
  );
  view.onDelete((p) => heard.push(`delete ${name(p)}`));
  return { view, nodes, heard };
}

const names = (pods: readonly Pod[]) => pods.map((p) => p.metadata?.name ?? "").sort();

async function world() {
  const clock = new FakeClock(Date.parse("2026-03-01T12:00:00Z"));
  const kube = new FakeKube({ clock });
  const shared = new SharedPods({ client: kube, logger, clock });
  return { clock, kube, shared };
}

async function open(view: PodSource, clock: FakeClock) {
  const stop = stopper();
  const closed = view.start(stop.signal);
  await clock.advanceAsync(0);
  await view.ready;
  return { stop, closed };
}

describe("SharedPods", () => {
  it("serves two views from one list and one watch, each with only the pods of its nodes", async () => {
    const { clock, kube, shared } = await world();
    kube.apply("pods", pod("a1", "node-a"));
    kube.apply("pods", pod("b1", "node-b"));
    kube.apply("pods", pod("x1", "kubeadm-1"));
    void shared.start(stopper().signal);
    const a = viewOf(shared, new Set(["node-a"]));
    const b = viewOf(shared, new Set(["node-b"]));
    await open(a.view, clock);
    await open(b.view, clock);

    expect(kube.watching("pods")).toBe(1);
    expect(kube.count("watch")).toBe(1);
    expect(names(a.view.list())).toEqual(["a1"]);
    expect(names(b.view.list())).toEqual(["b1"]);
    expect(shared.size).toBe(2);
    expect(a.heard).toEqual(["add a1"]);
    expect(b.heard).toEqual(["add b1"]);

    kube.apply("pods", pod("a2", "node-a"));
    kube.apply("pods", pod("b1", "node-b", { v: "2" }));
    kube.apply("pods", pod("x2", "kubeadm-1"));
    kube.remove("pods", "ns/a1");
    await clock.advanceAsync(1_000);

    expect(a.heard).toEqual(["add a1", "add a2", "delete a1"]);
    expect(b.heard).toEqual(["add b1", "update b1 >2"]);
    // Reads are filtered as the events are.
    expect(a.view.get("ns/b1")).toBeUndefined();
    expect(b.view.get("ns/b1")?.metadata?.labels?.v).toBe("2");
    expect(a.view.byIndex("node", "node-b")).toEqual([]);
    expect(names(b.view.byIndex("node", "node-b"))).toEqual(["b1"]);
    expect([a.view.size, b.view.size, shared.size]).toEqual([1, 1, 2]);
    expect(kube.count("watch")).toBe(1);
  });

  it("a pick-up delivers the pods of a newly served node to the view that serves it, even those already cached for another view", async () => {
    const { clock, kube, shared } = await world();
    kube.apply("pods", pod("a1", "node-a"));
    void shared.start(stopper().signal);
    // b keeps `held` (its provider holds it) though it is on node-c, which nobody serves yet.
    const a = viewOf(shared, new Set(["node-a"]));
    const b = viewOf(shared, new Set(["node-b"]), (p) => p.metadata?.name === "held");
    await open(a.view, clock);
    await open(b.view, clock);
    kube.apply("pods", pod("early", "node-c"));
    kube.apply("pods", pod("held", "node-c"));
    await clock.advanceAsync(1_000);
    expect(a.heard).toEqual(["add a1"]);
    expect(b.heard).toEqual(["add held"]);
    expect(shared.size).toBe(2);

    a.nodes.add("node-c");
    await a.view.pickUp({ fieldSelector: "spec.nodeName=node-c" });
    expect(a.heard).toEqual(["add a1", "add early", "add held"]);
    expect(names(a.view.byIndex("node", "node-c"))).toEqual(["early", "held"]);
    expect(b.heard).toEqual(["add held"]);
    expect(names(b.view.list())).toEqual(["held"]);
    // Later events of node-c reach a; of `held`, both.
    kube.apply("pods", pod("held", "node-c", { v: "2" }));
    await clock.advanceAsync(1_000);
    expect(a.heard.at(-1)).toBe("update held >2");
    expect(b.heard.at(-1)).toBe("update held >2");
  });

  it("a view opened after the first list gets the pods on its nodes, with one list for the views opening together", async () => {
    const { clock, kube, shared } = await world();
    kube.apply("pods", pod("c1", "node-c"));
    kube.apply("pods", pod("d1", "node-d"));
    void shared.start(stopper().signal);
    await clock.advanceAsync(0);
    await shared.ready;
    expect(shared.size).toBe(0);
    const lists = kube.count("list");

    const c = viewOf(shared, new Set(["node-c"]));
    const d = viewOf(shared, new Set(["node-d"]));
    const stop = stopper();
    void c.view.start(stop.signal);
    void d.view.start(stop.signal);
    await clock.advanceAsync(0);
    await Promise.all([c.view.ready, d.view.ready]);

    expect(c.heard).toEqual(["add c1"]);
    expect(d.heard).toEqual(["add d1"]);
    expect(kube.count("list")).toBe(lists + 1);
    expect(kube.count("watch")).toBe(1);
  });

  it("a closed view hears nothing more, and the pods only it kept leave the shared cache", async () => {
    const { clock, kube, shared } = await world();
    kube.apply("pods", pod("a1", "node-a"));
    kube.apply("pods", pod("b1", "node-b"));
    kube.apply("pods", pod("both", "node-b"));
    void shared.start(stopper().signal);
    const a = viewOf(shared, new Set(["node-a"]), (p) => p.metadata?.name === "both");
    const b = viewOf(shared, new Set(["node-b"]));
    const opened = await open(a.view, clock);
    await open(b.view, clock);
    expect(names(a.view.list())).toEqual(["a1", "both"]);
    expect(shared.size).toBe(3);

    opened.stop.abort();
    await opened.closed;
    expect(shared.views).toBe(1);
    expect(shared.size).toBe(2);
    expect(names(b.view.list())).toEqual(["b1", "both"]);
    expect(a.view.list()).toEqual([]);
    expect(a.view.size).toBe(0);

    const before = [...a.heard];
    kube.apply("pods", pod("a2", "node-a"));
    kube.apply("pods", pod("both", "node-b", { v: "2" }));
    kube.remove("pods", "ns/a1");
    await clock.advanceAsync(1_000);
    const lists = kube.count("list");
    await a.view.pickUp({ fieldSelector: "spec.nodeName=node-a" });
    expect(kube.count("list")).toBe(lists);
    expect(a.heard).toEqual(before);
    expect(b.heard.at(-1)).toBe("update both >2");
    expect(shared.size).toBe(2);
  });

  it("refilter drops a node's pods from the view (as deletes) and from the shared cache unless another view keeps them", async () => {
    const { clock, kube, shared } = await world();
    kube.apply("pods", pod("a1", "node-a"));
    kube.apply("pods", pod("shared", "node-a"));
    void shared.start(stopper().signal);
    const a = viewOf(shared, new Set(["node-a"]));
    const b = viewOf(shared, new Set(["node-b"]), (p) => p.metadata?.name === "shared");
    await open(a.view, clock);
    await open(b.view, clock);

    a.nodes.delete("node-a");
    const removed = a.view.refilter(a.view.byIndex("node", "node-a").map(objectKey));
    expect(removed).toBe(2);
    expect(a.heard).toEqual(["add a1", "add shared", "delete a1", "delete shared"]);
    expect(a.view.list()).toEqual([]);
    expect(names(b.view.list())).toEqual(["shared"]);
    expect(shared.size).toBe(1);
    expect(b.heard).toEqual(["add shared"]);
  });

  it("a view whose signal aborts before its pods are delivered rejects `ready`", async () => {
    const { clock, shared } = await world();
    const stop = new AbortController();
    const a = viewOf(shared, new Set(["node-a"]));
    // The shared informer is not started: the view waits for its first list.
    const closed = a.view.start(stop.signal);
    await clock.advanceAsync(0);
    stop.abort(new Error("shard moved"));
    await closed;
    await expect(a.view.ready).rejects.toThrow("shard moved");
    expect(shared.views).toBe(0);
  });
});
