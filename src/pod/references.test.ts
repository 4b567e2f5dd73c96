/**
 * ReferenceCache's Secrets on an injected clock, against a fake API that has no Secret list or
 * watch at all (a call to either fails the test): a Secret is read once and trusted for the TTL, an
 * edit is seen and its pods enqueued within the TTL, a Secret that appears later is seen within
 * 5 s, a failed re-read keeps the last value, and a Secret no pod refers to is no longer read.
 */
import pino from "pino";
import { describe, expect, it } from "vitest";
import { FakeClock } from "../base/fake-clock.ts";
import type { ConfigMap, KubeObject, Secret, WatchEvent } from "../kube/index.ts";
import { FakeKube } from "../../test/support/fake-kube.ts";
import { ReferenceCache } from "./references.ts";

const logger = pino({ level: "silent" });
const TTL = 60_000;
const none = { configMaps: [], secrets: [] };

/** Secrets by `ns/name`; GETs counted; list and watch allowed for ConfigMaps only. */
class SecretApi {
  readonly secrets = new Map<string, Secret>();
  readonly gets: string[] = [];
  failGets = false;
  #rv = 1;

  put(namespace: string, name: string, value: string): void {
    this.secrets.set(`${namespace}/${name}`, {
      metadata: { namespace, name, resourceVersion: String(++this.#rv) },
      data: { value: Buffer.from(value).toString("base64") },
    });
  }

  readonly client = {
    list: (path: string) => {
      if (path !== "/api/v1/configmaps") throw new Error(`list ${path}: devicelet must not list it`);
      return Promise.resolve({ items: [] as never[], resourceVersion: "1" });
    },
    watch: <T extends KubeObject>(path: string, _q: unknown, o?: { signal?: AbortSignal }) => {
      if (path !== "/api/v1/configmaps") throw new Error(`watch ${path}: devicelet must not watch it`);
      return (async function* (): AsyncGenerator<WatchEvent<T>> {
        await new Promise((resolve) => o?.signal?.addEventListener("abort", resolve));
        yield* [];
      })();
    },
    getConfigMap: (): Promise<ConfigMap | undefined> => Promise.resolve(undefined),
    getSecret: (namespace: string, name: string) => {
      this.gets.push(`${namespace}/${name}`);
      if (this.failGets) return Promise.reject(new Error("connection refused"));
      const found = this.secrets.get(`${namespace}/${name}`);
      return Promise.resolve(found ? structuredClone(found) : undefined);
    },
  };
}

async function setUp(o: { ttl?: number } = {}) {
  const api = new SecretApi();
  const clock = new FakeClock();
  const changed: string[] = [];
  const refs = new ReferenceCache({
    kube: api.client,
    logger,
    clock,
    secretTtlMs: o.ttl ?? TTL,
    onChange: (keys) => changed.push(...keys),
  });
  const controller = new AbortController();
  await refs.start(controller.signal);
  const value = async (pod: string, name = "creds") => {
    const lookups = await refs.lookups(pod, "ns", { configMaps: [], secrets: [name] });
    const data = lookups.secret("ns", name)?.data?.value;
    return data === undefined ? undefined : Buffer.from(data, "base64").toString();
  };
  return { api, clock, changed, refs, value, stop: () => controller.abort() };
}

describe("ReferenceCache Secrets: GET and a TTL, never list or watch", () => {
  it("reads a Secret once for all its pods and trusts it for the TTL", async () => {
    const { api, clock, value, stop } = await setUp();
    api.put("ns", "creds", "one");
    expect(await value("ns/a")).toBe("one");
    expect(await value("ns/b")).toBe("one");
    await clock.advanceAsync(TTL - 1_000);
    expect(await value("ns/a")).toBe("one");
    expect(api.gets).toEqual(["ns/creds"]);
    stop();
  });

  it("sees an edit within the TTL and enqueues every pod that refers to it", async () => {
    const { api, clock, changed, value, stop } = await setUp();
    api.put("ns", "creds", "one");
    await value("ns/a");
    await value("ns/b");
    await value("ns/other", "unrelated");
    api.put("ns", "creds", "two");
    await clock.advanceAsync(TTL - 1);
    expect(changed).toEqual([]);
    await clock.advanceAsync(1);
    expect(changed.sort()).toEqual(["ns/a", "ns/b"]);
    expect(await value("ns/a")).toBe("two");
    // The refresh read it; the reconcile it woke reads nothing.
    expect(api.gets.filter((g) => g === "ns/creds")).toHaveLength(2);
    stop();
  });

  it("an unchanged Secret is re-read each TTL but wakes no pod", async () => {
    const { api, clock, changed, value, stop } = await setUp();
    api.put("ns", "creds", "one");
    await value("ns/a");
    await clock.advanceAsync(3 * TTL);
    expect(api.gets).toHaveLength(4);
    expect(changed).toEqual([]);
    stop();
  });

  it("a Secret that appears later is seen within 5 s, even with a long TTL", async () => {
    const { api, clock, changed, value, stop } = await setUp({ ttl: 10 * 60_000 });
    expect(await value("ns/a")).toBeUndefined();
    api.put("ns", "creds", "late");
    await clock.advanceAsync(5_000);
    expect(changed).toEqual(["ns/a"]);
    expect(await value("ns/a")).toBe("late");
    stop();
  });

  it("a deleted Secret is seen as gone within the TTL", async () => {
    const { api, clock, changed, value, stop } = await setUp();
    api.put("ns", "creds", "one");
    await value("ns/a");
    api.secrets.delete("ns/creds");
    await clock.advanceAsync(TTL);
    expect(changed).toEqual(["ns/a"]);
    expect(await value("ns/a")).toBeUndefined();
    stop();
  });

  it("a failed re-read keeps the last value and is retried within 5 s", async () => {
    const { api, clock, changed, value, stop } = await setUp();
    api.put("ns", "creds", "one");
    await value("ns/a");
    api.failGets = true;
    await clock.advanceAsync(TTL);
    expect(await value("ns/a")).toBe("one");
    api.failGets = false;
    api.put("ns", "creds", "two");
    await clock.advanceAsync(5_000);
    expect(changed).toEqual(["ns/a"]);
    expect(await value("ns/a")).toBe("two");
    stop();
  });

  it("a first read that fails rejects, so the reconcile retries", async () => {
    const { api, value, stop } = await setUp();
    api.failGets = true;
    await expect(value("ns/a")).rejects.toThrow("connection refused");
    stop();
  });

  it("stops reading a Secret once no pod refers to it", async () => {
    const { api, clock, refs, value, stop } = await setUp();
    api.put("ns", "creds", "one");
    await value("ns/a");
    await value("ns/b");
    refs.untrack("ns/a");
    await clock.advanceAsync(TTL);
    expect(api.gets).toHaveLength(2);
    await refs.lookups("ns/b", "ns", none);
    await clock.advanceAsync(3 * TTL);
    expect(api.gets).toHaveLength(2);
    expect(refs.stats()).toMatchObject({ held: 0, pods: 0 });
    stop();
  });
});

describe("ReferenceCache subscribers: one cache for several pod controllers", () => {
  const cm = (v: string): ConfigMap => ({ metadata: { namespace: "ns", name: "cfg" }, data: { v } });
  const secret = (v: string): Secret => ({
    metadata: { namespace: "ns", name: "creds" },
    data: { v: Buffer.from(v).toString("base64") },
  });
  const both = { configMaps: ["cfg"], secrets: ["creds"] };

  async function setUpShared() {
    const clock = new FakeClock();
    const kube = new FakeKube({ clock });
    kube.apply("configmaps", cm("1"));
    kube.apply("secrets", secret("1"));
    const cache = new ReferenceCache({ kube, logger, clock, secretTtlMs: TTL });
    const stop = new AbortController();
    await Promise.all([cache.start(stop.signal), clock.advanceAsync(0)]);
    const subscriber = async () => {
      const heard: string[] = [];
      const refs = cache.subscribe((keys) => heard.push(...keys));
      const leave = new AbortController();
      await refs.start(leave.signal);
      return { refs, heard, leave: () => leave.abort() };
    };
    const configValue = async (refs: { lookups: ReferenceCache["lookups"] }, pod: string) =>
      (await refs.lookups(pod, "ns", both)).configMap("ns", "cfg")?.data?.v;
    return { clock, kube, cache, subscriber, configValue, stop: () => stop.abort() };
  }

  it("tells each subscriber only of its own pods, and reads shared data once", async () => {
    const { clock, kube, cache, subscriber, configValue, stop } = await setUpShared();
    const a = await subscriber();
    const b = await subscriber();
    expect(await configValue(a.refs, "ns/a")).toBe("1");
    expect(await configValue(b.refs, "ns/b")).toBe("1");
    expect([kube.count("getConfigMap"), kube.count("getSecret")]).toEqual([1, 1]);

    kube.apply("configmaps", cm("2"));
    await clock.advanceAsync(0);
    expect(a.heard).toEqual(["ns/a"]);
    expect(b.heard).toEqual(["ns/b"]);

    kube.apply("secrets", secret("2"));
    await clock.advanceAsync(TTL);
    expect(a.heard).toEqual(["ns/a", "ns/a"]);
    expect(b.heard).toEqual(["ns/b", "ns/b"]);

    // a's pod goes; b's still refers to both objects, which stay held and watched for it.
    a.refs.untrack("ns/a");
    kube.apply("configmaps", cm("3"));
    await clock.advanceAsync(0);
    expect(a.heard).toHaveLength(2);
    expect(b.heard).toEqual(["ns/b", "ns/b", "ns/b"]);
    expect(cache.stats()).toMatchObject({ held: 2, pods: 1 });
    expect(a.refs.stats()).toMatchObject({ held: 2, pods: 0 });
    expect(await configValue(b.refs, "ns/b")).toBe("3");
    stop();
  });

  it("a pod key tracked by two subscribers stays tracked for one when the other untracks it", async () => {
    const { clock, kube, subscriber, configValue, stop } = await setUpShared();
    const a = await subscriber();
    const b = await subscriber();
    // The pod was deleted on a's shard and created again, same name, on a node of b's.
    await configValue(a.refs, "ns/p");
    await configValue(b.refs, "ns/p");
    a.refs.untrack("ns/p");
    kube.apply("configmaps", cm("2"));
    await clock.advanceAsync(0);
    expect(a.heard).toEqual([]);
    expect(b.heard).toEqual(["ns/p"]);
    stop();
  });

  it("a subscriber whose signal aborts is told nothing more, and data no one refers to is dropped", async () => {
    const { clock, kube, cache, subscriber, configValue, stop } = await setUpShared();
    const a = await subscriber();
    const b = await subscriber();
    await configValue(a.refs, "ns/a");
    await configValue(b.refs, "ns/b");
    a.leave();
    kube.apply("configmaps", cm("2"));
    await clock.advanceAsync(0);
    expect(a.heard).toEqual([]);
    expect(b.heard).toEqual(["ns/b"]);
    expect(cache.stats()).toMatchObject({ held: 2, pods: 1 });
    b.leave();
    expect(cache.stats()).toMatchObject({ held: 0, pods: 0 });
    // Nothing is re-read for them any more.
    const gets = kube.count("getSecret");
    await clock.advanceAsync(3 * TTL);
    expect(kube.count("getSecret")).toBe(gets);
    stop();
  });
});
