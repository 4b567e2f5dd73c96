import { createServer, Socket, type Server } from "node:net";
import pino from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { FakeClock } from "../base/fake-clock.ts";
import { FULL_RANGE_RECHECK_MS, KubeletPorts } from "./ports.ts";

const logger = pino({ level: "silent" });
const cleanup: (() => Promise<void>)[] = [];

afterEach(async () => {
  for (const c of cleanup.splice(0)) await c();
});

/** A free block of `n` consecutive loopback ports: the first one the OS gives, checked by binding. */
async function freeBlock(n: number): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const probe = createServer();
    await new Promise<void>((r) => probe.listen({ host: "127.0.0.1", port: 0 }, r));
    const first = (probe.address() as { port: number }).port;
    await new Promise<void>((r) => probe.close(() => r()));
    if (first + n > 65535) continue;
    const held: Server[] = [];
    let ok = true;
    for (let p = first; p < first + n && ok; p++) {
      const s = createServer();
      ok = await new Promise<boolean>((r) => {
        s.once("error", () => r(false));
        s.listen({ host: "127.0.0.1", port: p, exclusive: true }, () => r(true));
      });
      if (ok) held.push(s);
    }
    await Promise.all(held.map((s) => new Promise<void>((r) => s.close(() => r()))));
    if (ok) return first;
  }
  throw new Error("no free block of ports");
}

/** Another process's listener on `port` (simulated: a server this allocator does not know). */
async function occupy(port: number): Promise<void> {
  const s = createServer();
  await new Promise<void>((r) => s.listen({ host: "127.0.0.1", port }, r));
  cleanup.push(() => new Promise<void>((r) => s.close(() => r())));
}

function allocator(port: number, portCount: number, exhausted: string[] = [], clock = new FakeClock(0)) {
  const made = { servers: 0 };
  const ports = new KubeletPorts({
    bindAddress: "127.0.0.1",
    port,
    portCount,
    logger,
    clock,
    createServer: () => {
      made.servers++;
      return createServer((s) => s.end("hello"));
    },
    onExhausted: (node) => exhausted.push(node),
  });
  Object.assign(ports, { made });
  cleanup.push(() => ports.close());
  return ports;
}

const connects = (port: number) =>
  new Promise<boolean>((resolve) => {
    const s = new Socket();
    s.once("error", () => resolve(false));
    s.connect(port, "127.0.0.1", () => {
      s.destroy();
      resolve(true);
    });
  });

describe("KubeletPorts", () => {
  it("gives each node the lowest free port and finds the node by its port", async () => {
    const base = await freeBlock(3);
    const ports = allocator(base, 3);
    expect(await ports.assign("a")).toBe(base);
    expect(await ports.assign("b")).toBe(base + 1);
    expect(await ports.assign("a")).toBe(base); // same node, same port
    expect(ports.nodeAt(base + 1)).toBe("b");
    expect(ports.nodeAt(base + 2)).toBeUndefined();
    expect(await connects(base + 1)).toBe(true);
  });

  it("skips a port another process holds", async () => {
    const base = await freeBlock(3);
    await occupy(base);
    const ports = allocator(base, 3);
    expect(await ports.assign("a")).toBe(base + 1);
  });

  it("keeps the port the node already advertises when it is free and in the range", async () => {
    const base = await freeBlock(4);
    const ports = allocator(base, 4);
    expect(await ports.assign("a", base + 2)).toBe(base + 2);
    // Taken by a, so b gets the lowest free one; out of range is ignored.
    expect(await ports.assign("b", base + 2)).toBe(base);
    expect(await ports.assign("c", 1)).toBe(base + 1);
  });

  it("frees the port of a released node and stops serving it", async () => {
    const base = await freeBlock(2);
    const ports = allocator(base, 2);
    await ports.assign("a");
    await ports.assign("b");
    await ports.release("a");
    expect(ports.nodeAt(base)).toBeUndefined();
    expect(await connects(base)).toBe(false);
    expect(await ports.assign("c")).toBe(base);
  });

  it("answers 0 when the range is used up, warns once, and assigns once a port is free", async () => {
    const base = await freeBlock(1);
    const exhausted: string[] = [];
    const ports = allocator(base, 1, exhausted);
    expect(await ports.assign("a")).toBe(base);
    expect(await ports.assign("b")).toBe(0);
    expect(await ports.assign("b")).toBe(0);
    expect(exhausted).toEqual(["b"]);
    await ports.release("a");
    expect(await ports.assign("b")).toBe(base);
  });

  it("does not scan a full range again for a while, unless a port was released", async () => {
    const base = await freeBlock(3);
    await occupy(base + 1);
    await occupy(base + 2);
    const clock = new FakeClock(0);
    const ports = allocator(base, 3, [], clock);
    const made = (ports as unknown as { made: { servers: number } }).made;
    await ports.assign("a");
    expect(await ports.assign("c")).toBe(0);
    const scanned = made.servers;
    expect(await ports.assign("d")).toBe(0);
    expect(made.servers).toBe(scanned); // answered from memory: no bind tried
    clock.advance(FULL_RANGE_RECHECK_MS);
    expect(await ports.assign("d")).toBe(0);
    expect(made.servers).toBe(scanned + 2); // looked again: both ports of the other process tried
    await ports.release("a");
    expect(await ports.assign("d")).toBe(base);
  });

  it("with port 0, lets the operating system pick, one port per node", async () => {
    const ports = allocator(0, 1);
    const a = await ports.assign("a");
    const b = await ports.assign("b");
    expect(a).toBeGreaterThan(0);
    expect(b).toBeGreaterThan(0);
    expect(a).not.toBe(b);
    expect(ports.nodeAt(b)).toBe("b");
  });

  it("gives nodes asking at once distinct ports", async () => {
    const base = await freeBlock(4);
    const ports = allocator(base, 4);
    const got = await Promise.all(["a", "b", "c", "d"].map((n) => ports.assign(n)));
    expect(new Set(got).size).toBe(4);
  });
});
