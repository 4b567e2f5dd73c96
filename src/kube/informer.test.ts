import { ApiException } from "@kubernetes/client-node/dist/gen/apis/exception.js";
import { pino } from "pino";
import { describe, expect, it } from "vitest";
import type { ListOptions, ListResult, RequestOptions } from "./client.ts";
import { Informer, type ListWatchClient } from "./informer.ts";
import type { Query } from "./transport.ts";
import type { KubeObject, Pod, WatchEvent } from "./types.ts";

const logger = pino({ level: "silent" });

const pod = (name: string, rv: string, extra: Partial<Pod["metadata"]> = {}): Pod => ({
  metadata: { namespace: "ns", name, resourceVersion: rv, uid: `uid-${name}`, ...extra },
});
const gone = () =>
  new ApiException(410, "expired", JSON.stringify({ kind: "Status", code: 410, reason: "Expired" }), {});

/** A watch's events; with `after`, none is sent before it settles. */
type WatchScript = { events: WatchEvent<Pod>[]; end?: Error; after?: Promise<unknown> };

/** A scripted API server: each list/watch call takes the next script; with none left it waits for abort. */
class FakeApi implements ListWatchClient {
  /** A list answered later: a promise resolved by the test. */
  readonly lists: (ListResult<Pod> | Error | Promise<ListResult<Pod>>)[] = [];
  readonly watches: WatchScript[] = [];
  readonly calls: { kind: "list" | "watch"; query: Query | undefined; limit?: number | undefined }[] = [];

  list<T extends KubeObject>(_path: string, query?: Query, options?: ListOptions<T>): Promise<ListResult<T>> {
    this.calls.push({ kind: "list", query, limit: options?.limit });
    const next = this.lists.shift();
    if (!next) return untilAborted(options?.signal);
    if (next instanceof Error) return Promise.reject(next);
    return Promise.resolve(next).then((list) => {
      const { items, resourceVersion } = structuredClone(list) as unknown as ListResult<T>;
      const each = options?.each ?? ((item: T) => item);
      return { items: items.flatMap((item) => each(item) ?? []), resourceVersion };
    });
  }

  watch<T extends KubeObject>(
    _path: string,
    query: Query,
    options?: RequestOptions,
  ): AsyncIterable<WatchEvent<T>> {
    this.calls.push({ kind: "watch", query });
    const script = this.watches.shift();
    const signal = options?.signal;
    return (async function* () {
      if (!script) {
        await untilAborted(signal).catch(() => undefined);
        return;
      }
      await script.after;
      for (const event of structuredClone(script.events)) yield event as unknown as WatchEvent<T>;
      if (script.end) throw script.end;
    })();
  }
}

function untilAborted<T>(signal: AbortSignal | undefined): Promise<T> {
  return new Promise((_resolve, reject) => {
    signal?.addEventListener("abort", () => {
      reject(new Error("aborted"));
    });
  });
}

/** Waits until `check` passes, letting the informer's promises run (no timers involved). */
async function until(check: () => boolean): Promise<void> {
  for (let i = 0; i < 1000 && !check(); i++) await new Promise((r) => setImmediate(r));
  expect(check()).toBe(true);
}

function setup(api: FakeApi, extra: Partial<ConstructorParameters<typeof Informer<Pod>>[0]> = {}) {
  const sleeps: number[] = [];
  const informer = new Informer<Pod>({
    client: api,
    logger,
    path: "/api/v1/pods",
    fieldSelector: "spec.nodeName!=",
    random: () => 1,
    sleep: (ms) => {
      sleeps.push(ms);
      return Promise.resolve();
    },
    ...extra,
  });
  const seen: string[] = [];
  informer.onAdd((p) => seen.push(`add ${p.metadata?.name ?? ""}@${p.metadata?.resourceVersion ?? ""}`));
  informer.onUpdate((p, old) =>
    seen.push(
      `update ${p.metadata?.name ?? ""}@${old.metadata?.resourceVersion ?? ""}->${p.metadata?.resourceVersion ?? ""}`,
    ),
  );
  informer.onDelete((p) => seen.push(`delete ${p.metadata?.name ?? ""}`));
  const controller = new AbortController();
  return { informer, seen, sleeps, controller };
}

