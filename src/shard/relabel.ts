/**
 * `relabelShardNodes`: gives every node of a provider the shard label its device belongs to, so
 * a node registered before sharding was enabled (no `devicelet.dev/shard`), or under another shard
 * count (a stale one), is seen by the node informer of its shard's engine, which selects on that
 * label (src/shard/engines.ts). Without it such a node is served by no engine: nobody heartbeats it
 * until its device is reported again. What it guarantees:
 *
 * - It lists devicelet's nodes of `providerName` by the node informer's own labels (`type`, the
 *   transport label, `extraLabels`: src/node/controller.ts), reads each one's device id back from
 *   its `spec.providerID` ({@link deviceIdFromProviderId}), and merge-patches
 *   `devicelet.dev/shard=<shardOf(id, shards)>` where the label is missing or different. A node
 *   already labelled right costs no write, so a second run writes nothing.
 * - A node whose providerID is not one devicelet writes for this provider is left alone, logged.
 * - Each patch carries the listed node's `metadata.uid` as a precondition: a node deleted since the
 *   list (404) or deleted and re-created under its name (the API server refuses the uid) is skipped,
 *   never labelled from what another node's providerID said.
 * - At most `concurrency` patches are in flight (default 8). A retryable failure (429, 5xx,
 *   timeouts, network errors) is retried with backoff, honouring `Retry-After`, up to `attempts`
 *   tries (default 5); any other failure, or running out of tries, is logged and counted, and the
 *   other nodes go on. A failed list rejects.
 * - Idempotent and safe to run on several replicas at once: the label is a pure function of the
 *   node's providerID and the shard count, so concurrent runs write the same value.
 * - When `signal` aborts, no further patch starts, those in flight are aborted, and the result
 *   counts what was done.
 *
 *   const result = await relabelShardNodes({ kube, providerName: "mqtt", shards: 64, logger, signal });
 *   result.relabeled;   // nodes whose shard label was set or corrected
 */
import type { Logger } from "pino";
import { retryDelay } from "../base/backoff.ts";
import { sleepOn, systemClock, type Clock } from "../base/clock.ts";
import { uidPreconditionAsConflict } from "../kube/errors.ts";
import {
  isConflict,
  isNotFound,
  isRetryableKubeError,
  retryAfterMs,
  type KubeClient,
  type Node,
} from "../kube/index.ts";
import { deviceIdFromProviderId, NodeLabel } from "../node/build.ts";
import { shardOf } from "./hash.ts";

/** Patches in flight at once, by default. */
export const RELABEL_CONCURRENCY = 8;
/** Tries of one node's patch on retryable failures, by default. */
export const RELABEL_ATTEMPTS = 5;
const retryBaseMs = 200;
const retryMaxMs = 5_000;

export interface RelabelShardNodesOptions {
  readonly kube: Pick<KubeClient, "listNodes" | "patchNode">;
  /** The provider's short name: the transport label and the providerID's host. */
  readonly providerName: string;
  /** The shard count, the same on every replica (hash.ts). */
  readonly shards: number;
  /**
   * `nodes.extraLabels`: part of the node informer's selector, so only nodes an engine could see
   * are relabelled. Without the shard label (that is what gets written).
   */
  readonly extraLabels?: Readonly<Record<string, string>>;
  readonly logger: Logger;
  readonly signal?: AbortSignal;
  /** Patches in flight at once; default {@link RELABEL_CONCURRENCY}. */
  readonly concurrency?: number;
  /** Tries of one patch on retryable failures; default {@link RELABEL_ATTEMPTS}. */
  readonly attempts?: number;
  /** Default {@link systemClock}. */
  readonly clock?: Clock;
  /** Backoff jitter source in [0, 1); default `Math.random`. */
  readonly random?: () => number;
}

/** What one run did, by node; the names are sorted. */
export interface RelabelResult {
  /** devicelet's nodes of this provider that were listed. */
  readonly listed: number;
  /** Labelled with their shard now: the label was missing or different. */
  readonly relabeled: readonly string[];
  /** Already carried the right label: not written. */
  readonly unchanged: number;
  /** No providerID devicelet writes for this provider: left alone. */
  readonly skipped: readonly string[];
  /** Deleted, or deleted and re-created, between the list and the patch: left alone. */
  readonly gone: readonly string[];
  /** The patch failed for good, or kept failing: the label is still missing or stale. */
  readonly failed: readonly string[];
}

interface Work {
  readonly name: string;
  readonly uid: string | undefined;
  readonly shard: string;
}

