import pino from "pino";
import { describe, expect, it } from "vitest";
import type { KubeClient, Lease } from "../kube/index.ts";
import { NodeLease } from "./lease.ts";

const conflict = () =>
  Object.assign(new Error("conflict"), {
    code: 409,
    body: JSON.stringify({ reason: "Conflict", code: 409 }),
  });
const notFound = () =>
  Object.assign(new Error("gone"), { code: 404, body: JSON.stringify({ reason: "NotFound", code: 404 }) });

/** A lease store with optimistic concurrency, like the API server's. */
function fakeKube(options: { conflicts?: number } = {}) {
  let stored: Lease | undefined;
  let version = 0;
  let conflicts = options.conflicts ?? 0;
  const calls: string[] = [];
  const kube: Pick<KubeClient, "getLease" | "createLease" | "replaceLease"> = {
    getLease: async () => {
      calls.push("get");
      return stored && structuredClone(stored);
    },
    createLease: async (lease) => {
      calls.push("create");
      stored = { ...lease, metadata: { ...lease.metadata, resourceVersion: String(++version) } };
      return structuredClone(stored);
    },
    replaceLease: async (lease) => {
      calls.push("replace");
      if (!stored) throw notFound();
      if (conflicts > 0 || lease.metadata?.resourceVersion !== stored.metadata?.resourceVersion) {
        conflicts--;
        // Someone else wrote in between: the stored version moves on.
        stored = { ...stored, metadata: { ...stored.metadata, resourceVersion: String(++version) } };
        throw conflict();
      }
      stored = { ...lease, metadata: { ...lease.metadata, resourceVersion: String(++version) } };
      return structuredClone(stored);
    },
  };
  return { kube, calls, stored: () => stored, drop: () => (stored = undefined) };
}

const lease = (kube: Pick<KubeClient, "getLease" | "createLease" | "replaceLease">) =>
  new NodeLease({
    kube,
    nodeName: "dev-1",
    nodeUid: () => "node-uid-1",
    durationSeconds: 40,
    renewIntervalSeconds: 10,
    logger: pino({ level: "silent" }),
    healthy: () => true,
  });

describe("NodeLease", () => {
  it("creates the lease owned by its node, with a 40 s duration and a microsecond renewTime", async () => {
    const fake = fakeKube();
    await lease(fake.kube).renew();
    const stored = fake.stored();
    expect(stored?.metadata?.ownerReferences).toEqual([
      { apiVersion: "v1", kind: "Node", name: "dev-1", uid: "node-uid-1" },
    ]);
    expect(stored?.spec?.leaseDurationSeconds).toBe(40);
    expect(stored?.spec?.holderIdentity).toBe("dev-1");
    expect(stored?.spec?.renewTime).toMatch(/\.\d{6}Z$/);
  });

  it("renews by replace, re-reading and retrying on a conflict", async () => {
    const fake2Conflicts = fakeKube({ conflicts: 2 });
    const l2 = lease(fake2Conflicts.kube);
    await l2.renew(); // create
    await l2.renew(); // two conflicts, then success
    expect(fake2Conflicts.calls).toEqual(["get", "create", "replace", "get", "replace", "get", "replace"]);
    expect(l2.renewals).toBe(2);
  });

  it("gives up after a bounded number of conflicts", async () => {
    const fake = fakeKube({ conflicts: 10 });
    const l = lease(fake.kube);
    await l.renew();
    await expect(l.renew()).rejects.toThrow("conflict");
    expect(fake.calls.filter((c) => c === "replace")).toHaveLength(4);
  });

  it("creates the lease again when it vanished (its node was deleted and collected)", async () => {
    const fake = fakeKube();
    const l = lease(fake.kube);
    await l.renew();
    fake.drop();
    await l.renew();
    expect(fake.calls.at(-1)).toBe("create");
    expect(fake.stored()).toBeDefined();
  });
});
