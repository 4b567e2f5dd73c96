/**
 * relabelShardNodes against the in-memory API server: the end state of every node's shard label,
 * what is left alone (right labels, foreign providerIDs, other providers' nodes), the patches in
 * flight at once, retries on a FakeClock, and nodes that vanish between the list and the patch.
 */
import { pino } from "pino";
import { describe, expect, it } from "vitest";
import { FakeClock } from "../base/fake-clock.ts";
import { KubeApiError, type KubeClient, type Node } from "../kube/index.ts";
import { NodeLabel, providerIdFor } from "../node/build.ts";
import { apiError, FakeKube } from "../../test/support/fake-kube.ts";
import { shardOf } from "./hash.ts";
import { relabelShardNodes, type RelabelShardNodesOptions } from "./relabel.ts";

const shards = 16;
const provider = "mqtt";

function setup() {
  const clock = new FakeClock();
  const kube = new FakeKube({ clock });
  const lines: string[] = [];
  const logger = pino({ level: "debug" }, { write: (line: string) => lines.push(line) });
  const logged = (msg: string) =>
    lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.msg === msg);
  /** A node devicelet registered for `deviceId` (optionally with a shard label or another providerID). */
  const addNode = (
    name: string,
    deviceId: string,
    extra: {
      shard?: string;
      providerID?: string | null;
      transport?: string;
      labels?: Record<string, string>;
    } = {},
  ) =>
    kube.apply<Node>("nodes", {
      apiVersion: "v1",
      kind: "Node",
      metadata: {
        name,
        labels: {
          [NodeLabel.Type]: "virtual-kubelet",
          [NodeLabel.Transport]: extra.transport ?? provider,
          ...extra.labels,
          ...(extra.shard === undefined ? {} : { [NodeLabel.Shard]: extra.shard }),
        },
      },
      spec:
        extra.providerID === null
          ? {}
          : { providerID: extra.providerID ?? providerIdFor(provider, deviceId) },
    });
  const shardLabel = (name: string) => kube.object("nodes", name)?.metadata?.labels?.[NodeLabel.Shard];
  const run = (over: Partial<RelabelShardNodesOptions> = {}) =>
    relabelShardNodes({ kube, providerName: provider, shards, logger, clock, random: () => 0.5, ...over });
  return { clock, kube, logged, addNode, shardLabel, run };
}

/** `count` device ids whose shard (of `shards`) is not `notIn`. */
const idsOutside = (count: number, notIn: number): string[] => {
  const ids: string[] = [];
  for (let i = 0; ids.length < count; i++) if (shardOf(`gw-${i}`, shards) !== notIn) ids.push(`gw-${i}`);
  return ids;
};

