import { describe, expect, it } from "vitest";
import { MemoryStore } from "../../test/support/memory-store.ts";
import { GenerationAllocator, storeKey, type BirthDevice } from "./generations.ts";

const birth: BirthDevice = {
  deviceClass: "gateway",
  os: "linux",
  arch: "arm64",
  capacity: { pods: "10" },
  capabilities: { maxMessageBytes: 65536, encodings: ["json"], runtime: "process", logs: true, exec: false },
};

describe("GenerationAllocator", () => {
  it("reserves a new device's first block with its birth: the first generations cost no write", async () => {
    const store = new MemoryStore();
    const gens = new GenerationAllocator({ store, blockSize: 100 });
    await gens.saveDevice("d", birth);
    await gens.saveDevice("d", birth); // unchanged: no write
    expect(store.writes).toBe(1);
    const first = await gens.next("d", 0);
    const second = await gens.next("d", 0);
    expect([first.generation, second.generation]).toEqual([1, 2]);
    expect(first.epoch).toBe(second.epoch);
    expect(store.writes).toBe(1);
  });

  it("continues above the stored reservation after a restart, with the same epoch", async () => {
    const store = new MemoryStore();
    const before = new GenerationAllocator({ store, blockSize: 100 });
    const { epoch } = await before.next("d", 0);
    const after = new GenerationAllocator({ store, blockSize: 100 });
    expect(await after.next("d", 5)).toEqual({ epoch, generation: 101 });
    expect(JSON.parse(store.values.get(storeKey("d")) ?? "{}")).toMatchObject({
      epoch,
      reservedThrough: 200,
    });
  });

  it("never takes a failed read for a missing record (which would start a new epoch)", async () => {
    const store = new MemoryStore();
    const { epoch } = await new GenerationAllocator({ store, blockSize: 10 }).next("d", 0);
    store.failNextGet = true;
    const gens = new GenerationAllocator({ store, blockSize: 10 });
    await expect(gens.next("d", 0)).rejects.toThrow("unavailable");
    expect(await gens.next("d", 0)).toEqual({ epoch, generation: 11 });
  });

  it("two processes sharing the store never hand out the same generation", async () => {
    const store = new MemoryStore();
    const a = new GenerationAllocator({ store, blockSize: 3 });
    const b = new GenerationAllocator({ store, blockSize: 3 });
    await a.saveDevice("d", birth);
    const handed: string[] = [];
    for (let i = 0; i < 12; i++) {
      const x = await (i % 3 === 0 ? b : a).next("d", 0);
      handed.push(`${x.epoch}/${x.generation}`);
      // The other process stores a changed birth in between: it must not lower any reservation.
      if (i % 4 === 1) await (i % 3 === 0 ? a : b).saveDevice("d", { ...birth, arch: `arm${i}` });
    }
    expect(new Set(handed).size).toBe(handed.length);
    expect(new Set(handed.map((h) => h.split("/")[0])).size).toBe(1);
  });

  it("re-reads and goes above a reservation written between its read and its write", async () => {
    const store = new MemoryStore();
    const gens = new GenerationAllocator({ store, blockSize: 10 });
    const { epoch } = await gens.next("d", 0); // reserves 1..10
    for (let i = 0; i < 9; i++) await gens.next("d", 0);
    store.interleave = () => store.values.set(storeKey("d"), JSON.stringify({ epoch, reservedThrough: 50 }));
    expect(await gens.next("d", 0)).toEqual({ epoch, generation: 51 });
    expect(store.conflicts).toBe(1);
    expect(JSON.parse(store.values.get(storeKey("d")) ?? "{}")).toMatchObject({ reservedThrough: 60 });
  });

  it("goes above what the device reported in the same epoch, whoever published it", async () => {
    const store = new MemoryStore();
    const gens = new GenerationAllocator({ store, blockSize: 100 });
    const { epoch } = await gens.next("d", 0);
    gens.observe("d", "another-epoch", 5_000);
    expect((await gens.next("d", 0)).generation).toBe(2);
    gens.observe("d", epoch, 400);
    expect(await gens.next("d", 0)).toEqual({ epoch, generation: 401 });
    expect(JSON.parse(store.values.get(storeKey("d")) ?? "{}")).toMatchObject({ reservedThrough: 500 });
  });
});
