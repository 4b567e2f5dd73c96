import { describe, expect, it } from "vitest";
import type { DurableStore } from "../../src/provider/types.ts";
import { GenerationAllocator, storeKey, type BirthDevice } from "./generations.ts";

class MemoryStore implements DurableStore {
  readonly values = new Map<string, string>();
  writes = 0;
  failNextGet = false;
  get(key: string) {
    if (this.failNextGet) {
      this.failNextGet = false;
      return Promise.reject(new Error("API server unavailable"));
    }
    return Promise.resolve(this.values.get(key));
  }
  set(key: string, value: string) {
    this.writes++;
    this.values.set(key, value);
    return Promise.resolve();
  }
}

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
});
