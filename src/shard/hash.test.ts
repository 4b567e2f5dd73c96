/**
 * The shard and member hashes: jump hash matches the published algorithm's known answers, spreads
 * device ids evenly and moves only about 1/(S + 1) of them when a shard is added; rendezvous
 * assignment is the same whatever the order of the members and moves only a leaving member's
 * shards.
 */
import { describe, expect, it } from "vitest";
import { assignShards, deviceKey, jumpHash, rendezvousOwner, shardOf } from "./hash.ts";

const ids = Array.from({ length: 10_000 }, (_, i) => `device-${i}`);

describe("jumpHash", () => {
  it("gives the answers other implementations of the algorithm give", () => {
    expect(jumpHash(1n, 1)).toBe(0);
    expect(jumpHash(0n, 60)).toBe(0);
    expect(jumpHash(1n, 60)).toBe(55);
    expect(jumpHash(2n, 60)).toBe(46);
    expect(jumpHash(42n, 57)).toBe(43);
    expect(jumpHash(256n, 1024)).toBe(520);
    expect(jumpHash(0xdead10ccn, 1)).toBe(0);
    expect(jumpHash(0xdead10ccn, 666)).toBe(361);
    expect(jumpHash(16045690984833335023n, 255)).toBe(237);
  });

  it("refuses a shard count that is not a positive integer", () => {
    expect(() => jumpHash(1n, 0)).toThrow(RangeError);
    expect(() => jumpHash(1n, 2.5)).toThrow(RangeError);
    expect(() => shardOf("x", -1)).toThrow(/shard count/);
  });
});

describe("shardOf", () => {
  it("keys a device by the first 8 bytes of its SHA-256, big endian", () => {
    // sha256("abc") = ba7816bf8f01cfea 414140de5dae2223 ...
    expect(deviceKey("abc")).toBe(0xba7816bf8f01cfean);
    expect(shardOf("abc", 1000)).toBe(jumpHash(0xba7816bf8f01cfean, 1000));
  });

  it("spreads 10,000 ids over 8 shards within ±15 %", () => {
    const counts = new Array<number>(8).fill(0);
    for (const id of ids) {
      const shard = shardOf(id, 8);
      counts[shard] = (counts[shard] ?? 0) + 1;
    }
    for (const count of counts) {
      expect(count).toBeGreaterThanOrEqual(1250 * 0.85);
      expect(count).toBeLessThanOrEqual(1250 * 1.15);
    }
  });

  it("going from 8 to 9 shards moves about 1/9 of the ids, all into the new shard", () => {
    const moved = ids.filter((id) => shardOf(id, 8) !== shardOf(id, 9));
    expect(moved.length).toBeGreaterThanOrEqual((10_000 / 9) * 0.85);
    expect(moved.length).toBeLessThanOrEqual((10_000 / 9) * 1.15);
    expect(new Set(moved.map((id) => shardOf(id, 9)))).toEqual(new Set([8]));
  });
});

describe("rendezvous assignment", () => {
  const members = ["devicelet-0", "devicelet-1", "devicelet-2"];

  it("is the same on every replica, whatever order it lists the members in", () => {
    const a = assignShards(64, members);
    expect(assignShards(64, [...members].reverse())).toEqual(a);
    expect(assignShards(64, ["devicelet-1", "devicelet-2", "devicelet-0"])).toEqual(a);
    // Every member gets some of 64 shards, and nobody else does.
    expect(new Set(a)).toEqual(new Set(members));
  });

  it("moves only the leaving member's shards, and a joining member takes only shards", () => {
    const before = assignShards(64, members);
    const after = assignShards(64, ["devicelet-0", "devicelet-2"]);
    for (const [shard, owner] of before.entries()) {
      if (owner === "devicelet-1") expect(after[shard]).not.toBe("devicelet-1");
      else expect(after[shard]).toBe(owner);
    }
    // Joining again is the same move the other way round.
    for (const [shard, owner] of after.entries()) expect([owner, "devicelet-1"]).toContain(before[shard]);
  });

  it("has no owner without members", () => {
    expect(rendezvousOwner(3, [])).toBeUndefined();
    expect(assignShards(2, [])).toEqual([undefined, undefined]);
  });
});