describe("relabelShardNodes", () => {
  it("labels nodes without a shard label or with a stale one, and writes nothing for the rest", async () => {
    const { kube, addNode, shardLabel, run, logged } = setup();
    const [missing = "", stale = "", right = "", slashed = "Gw_7/sensor"] = idsOutside(3, 0);
    addNode("n-missing", missing);
    addNode("n-stale", stale, { shard: "0" }); // 0 is never its shard
    addNode("n-right", right, { shard: String(shardOf(right, shards)) });
    addNode("n-slashed", slashed);
    addNode("n-no-provider-id", "x", { providerID: null });
    addNode("n-foreign-id", "y", { providerID: "aws:///eu-west-1a/i-0abc" });
    addNode("n-other-provider", "z", { transport: "mock", providerID: providerIdFor("mock", "z") });

    const result = await run();

    expect(shardLabel("n-missing")).toBe(String(shardOf(missing, shards)));
    expect(shardLabel("n-stale")).toBe(String(shardOf(stale, shards)));
    expect(shardLabel("n-right")).toBe(String(shardOf(right, shards)));
    expect(shardLabel("n-slashed")).toBe(String(shardOf(slashed, shards)));
    for (const untouched of ["n-no-provider-id", "n-foreign-id", "n-other-provider"])
      expect(shardLabel(untouched)).toBeUndefined();
    expect(result).toEqual({
      listed: 6,
      relabeled: ["n-missing", "n-slashed", "n-stale"],
      unchanged: 1,
      skipped: ["n-foreign-id", "n-no-provider-id"],
      gone: [],
      failed: [],
    });
    expect(kube.calls.filter((c) => c.verb === "patchNode").map((c) => c.args[0])).toEqual(
      expect.arrayContaining(["n-missing", "n-slashed", "n-stale"]),
    );
    expect(kube.count("patchNode")).toBe(3);
    expect(logged("node has no providerID of this provider: its shard label is left as it is")).toHaveLength(
      2,
    );

    // A second run (another replica, a restart) finds everything labelled: no write at all.
    const again = await run();
    expect(again.relabeled).toEqual([]);
    expect(again.unchanged).toBe(4);
    expect(kube.count("patchNode")).toBe(3);
  });

  it("selects with nodes.extraLabels as the node informer does, and never by the shard label", async () => {
    const { kube, addNode, shardLabel, run } = setup();
    addNode("n-team", "gw-1", { labels: { team: "edge" }, shard: "stale" });
    addNode("n-other-team", "gw-2", { labels: { team: "lab" } });
    await run({ extraLabels: { team: "edge", [NodeLabel.Shard]: "3" } });
    expect(kube.calls.find((c) => c.verb === "listNodes")?.args[0]).toBe(
      "type=virtual-kubelet,devicelet.dev/transport=mqtt,team=edge",
    );
    expect(shardLabel("n-team")).toBe(String(shardOf("gw-1", shards)));
    expect(shardLabel("n-other-team")).toBeUndefined();
  });

  it("keeps at most `concurrency` patches in flight", async () => {
    const { kube, addNode, shardLabel, run } = setup();
    const ids = Array.from({ length: 20 }, (_, i) => `gw-${i}`);
    for (const id of ids) addNode(`n-${id}`, id);
    let inFlight = 0;
    let most = 0;
    const gates: (() => void)[] = [];
    const gated: Pick<KubeClient, "listNodes" | "patchNode"> = {
      listNodes: (selector) => kube.listNodes(selector),
      patchNode: async (name, patch) => {
        inFlight++;
        most = Math.max(most, inFlight);
        await new Promise<void>((resolve) => gates.push(resolve));
        inFlight--;
        return kube.patchNode(name, patch);
      },
    };
    const done = run({ kube: gated, concurrency: 8 });
    for (let released = 0; released < ids.length;) {
      await new Promise((resolve) => setImmediate(resolve));
      const open = gates.splice(0);
      if (open.length === 0) throw new Error(`no patch started after ${released} of ${ids.length}`);
      expect(inFlight).toBe(Math.min(8, ids.length - released));
      for (const release of open) release();
      released += open.length;
    }
    expect((await done).relabeled).toHaveLength(20);
    expect(most).toBe(8);
    for (const id of ids) expect(shardLabel(`n-${id}`)).toBe(String(shardOf(id, shards)));
  });

  it("retries a retryable failure with backoff, and gives up on a permanent one or after `attempts`", async () => {
    const { clock, kube, addNode, shardLabel, run } = setup();
    addNode("n-flaky", "gw-1");
    addNode("n-forbidden", "gw-2");
    addNode("n-down", "gw-3");
    kube.fail(
      "patchNode",
      (args) => (args[0] === "n-flaky" ? apiError(503, "ServiceUnavailable") : undefined),
      {
        times: 2,
      },
    );
    kube.fail("patchNode", (args) => (args[0] === "n-forbidden" ? apiError(403, "Forbidden") : undefined));
    kube.fail("patchNode", (args) =>
      args[0] === "n-down" ? apiError(429, "TooManyRequests", { retryAfterSeconds: 2 }) : undefined,
    );
    const done = run({ attempts: 4 });
    // Backoff 200, 400, 800 ms (jitter pinned at ×1); the 429s ask for 2 s each.
    await clock.advanceAsync(7_000);
    const result = await done;
    expect(result.relabeled).toEqual(["n-flaky"]);
    expect(result.failed).toEqual(["n-down", "n-forbidden"]);
    expect(shardLabel("n-flaky")).toBe(String(shardOf("gw-1", shards)));
    expect(shardLabel("n-forbidden")).toBeUndefined();
    const tries = (name: string) =>
      kube.calls.filter((c) => c.verb === "patchNode" && c.args[0] === name).length;
    expect([tries("n-flaky"), tries("n-forbidden"), tries("n-down")]).toEqual([3, 1, 4]);
  });

  it("waits the server's Retry-After before trying again", async () => {
    const { clock, kube, addNode, shardLabel, run } = setup();
    addNode("n-1", "gw-1");
    kube.fail("patchNode", () => apiError(429, "TooManyRequests", { retryAfterSeconds: 3 }), { times: 1 });
    const done = run();
    await clock.advanceAsync(2_900);
    expect(kube.count("patchNode")).toBe(1);
    await clock.advanceAsync(200);
    await done;
    expect(kube.count("patchNode")).toBe(2);
    expect(shardLabel("n-1")).toBe(String(shardOf("gw-1", shards)));
  });

  it("patches with the listed uid, and leaves a node deleted or re-created since the list alone", async () => {
    const { kube, addNode, shardLabel, run } = setup();
    addNode("n-deleted", "gw-1");
    addNode("n-recreated", "gw-2");
    const listed = Object.fromEntries(
      kube.objects("nodes").map((n) => [n.metadata?.name ?? "", n.metadata?.uid]),
    );
    const sent: Record<string, string | undefined> = {};
    // Between the list and the patch: one node deleted, one re-created (a new uid) for another device.
    const racing: Pick<KubeClient, "listNodes" | "patchNode"> = {
      listNodes: async (selector) => {
        const result = await kube.listNodes(selector);
        kube.remove("nodes", "n-deleted");
        kube.remove("nodes", "n-recreated");
        addNode("n-recreated", "gw-other");
        return result;
      },
      patchNode: async (name, patch) => {
        const uid = (patch as { metadata?: { uid?: string } }).metadata?.uid;
        sent[name] = uid;
        const current = kube.object("nodes", name);
        if (current && uid !== current.metadata?.uid) {
          // What the API server answers a merge patch whose metadata.uid differs.
          throw new KubeApiError(
            422,
            "HTTP 422 Invalid",
            JSON.stringify({
              kind: "Status",
              code: 422,
              reason: "Invalid",
              message: "metadata.uid: field is immutable",
              details: { causes: [{ reason: "FieldValueInvalid", field: "metadata.uid" }] },
            }),
            {},
          );
        }
        return kube.patchNode(name, patch);
      },
    };
    const result = await run({ kube: racing });
    expect(result.gone).toEqual(["n-deleted", "n-recreated"]);
    expect(result.relabeled).toEqual([]);
    expect(result.failed).toEqual([]);
    expect(kube.object("nodes", "n-deleted")).toBeUndefined();
    expect(shardLabel("n-recreated")).toBeUndefined();
    expect(sent).toEqual(listed);
  });

  it("starts no patch once the signal aborted, and aborts the ones in flight", async () => {
    const { kube, addNode, shardLabel, run } = setup();
    for (let i = 0; i < 5; i++) addNode(`n-${i}`, `gw-${i}`);
    const abort = new AbortController();
    const signals: AbortSignal[] = [];
    const stalling: Pick<KubeClient, "listNodes" | "patchNode"> = {
      listNodes: (selector) => kube.listNodes(selector),
      patchNode: (_name, _patch, options) => {
        if (options?.signal) signals.push(options.signal);
        return new Promise<Node>((_resolve, reject) => {
          options?.signal?.addEventListener("abort", () => {
            reject(new Error("aborted"));
          });
        });
      },
    };
    const done = run({ kube: stalling, concurrency: 2, signal: abort.signal });
    await new Promise((resolve) => setImmediate(resolve));
    expect(signals).toHaveLength(2);
    abort.abort();
    const result = await done;
    expect(signals).toHaveLength(2);
    expect(signals.every((s) => s.aborted)).toBe(true);
    expect(result).toMatchObject({ listed: 5, relabeled: [], failed: [], gone: [] });
    for (let i = 0; i < 5; i++) expect(shardLabel(`n-${i}`)).toBeUndefined();
  });

  it("refuses a shard count or concurrency that is not a positive integer", async () => {
    const { run } = setup();
    await expect(run({ shards: 0 })).rejects.toThrow("shard count");
    await expect(run({ concurrency: 0 })).rejects.toThrow("concurrency");
  });
});
