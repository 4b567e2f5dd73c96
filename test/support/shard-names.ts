import { assignShards } from "../../src/shard/index.ts";
import { uniqueName } from "./testenv.ts";

/**
 * A unique name under which replicas `<name>-a` and `<name>-b` both own a shard. Names are random,
 * and rendezvous hashing gives all of 4 shards to one of two replicas about one time in eight: a
 * test of a hand-over needs one to happen.
 */
export function splitName(prefix: string, shards: number): string {
  for (;;) {
    const name = uniqueName(prefix);
    const owners = new Set(assignShards(shards, [`${name}-a`, `${name}-b`]));
    if (owners.size === 2) return name;
  }
}
