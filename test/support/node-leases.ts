/**
 * Records every renewal of some nodes' Leases (their distinct `renewTime`s) by polling
 * `kube-node-lease` until stopped: what a "no node went NotReady" check needs when its window is
 * shorter than the controller-manager's grace period, since a heartbeat missed near the end of
 * the window would only show as NotReady after it.
 *
 *   const leases = recordNodeLeases(names);
 *   ... the hand-over ...
 *   await expectNoLapse(leases, { after: Date.now(), graceMs: nodeMonitorGraceSeconds * 1000 });
 */
import { setTimeout as sleep } from "node:timers/promises";
import { expect } from "vitest";
import type { Lease } from "../../src/kube/index.ts";
import { eventually } from "./eventually.ts";
import { getJson } from "./kubectl.ts";

export interface NodeLeaseRecord {
  /** Each node's renewal times (ms since the epoch, the server's clock), in order. */
  readonly renewals: ReadonlyMap<string, readonly number[]>;
  /** Per node, the longest time between two renewals, or between the last one and `until`. */
  longestGaps(until?: number): Map<string, number>;
  stop(): Promise<void>;
}

export function recordNodeLeases(names: readonly string[], everyMs = 2_000): NodeLeaseRecord {
  const wanted = new Set(names);
  const renewals = new Map<string, number[]>(names.map((n) => [n, []]));
  const state = { running: true };
  const loop = (async () => {
    while (state.running) {
      try {
        for (const l of (await getJson<{ items: Lease[] }>(["leases", "-n", "kube-node-lease"])).items) {
          const name = l.metadata?.name ?? "";
          const at = Date.parse(l.spec?.renewTime ?? "");
          const times = renewals.get(name);
          if (!wanted.has(name) || times === undefined || Number.isNaN(at)) continue;
          if (times.at(-1) !== at) times.push(at);
        }
      } catch {
        // A failed poll only risks missing a renewal, which makes a gap look longer, never shorter.
      }
      await sleep(everyMs);
    }
  })();
  return {
    renewals,
    longestGaps: (until = Date.now()) =>
      new Map(
        [...renewals].map(([node, times]) => [
          node,
          times.length === 0
            ? Infinity
            : Math.max(...[...times, until].slice(1).map((t, k) => t - (times[k] ?? t))),
        ]),
      ),
    stop: async () => {
      state.running = false;
      await loop;
    },
  };
}

/**
 * Waits until every node renewed its Lease after `after`, stops the record, and asserts that no
 * node went `graceMs` (the controller-manager's grace period) without a renewal until then: no
 * node can have been marked NotReady for a missed heartbeat up to `after`.
 */
export async function expectNoLapse(
  record: NodeLeaseRecord,
  o: { readonly after: number; readonly graceMs: number; readonly timeoutMs?: number },
): Promise<void> {
  await eventually(
    () => {
      for (const [node, times] of record.renewals)
        expect(
          times.some((t) => t > o.after),
          node,
        ).toBe(true);
    },
    { timeoutMs: o.timeoutMs ?? 60_000 },
  );
  await record.stop();
  for (const [node, gap] of record.longestGaps()) expect(gap, node).toBeLessThan(o.graceMs);
}
