/**
 * The two hashes that split a fleet between replicas; both are pure, so every replica computes the
 * same answer from the same inputs:
 *
 * - {@link shardOf}: a device id to one of `shards` shards. The id's SHA-256 (first 8 bytes, big
 *   endian, as an unsigned 64-bit key) goes through jump consistent hash (Lamping and Veach, "A
 *   Fast, Minimal Memory, Consistent Hash Algorithm", 2014): ids spread evenly, and going from S
 *   to S + 1 shards moves only about 1/(S + 1) of them, all into the new shard. Every replica of
 *   one fleet MUST use the same shard count: two replicas with different counts would each claim
 *   some devices the other also claims.
 * - {@link assignShards}: each shard to one member identity by rendezvous (highest random weight)
 *   hashing: the member whose SHA-256 of `<shard>\n<identity>` is highest owns the shard. The
 *   answer depends only on the set of members (not their order), and a member leaving moves only
 *   the shards it owned; a member joining takes only the shards it now weighs highest for.
 *
 *   const shard = shardOf("gw-0042", 8);                       // 0..7, the same on every replica
 *   const owners = assignShards(8, ["devicelet-0", "devicelet-1"]);   // owners[shard] = identity
 */
import { createHash } from "node:crypto";

const u64 = (bytes: Buffer): bigint => bytes.readBigUInt64BE(0);
const sha256 = (text: string): Buffer => createHash("sha256").update(text, "utf8").digest();

/** The 64-bit key of a device id: the first 8 bytes of its UTF-8 SHA-256, big endian. */
export function deviceKey(deviceId: string): bigint {
  return u64(sha256(deviceId));
}

function checkBuckets(buckets: number): void {
  if (!Number.isInteger(buckets) || buckets < 1 || buckets > 0x7fff_ffff)
    throw new RangeError(`the shard count must be an integer from 1 to 2^31 - 1, not ${buckets}`);
}

/**
 * Jump consistent hash: the bucket in [0, buckets) of a 64-bit key. It follows the key through a
 * 64-bit linear congruential generator (multiplier 2862933555777941757, increment 1), each step
 * jumping forward to the next bucket at which the key would move as buckets are added; the last
 * jump below `buckets` is the answer. Throws RangeError unless 1 <= buckets < 2^31.
 */
export function jumpHash(key: bigint, buckets: number): number {
  checkBuckets(buckets);
  let state = BigInt.asUintN(64, key);
  let bucket = -1;
  let next = 0;
  while (next < buckets) {
    bucket = next;
    state = BigInt.asUintN(64, state * 2862933555777941757n + 1n);
    // (state >> 33) + 1 is in [1, 2^31]: exact as a double, as is the quotient's floor below 2^31.
    next = Math.floor((bucket + 1) * (2 ** 31 / (Number(state >> 33n) + 1)));
  }
  return bucket;
}

/** The shard of a device: jump consistent hash of {@link deviceKey} onto `shards` buckets. */
export function shardOf(deviceId: string, shards: number): number {
  return jumpHash(deviceKey(deviceId), shards);
}

/** A member's rendezvous weight for a shard. */
function weight(shard: number, identity: string): bigint {
  // The shard is digits, so the first newline ends it: no two (shard, identity) pairs share a text.
  return u64(sha256(`${shard}\n${identity}`));
}

/**
 * The owner of one shard among `members` by rendezvous hashing; `undefined` when there are none.
 * Equal weights (a 2^-64 chance) go to the identity that sorts last, so the answer never depends
 * on the order of `members`.
 */
export function rendezvousOwner(shard: number, members: Iterable<string>): string | undefined {
  let owner: string | undefined;
  let best = -1n;
  for (const identity of members) {
    const w = weight(shard, identity);
    if (w > best || (w === best && owner !== undefined && identity > owner)) {
      owner = identity;
      best = w;
    }
  }
  return owner;
}

/**
 * The owner of every shard: `result[shard]` is the identity of its owner among `members`, or
 * `undefined` for every shard when `members` is empty.
 */
export function assignShards(shards: number, members: readonly string[]): (string | undefined)[] {
  checkBuckets(shards);
  return Array.from({ length: shards }, (_, shard) => rendezvousOwner(shard, members));
}
