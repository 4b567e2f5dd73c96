import { describe, expect, it } from "vitest";
import type { ConfigMap, KubeClient } from "../kube/index.ts";
import { ConfigMapStore } from "./configmap-store.ts";

const status = (code: number, reason: string) =>
  Object.assign(new Error(reason), { code, body: { kind: "Status", code, reason, message: reason } });

/** The API server's ConfigMap semantics that matter here: resourceVersion checks on PUT and POST. */
class FakeConfigMaps implements Pick<
  KubeClient,
  "getConfigMap" | "upsertConfigMap" | "replaceConfigMap" | "deleteConfigMap" | "list"
> {
  readonly objects = new Map<string, ConfigMap>();
  #rv = 0;
  gets = 0;
  puts = 0;
  /** Runs once right after the next GET, as a competing writer would. */
  afterGet: (() => void) | undefined;

  getConfigMap(_ns: string, name: string) {
    this.gets++;
    const cm = this.objects.get(name);
    const competitor = this.afterGet;
    this.afterGet = undefined;
    competitor?.();
    return Promise.resolve(cm && structuredClone(cm));
  }
  write(name: string, value: string) {
    const key = this.objects.get(name)?.data?.key ?? "k";
    this.objects.set(name, {
      metadata: { name, namespace: "ns", resourceVersion: String(++this.#rv) },
      data: { key, value },
    });
  }
  upsertConfigMap(): Promise<ConfigMap> {
    return Promise.reject(new Error("not used"));
  }
  replaceConfigMap(cm: ConfigMap) {
    const name = cm.metadata?.name ?? "";
    const current = this.objects.get(name);
    const rv = cm.metadata?.resourceVersion;
    if (rv === undefined && current) return Promise.reject(status(409, "AlreadyExists"));
    if (rv !== undefined && current?.metadata?.resourceVersion !== rv)
      return Promise.reject(status(409, "Conflict"));
    this.puts++;
    const stored = { ...cm, metadata: { ...cm.metadata, resourceVersion: String(++this.#rv) } };
    this.objects.set(name, stored);
    return Promise.resolve(stored);
  }
  deleteConfigMap(_ns: string, name: string) {
    return Promise.resolve(this.objects.delete(name));
  }
  readonly list = (() =>
    Promise.resolve({
      items: [...this.objects.values()],
      resourceVersion: String(this.#rv),
    })) as KubeClient["list"];
}

describe("ConfigMapStore.update", () => {
  it("is a compare-and-swap: a write between its read and its write makes it read and decide again", async () => {
    const kube = new FakeConfigMaps();
    const store = new ConfigMapStore(kube, "ns");
    const add = (n: number) => (current: string | undefined) => String(Number(current ?? "0") + n);
    expect(await new ConfigMapStore(kube, "ns").update("counter", add(1))).toBe("1");
    const [name = ""] = kube.objects.keys();
    // Another process adds 10 after our read: neither increment may be lost.
    kube.afterGet = () => kube.write(name, String(Number(kube.objects.get(name)?.data?.value) + 10));
    expect(await store.update("counter", add(1))).toBe("12");
    expect(await store.get("counter")).toBe("12");
    expect(kube.puts).toBe(2);
  });

  it("writes from the copy it last read or wrote: a new key costs one read and one create, then one write each", async () => {
    const kube = new FakeConfigMaps();
    const store = new ConfigMapStore(kube, "ns");
    expect(await store.get("k")).toBeUndefined();
    expect(await store.update("k", () => "a")).toBe("a");
    expect(await store.update("k", (current) => `${current ?? ""}b`)).toBe("ab");
    expect({ gets: kube.gets, puts: kube.puts }).toEqual({ gets: 1, puts: 2 });
    expect(await new ConfigMapStore(kube, "ns").get("k")).toBe("ab");
  });

  it("a stale copy costs a 409 and a read, and loses no other writer's change", async () => {
    const kube = new FakeConfigMaps();
    const store = new ConfigMapStore(kube, "ns");
    const add = (n: number) => (current: string | undefined) => String(Number(current ?? "0") + n);
    expect(await store.update("counter", add(1))).toBe("1");
    const [name = ""] = kube.objects.keys();
    kube.write(name, "11"); // another process, after our write
    const gets = kube.gets;
    expect(await store.update("counter", add(1))).toBe("12");
    expect(kube.gets - gets).toBe(1);
    expect(kube.objects.get(name)?.data?.value).toBe("12");
  });

  it("decides there is nothing to write on a fresh read only", async () => {
    const kube = new FakeConfigMaps();
    const store = new ConfigMapStore(kube, "ns");
    await store.update("k", () => "a");
    const [name = ""] = kube.objects.keys();
    kube.write(name, "b"); // another process
    // From the stale copy ("a") nothing would change; the stored value says otherwise.
    const result = await store.update("k", (current) => (current === "a" ? "a" : `${current ?? ""}+c`));
    expect(result).toBe("b+c");
    expect(kube.objects.get(name)?.data?.value).toBe("b+c");
  });

  it("deletes a key's ConfigMap, forgets its copy, and takes a key never stored", async () => {
    const kube = new FakeConfigMaps();
    const store = new ConfigMapStore(kube, "ns");
    await store.update("gone", () => "a");
    await store.update("kept", () => "b");
    await store.delete("gone");
    await store.delete("never");
    expect([...(await store.entries(""))]).toEqual([["kept", "b"]]);
    // Not answered from a copy: the next read asks the API server.
    const gets = kube.gets;
    expect(await store.get("gone")).toBeUndefined();
    expect(kube.gets).toBe(gets + 1);
    expect(await store.update("gone", (current) => `${current ?? "new"}!`)).toBe("new!");
  });

  it("creates once: a create that loses the race re-reads the winner's value", async () => {
    const kube = new FakeConfigMaps();
    const store = new ConfigMapStore(kube, "ns");
    const seen: (string | undefined)[] = [];
    kube.afterGet = () => void store.update("k", () => "theirs");
    const result = await store.update("k", (current) => {
      seen.push(current);
      return current === undefined ? "ours" : `${current}+ours`;
    });
    expect(seen).toEqual([undefined, "theirs"]);
    expect(result).toBe("theirs+ours");
    expect((await store.entries("k")).get("k")).toBe("theirs+ours");
  });
});
