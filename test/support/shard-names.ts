import { assignShards, shardOf } from "../../src/shard/index.ts";
import { uniqueName } from "./testenv.ts";

/**
 * A unique name under which replicas `<name>-a` and `<name>-b` both own a shard, or, given
 * `devicesOf`, both own some of the devices it names. Names are random, and rendezvous hashing
 * gives all of 4 shards to one of two replicas about one time in eight (and a few devices can all
 * land on one shard): a test of a hand-over needs one to happen.
 */
export function splitName(
  prefix: string,
  shards: number,
  devicesOf?: (name: string) => readonly string[],
): string {
  for (;;) {
    const name = uniqueName(prefix);
    const owners = assignShards(shards, [`${name}-a`, `${name}-b`]);
    const owned = devicesOf ? devicesOf(name).map((d) => owners[shardOf(d, shards)]) : owners;
    if (new Set(owned).size === 2) return name;
  }
}