describe("Informer", () => {
  it("lists, becomes ready, trims managedFields, then applies watch events from the list's resourceVersion", async () => {
    const api = new FakeApi();
    api.lists.push({
      items: [pod("a", "5", { managedFields: [{ manager: "kubectl" }] }), pod("b", "6")],
      resourceVersion: "10",
    });
    api.watches.push({
      events: [
        { type: "ADDED", object: pod("c", "11") },
        { type: "MODIFIED", object: pod("a", "12") },
        { type: "MODIFIED", object: pod("a", "12") }, // replay: no update
        { type: "DELETED", object: pod("b", "13") },
        { type: "BOOKMARK", object: { metadata: { resourceVersion: "20" } } },
      ],
    });
    const { informer, seen, controller } = setup(api);
    const done = informer.start(controller.signal);
    await informer.ready;
    expect(informer.get("ns/a")?.metadata?.managedFields).toBeUndefined();
    await until(() => informer.resourceVersion === "20");
    expect(seen).toEqual(["add a@5", "add b@6", "add c@11", "update a@5->12", "delete b"]);
    expect(informer.keys().sort()).toEqual(["ns/a", "ns/c"]);
    expect(api.calls[1]).toEqual({
      kind: "watch",
      query: expect.objectContaining({
        resourceVersion: "10",
        allowWatchBookmarks: true,
        fieldSelector: "spec.nodeName!=",
      }) as unknown,
    });
    controller.abort();
    await done;
  });

  it("on 410 re-lists at once and emits the deletes and changes it missed", async () => {
    const api = new FakeApi();
    api.lists.push({ items: [pod("a", "1"), pod("b", "2"), pod("c", "3")], resourceVersion: "3" });
    api.watches.push({ events: [], end: gone() });
    api.lists.push({ items: [pod("a", "1"), pod("b", "9"), pod("d", "8")], resourceVersion: "9" });
    const { informer, seen, sleeps, controller } = setup(api);
    const done = informer.start(controller.signal);
    await until(() => api.calls.length === 4);
    expect(seen).toEqual(["add a@1", "add b@2", "add c@3", "update b@2->9", "add d@8", "delete c"]);
    expect(sleeps).toEqual([]);
    expect(api.calls.map((c) => c.kind)).toEqual(["list", "watch", "list", "watch"]);
    expect(api.calls[3]?.query?.resourceVersion).toBe("9");
    controller.abort();
    await done;
  });

  it("treats a 410 ERROR mid-stream like an expired start", async () => {
    const api = new FakeApi();
    api.lists.push({ items: [pod("a", "1")], resourceVersion: "1" });
    api.watches.push({ events: [{ type: "MODIFIED", object: pod("a", "2") }], end: gone() });
    api.lists.push({ items: [], resourceVersion: "7" });
    const { informer, seen, controller } = setup(api);
    const done = informer.start(controller.signal);
    await until(() => api.calls.length === 4);
    expect(seen).toEqual(["add a@1", "update a@1->2", "delete a"]);
    controller.abort();
    await done;
  });

  it("backs off 1 s doubling to 30 s on failures, resumes from its resourceVersion, and resets after a healthy watch", async () => {
    const api = new FakeApi();
    api.lists.push(new Error("list down"));
    api.lists.push({ items: [], resourceVersion: "1" });
    for (let i = 0; i < 6; i++) api.watches.push({ events: [], end: new Error("reset") });
    api.watches.push({ events: [{ type: "ADDED", object: pod("a", "2") }] }); // healthy, then closes
    api.watches.push({ events: [], end: new Error("reset") });
    const { informer, sleeps, controller } = setup(api);
    const done = informer.start(controller.signal);
    await until(() => api.calls.filter((c) => c.kind === "watch").length === 9);
    // The healthy watch's end is followed at once by the next watch; the failure after it starts
    // the backoff over.
    expect(sleeps).toEqual([1000, 2000, 4000, 8000, 16000, 30000, 30000, 1000]);
    // Only one successful list: every re-watch resumed from the last resourceVersion.
    expect(api.calls.filter((c) => c.kind === "list")).toHaveLength(2);
    expect(api.calls.at(-1)?.query?.resourceVersion).toBe("2");
    controller.abort();
    await done;
  });

  it("watches again at once, from where it ended, when the server ends a watch that delivered", async () => {
    const api = new FakeApi();
    api.lists.push({ items: [], resourceVersion: "1" });
    // Ended by the server after two events (its timeout, or a watcher it judged too slow).
    api.watches.push({
      events: [
        { type: "ADDED", object: pod("a", "2") },
        { type: "ADDED", object: pod("b", "3") },
      ],
    });
    // A watch that ends at once with nothing is not healthy: that one waits.
    api.watches.push({ events: [] });
    api.watches.push({ events: [{ type: "MODIFIED", object: pod("a", "4") }] });
    const { informer, seen, sleeps, controller } = setup(api);
    const done = informer.start(controller.signal);
    await until(() => seen.includes("update a@2->4"));
    const watches = api.calls.filter((c) => c.kind === "watch");
    expect(watches.map((c) => c.query?.resourceVersion).slice(0, 3)).toEqual(["1", "3", "3"]);
    expect(sleeps).toEqual([1000]); // only after the empty one
    controller.abort();
    await done;
  });

  it("jitters the wait between half and all of the backoff", async () => {
    const api = new FakeApi();
    api.lists.push(new Error("down"), new Error("down"));
    const { informer, sleeps, controller } = setup(api, { random: () => 0 });
    const done = informer.start(controller.signal);
    await until(() => sleeps.length === 2);
    expect(sleeps).toEqual([500, 1000]);
    controller.abort();
    await done;
  });

  it("keeps calling other handlers when one throws", async () => {
    const api = new FakeApi();
    api.lists.push({ items: [pod("a", "1")], resourceVersion: "1" });
    const { informer, seen, controller } = setup(api);
    informer.onAdd(() => {
      throw new Error("handler bug");
    });
    const later: string[] = [];
    informer.onAdd((p) => later.push(p.metadata?.name ?? ""));
    const done = informer.start(controller.signal);
    await informer.ready;
    expect(seen).toEqual(["add a@1"]);
    expect(later).toEqual(["a"]);
    controller.abort();
    await done;
  });

  it("stops on abort: done resolves, ready rejects if it never listed, and it cannot start twice", async () => {
    const api = new FakeApi();
    const { informer, controller } = setup(api);
    const done = informer.start(controller.signal);
    expect(() => informer.start(controller.signal)).toThrow("already started");
    controller.abort(new Error("shutdown"));
    await done;
    await expect(informer.ready).rejects.toThrow("shutdown");
    expect(informer.hasSynced).toBe(false);
  });

  it("serves indexes over the cache", async () => {
    const api = new FakeApi();
    const bound = (name: string, rv: string, node: string): Pod => ({
      ...pod(name, rv),
      spec: { containers: [], nodeName: node },
    });
    api.lists.push({ items: [bound("a", "1", "dev-1"), bound("b", "2", "dev-2")], resourceVersion: "2" });
    api.watches.push({ events: [{ type: "MODIFIED", object: bound("b", "3", "dev-1") }] });
    const { informer, controller } = setup(api);
    informer.addIndex("node", (p) => p.spec?.nodeName);
    const done = informer.start(controller.signal);
    await until(() => informer.resourceVersion === "3");
    expect(
      informer
        .byIndex("node", "dev-1")
        .map((p) => p.metadata?.name)
        .sort(),
    ).toEqual(["a", "b"]);
    expect(informer.getByName("ns", "b")?.spec?.nodeName).toBe("dev-1");
    expect(informer.list()).toHaveLength(2);
    controller.abort();
    await done;
  });
});

