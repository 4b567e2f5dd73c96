/**
 * NodePickUps: lists the pods bound to node names devicelet starts serving (a pod may be bound to a
 * name before its device is known, and the cache dropped it then), one batch at a time. A name
 * alone gets its own list (`spec.nodeName=<name>`); names that piled up while a batch was listing
 * go together, a few as lists of their own, many as one list of every bound pod. Field selectors
 * cannot name several nodes, and a fleet registering at once (5,000 devices after a devicelet
 * restart) would otherwise send 5,000 lists at the same moment, each holding the pod watch back
 * while it runs; measured here, a fifth of them timed out and were tried again.
 *
 *   const pickUps = new NodePickUps({ pickUp: (selectors) => informer.pickUp(selectors) });
 *   nodes.onNodeNames((name, change) => change === "added" && pickUps.add(name));
 *   await pickUps.idle(); // every name added so far is listed
 */
import type { PodSelectors } from "./shared-pods.ts";

/** Names in one batch listed one by one; more go as one list of every bound pod. */
export const PICK_UPS_PER_NODE_MAX = 8;

export interface NodePickUpsOptions {
  /** Lists the pods the selectors match into the cache; never rejects (Informer.pickUp). */
  readonly pickUp: (selectors: PodSelectors) => Promise<void>;
  /** Default {@link PICK_UPS_PER_NODE_MAX}. */
  readonly perNodeMax?: number;
}

export class NodePickUps {
  readonly #o: NodePickUpsOptions;
  readonly #perNodeMax: number;
  readonly #pending = new Set<string>();
  #running: Promise<void> | undefined;

  constructor(options: NodePickUpsOptions) {
    this.#o = options;
    this.#perNodeMax = options.perNodeMax ?? PICK_UPS_PER_NODE_MAX;
  }

  /** Lists the pods bound to `nodeName`: now when nothing is listing, else with the next batch. */
  add(nodeName: string): void {
    this.#pending.add(nodeName);
    this.#running ??= this.#drain();
  }

  /** Resolves once every name added so far has been listed. Never rejects. */
  idle(): Promise<void> {
    return this.#running ?? Promise.resolve();
  }

  async #drain(): Promise<void> {
    try {
      while (this.#pending.size > 0) {
        const batch = [...this.#pending];
        this.#pending.clear();
        if (batch.length > this.#perNodeMax) await this.#o.pickUp({});
        else
          await Promise.all(batch.map((name) => this.#o.pickUp({ fieldSelector: `spec.nodeName=${name}` })));
      }
    } finally {
      this.#running = undefined;
    }
  }
}
