/** bench/usage.ts read from this very process, with sockets it opens on loopback. */
import { createServer, connect, type Socket } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { connectionsTo, cpuSeconds, memoryMiB } from "./usage.ts";

const opened: Socket[] = [];
const servers: ReturnType<typeof createServer>[] = [];
afterEach(() => {
  for (const socket of opened.splice(0)) socket.destroy();
  for (const server of servers.splice(0)) server.close();
});

/** A loopback server that keeps what connects; resolves with its port. */
async function listen(): Promise<number> {
  const server = createServer((socket) => opened.push(socket));
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("no port");
  return address.port;
}

async function open(port: number): Promise<Socket> {
  const socket = connect(port, "127.0.0.1");
  opened.push(socket);
  await new Promise<void>((resolve, reject) => socket.once("connect", resolve).once("error", reject));
  return socket;
}

describe("usage", () => {
  it("counts a process's connections to one port, not those it accepted nor those to another port", async () => {
    const [port, other] = [await listen(), await listen()];
    expect(connectionsTo(process.pid, port)).toBe(0);
    const first = await open(port);
    await open(port);
    await open(port);
    await open(other);
    expect(connectionsTo(process.pid, port)).toBe(3);
    expect(connectionsTo(process.pid, other)).toBe(1);
    first.destroy();
    await new Promise((resolve) => first.once("close", resolve));
    expect(connectionsTo(process.pid, port)).toBe(2);
  });

  it("reads CPU seconds and memory that are there", () => {
    expect(cpuSeconds(process.pid)).toBeGreaterThan(0);
    const { rssMiB, peakRssMiB } = memoryMiB(process.pid);
    expect(rssMiB).toBeGreaterThan(10);
    expect(peakRssMiB).toBeGreaterThanOrEqual(rssMiB);
  });
});