describe("Informer: what it caches (keep, pickUp, refilter)", () => {
  const on = (name: string, rv: string, node: string): Pod => ({
    ...pod(name, rv),
    spec: { containers: [], nodeName: node },
  });
  /** An informer caching only pods on the `managed` nodes, as the pod controller's does. */
  const filtered = (api: FakeApi, managed: Set<string>) =>
    setup(api, { keep: (p) => managed.has(p.spec?.nodeName ?? "") });

  it("never caches what keep refuses, on list and on watch, and drops a cached object an event shows no longer passing", async () => {
    const api = new FakeApi();
    api.lists.push({ items: [on("a", "1", "mine"), on("x", "2", "other")], resourceVersion: "2" });
    api.watches.push({
      events: [
        { type: "ADDED", object: on("y", "3", "other") },
        { type: "MODIFIED", object: on("x", "4", "other") },
        { type: "DELETED", object: on("y", "5", "other") },
        { type: "ADDED", object: on("b", "6", "mine") },
        // Same key, no longer passing (its node left the managed set meanwhile).
        {
          type: "MODIFIED",
          object: { ...on("a", "7", "mine"), metadata: { ...pod("a", "7").metadata, labels: { gone: "1" } } },
        },
        { type: "BOOKMARK", object: { metadata: { resourceVersion: "9" } } },
      ],
    });
    const managed = new Set(["mine"]);
    const { informer, seen, controller } = setup(api, {
      keep: (p) => managed.has(p.spec?.nodeName ?? "") && p.metadata?.labels?.["gone"] === undefined,
    });
    const done = informer.start(controller.signal);
    await until(() => informer.resourceVersion === "9");
    expect(seen).toEqual(["add a@1", "add b@6", "delete a"]);
    expect(informer.keys()).toEqual(["ns/b"]);
    controller.abort();
    await done;
  });

  it("applies keep to a re-list too: a refused object cached before is reported deleted", async () => {
    const api = new FakeApi();
    const managed = new Set(["mine", "old"]);
    const expire = Promise.withResolvers<undefined>();
    api.lists.push({ items: [on("a", "1", "mine"), on("o", "2", "old")], resourceVersion: "2" });
    api.watches.push({ events: [], end: gone(), after: expire.promise });
    api.lists.push({ items: [on("a", "1", "mine"), on("o", "2", "old")], resourceVersion: "3" });
    const { informer, seen, controller } = filtered(api, managed);
    const done = informer.start(controller.signal);
    await informer.ready;
    managed.delete("old");
    expire.resolve(undefined);
    await until(() => api.calls.length === 4);
    expect(seen).toEqual(["add a@1", "add o@2", "delete o"]);
    expect(informer.keys()).toEqual(["ns/a"]);
    controller.abort();
    await done;
  });

  it("picks up objects keep accepts now with one list no older than the watch, holding watch events until it is merged", async () => {
    const api = new FakeApi();
    const managed = new Set(["mine"]);
    api.lists.push({
      items: [on("a", "1", "mine"), on("p", "2", "new"), on("q", "3", "new")],
      resourceVersion: "10",
    });
    const watchOpen = Promise.withResolvers<undefined>();
    // While the pick-up lists: q is deleted, p changes.
    api.watches.push({
      after: watchOpen.promise,
      events: [
        { type: "DELETED", object: on("q", "12", "new") },
        { type: "MODIFIED", object: on("p", "13", "new") },
      ],
    });
    const picked = Promise.withResolvers<ListResult<Pod>>();
    api.lists.push(picked.promise);
    const { informer, seen, controller } = filtered(api, managed);
    const done = informer.start(controller.signal);
    await informer.ready;
    expect(informer.keys()).toEqual(["ns/a"]);

    managed.add("new");
    const pickedUp = informer.pickUp({ fieldSelector: "spec.nodeName=new" });
    // The watch delivers both events before the list answers, with a snapshot older than them.
    watchOpen.resolve(undefined);
    await until(() => api.calls.length === 3);
    for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
    expect(seen).toEqual(["add a@1"]);
    picked.resolve({ items: [on("p", "11", "new"), on("q", "11", "new")], resourceVersion: "11" });
    await pickedUp;
    await until(() => informer.resourceVersion === "13");

    // Merged, then the events on top: q's delete is not lost, p is at its latest.
    expect(seen).toEqual(["add a@1", "add p@11", "add q@11", "delete q", "update p@11->13"]);
    expect(informer.keys().sort()).toEqual(["ns/a", "ns/p"]);
    expect(api.calls[2]).toEqual({
      kind: "list",
      query: {
        fieldSelector: "spec.nodeName!=,spec.nodeName=new",
        labelSelector: undefined,
        resourceVersion: "10",
        resourceVersionMatch: "NotOlderThan",
      },
      limit: 0,
    });
    controller.abort();
    await done;
  });

  it("does not list to pick up before the first list, and tries a failed pick-up again with backoff", async () => {
    const api = new FakeApi();
    const managed = new Set(["mine"]);
    const { informer, sleeps, controller } = filtered(api, managed);
    await informer.pickUp({ fieldSelector: "spec.nodeName=new" }); // not started: nothing to do
    expect(api.calls).toEqual([]);

    const first = Promise.withResolvers<ListResult<Pod>>();
    api.lists.push(first.promise);
    const done = informer.start(controller.signal);
    // Started, first list under way: that list applies keep as it is when it answers.
    await informer.pickUp({ fieldSelector: "spec.nodeName=new" });
    expect(api.calls).toHaveLength(1);
    first.resolve({ items: [on("p", "2", "new")], resourceVersion: "5" });
    await informer.ready;
    expect(informer.keys()).toEqual([]);
    api.lists.push(new Error("apiserver down"), { items: [on("p", "2", "new")], resourceVersion: "6" });
    managed.add("new");
    await informer.pickUp({ fieldSelector: "spec.nodeName=new" });
    expect(informer.keys()).toEqual(["ns/p"]);
    expect(sleeps).toEqual([1000]);
    expect(api.calls.filter((c) => c.kind === "list")).toHaveLength(3);
    controller.abort();
    await done;
  });

  it("drops a pick-up's answer when a re-list came first: the re-list's snapshot is the one the watch follows", async () => {
    const api = new FakeApi();
    const managed = new Set(["mine"]);
    const expire = Promise.withResolvers<undefined>();
    const picked = Promise.withResolvers<ListResult<Pod>>();
    api.lists.push({ items: [on("a", "1", "mine"), on("p", "2", "new")], resourceVersion: "10" });
    api.watches.push({ events: [], end: gone(), after: expire.promise });
    api.lists.push(picked.promise);
    api.lists.push({ items: [on("a", "1", "mine"), on("p", "20", "new")], resourceVersion: "20" });
    const { informer, seen, controller } = filtered(api, managed);
    const done = informer.start(controller.signal);
    await informer.ready;
    managed.add("new");
    const pickedUp = informer.pickUp({ fieldSelector: "spec.nodeName=new" });
    expire.resolve(undefined);
    await until(() => informer.resourceVersion === "20");
    // An answer older than the re-list (q was deleted since): merging it would regress p and
    // bring q back with no event ever to remove it.
    picked.resolve({ items: [on("p", "11", "new"), on("q", "11", "new")], resourceVersion: "11" });
    await pickedUp;
    expect(seen).toEqual(["add a@1", "add p@20"]);
    expect(informer.keys().sort()).toEqual(["ns/a", "ns/p"]);
    controller.abort();
    await done;
  });

  it("refilter drops the cached objects keep no longer passes and reports them deleted", async () => {
    const api = new FakeApi();
    const managed = new Set(["one", "two"]);
    api.lists.push({
      items: [on("a", "1", "one"), on("b", "2", "two"), on("c", "3", "two")],
      resourceVersion: "3",
    });
    const { informer, seen, controller } = filtered(api, managed);
    const done = informer.start(controller.signal);
    await informer.ready;
    managed.delete("two");
    expect(informer.refilter(["ns/b", "ns/a", "ns/missing"])).toBe(1);
    expect(informer.keys().sort()).toEqual(["ns/a", "ns/c"]);
    expect(informer.refilter()).toBe(1);
    expect(informer.keys()).toEqual(["ns/a"]);
    expect(seen).toEqual(["add a@1", "add b@2", "add c@3", "delete b", "delete c"]);
    controller.abort();
    await done;
  });
});
