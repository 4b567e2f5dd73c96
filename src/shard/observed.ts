/**
 * {@link LeaseObserver}: what this replica last saw of a set of Leases and when, by its OWN clock,
 * it saw each one change: the rule of leader election (src/leader/election.ts), applied to many
 * Leases at once. A Lease is live while its holder is set and it changed less than its
 * `leaseDurationSeconds` ago by our clock; the holder's `renewTime` is never compared with our
 * clock, so clock skew between replicas cannot make a live holder look dead.
 *
 *   const seen = new LeaseObserver(clock);
 *   seen.observeAll((await kube.listLeases(ns, selector)).items);
 *   if (!seen.isLive(name)) take(seen.get(name)?.lease);   // a replace with that resourceVersion
 *
 * A Lease first seen counts as just changed (we cannot know since when it has been still), so a
 * restarted replica waits a whole lease duration before it judges anyone dead. Taking a Lease over
 * must be a replace with the resourceVersion observed: if it changed since, the write fails.
 */
import type { Clock } from "../base/clock.ts";
import type { Lease } from "../kube/index.ts";

/** One Lease as last seen. */
export interface Observation {
  readonly lease: Lease;
  /** `spec.holderIdentity`, "" when released. */
  readonly holder: string;
  /** Our clock when we first saw this holder/renewTime/resourceVersion. */
  readonly observedAt: number;
}

export class LeaseObserver {
  readonly #clock: Clock;
  readonly #seen = new Map<string, Observation & { readonly record: string }>();

  constructor(clock: Clock) {
    this.#clock = clock;
  }

  /** Notes one Lease (keyed by name) and, when it changed, our time of seeing the change. */
  observe(lease: Lease): Observation {
    const name = lease.metadata?.name ?? "";
    const s = lease.spec;
    const holder = s?.holderIdentity ?? "";
    const record = JSON.stringify([holder, s?.renewTime ?? "", lease.metadata?.resourceVersion ?? ""]);
    const before = this.#seen.get(name);
    const observedAt = before?.record === record ? before.observedAt : this.#clock.now();
    const seen = { lease, holder, observedAt, record };
    this.#seen.set(name, seen);
    return seen;
  }

  /** Notes a complete listing: Leases missing from it are forgotten (they were deleted). */
  observeAll(leases: readonly Lease[]): void {
    const names = new Set<string>();
    for (const lease of leases) names.add(this.observe(lease).lease.metadata?.name ?? "");
    for (const name of this.#seen.keys()) if (!names.has(name)) this.#seen.delete(name);
  }

  forget(name: string): void {
    this.#seen.delete(name);
  }

  get(name: string): Observation | undefined {
    return this.#seen.get(name);
  }

  all(): Iterable<Observation> {
    return this.#seen.values();
  }

  /** Whether `name` has a holder that renewed within its duration, by our clock. */
  isLive(name: string): boolean {
    const seen = this.#seen.get(name);
    return seen !== undefined && seen.holder !== "" && this.#clock.now() < expiresAt(seen);
  }

  /** How long ago by our clock `name` last changed; undefined when not seen. */
  unchangedFor(name: string): number | undefined {
    const seen = this.#seen.get(name);
    return seen && this.#clock.now() - seen.observedAt;
  }
}

/** When an observed Lease runs out if it does not change again. */
export function expiresAt(seen: Observation): number {
  return seen.observedAt + (seen.lease.spec?.leaseDurationSeconds ?? 0) * 1000;
}