/** Sets the shard label of every node of `providerName` that lacks it or has a stale one. */
export async function relabelShardNodes(o: RelabelShardNodesOptions): Promise<RelabelResult> {
  if (!Number.isInteger(o.shards) || o.shards < 1)
    throw new RangeError(`the shard count must be a positive integer, not ${o.shards}`);
  const concurrency = o.concurrency ?? RELABEL_CONCURRENCY;
  if (!Number.isInteger(concurrency) || concurrency < 1)
    throw new RangeError(`concurrency must be a positive integer, not ${concurrency}`);
  const log = o.logger.child({ component: "shard-relabel" });
  const selector = Object.entries({
    [NodeLabel.Type]: "virtual-kubelet",
    [NodeLabel.Transport]: o.providerName,
    ...o.extraLabels,
  })
    .filter(([key]) => key !== NodeLabel.Shard)
    .map(([key, value]) => `${key}=${value}`)
    .join(",");
  const { items } = await o.kube.listNodes(selector, o.signal ? { signal: o.signal } : undefined);

  const work: Work[] = [];
  const skipped: string[] = [];
  let unchanged = 0;
  for (const node of items) {
    const name = node.metadata?.name ?? "";
    const deviceId = deviceIdFromProviderId(o.providerName, node.spec?.providerID);
    if (deviceId === undefined) {
      skipped.push(name);
      log.warn(
        { node: name, providerID: node.spec?.providerID ?? null },
        "node has no providerID of this provider: its shard label is left as it is",
      );
      continue;
    }
    const shard = String(shardOf(deviceId, o.shards));
    if (labelOf(node) === shard) unchanged++;
    else work.push({ name, uid: node.metadata?.uid, shard });
  }

  const relabeled: string[] = [];
  const gone: string[] = [];
  const failed: string[] = [];
  const outcome = { relabeled, gone, failed } as const;
  let next = 0;
  const worker = async () => {
    for (let item = work[next++]; item && !o.signal?.aborted; item = work[next++]) {
      const result = await patchShardLabel(item, o, log);
      if (result !== "aborted") outcome[result].push(item.name);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, work.length) }, worker));

  const result: RelabelResult = {
    listed: items.length,
    relabeled: relabeled.sort(),
    unchanged,
    skipped: skipped.sort(),
    gone: gone.sort(),
    failed: failed.sort(),
  };
  const counts = {
    listed: result.listed,
    relabeled: relabeled.length,
    unchanged,
    skipped: skipped.length,
    gone: gone.length,
    failed: failed.length,
    shards: o.shards,
  };
  if (failed.length > 0)
    log.error({ ...counts, nodes: failed.slice(0, 20) }, "some nodes could not get their shard label");
  else if (relabeled.length > 0) log.info(counts, "gave nodes their shard label");
  else log.debug(counts, "every node has its shard label");
  return result;
}

const labelOf = (node: Node): string | undefined => node.metadata?.labels?.[NodeLabel.Shard];

/** One node's patch, retried while the failure is retryable. */
async function patchShardLabel(
  item: Work,
  o: RelabelShardNodesOptions,
  log: Logger,
): Promise<"relabeled" | "gone" | "failed" | "aborted"> {
  const attempts = o.attempts ?? RELABEL_ATTEMPTS;
  const clock = o.clock ?? systemClock;
  const signal = o.signal ?? new AbortController().signal;
  // A call, not the property: the patch in flight may abort it between two reads.
  const aborted = () => signal.aborted;
  // Without a uid (a list never returns one without), no precondition: the label is then
  // written on whatever node holds the name.
  const metadata = { ...(item.uid ? { uid: item.uid } : {}), labels: { [NodeLabel.Shard]: item.shard } };
  for (let failures = 1; !aborted(); failures++) {
    try {
      await o.kube.patchNode(item.name, { metadata }, { signal });
      return "relabeled";
    } catch (caught) {
      if (aborted()) return "aborted";
      const err = item.uid ? uidPreconditionAsConflict(caught, `node ${item.name}`, item.uid) : caught;
      if (isNotFound(err) || isConflict(err)) {
        log.debug({ node: item.name, err }, "node gone or re-created since the list: not relabelled");
        return "gone";
      }
      if (!isRetryableKubeError(err) || failures >= attempts) {
        log.warn(
          { node: item.name, shard: item.shard, err, tries: failures },
          "could not set the shard label",
        );
        return "failed";
      }
      const wait = retryDelay({
        failures,
        baseMs: retryBaseMs,
        maxMs: retryMaxMs,
        atLeastMs: retryAfterMs(err),
        ...(o.random ? { random: o.random } : {}),
      });
      await sleepOn(clock, wait, signal);
    }
  }
  return "aborted";
}
