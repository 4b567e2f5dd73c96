import { describe, expect, it } from "vitest";
import type { Node, Pod } from "../src/kube/types.ts";
import { inPool } from "./api.ts";
import { cpuSeconds, memoryMiB } from "./usage.ts";
import { NodeReadiness, PodRunningTimes } from "./watch.ts";

const node = (name: string, ready?: string): Node => ({
  metadata: { name },
  status: ready === undefined ? {} : { conditions: [{ type: "Ready", status: ready }] },
});

const pod = (name: string, phase: string, ready: string): Pod => ({
  metadata: { name },
  status: { phase, conditions: [{ type: "Ready", status: ready }] },
});

describe("NodeReadiness", () => {
  it("counts Ready nodes and every transition away from True, by when it was seen", () => {
    const nodes = new NodeReadiness();
    nodes.see("ADDED", node("a", "True"));
    nodes.see("ADDED", node("b", "False"));
    nodes.see("MODIFIED", node("b", "True"));
    expect(nodes.readyCount).toBe(2);
    expect(nodes.wentNotReady(0).count).toBe(0);

    nodes.see("MODIFIED", node("a", "True"));
    nodes.see("MODIFIED", node("a", "Unknown"));
    nodes.see("MODIFIED", node("a", "False"));
    nodes.see("MODIFIED", node("b"));
    expect(nodes.readyCount).toBe(0);
    const since = nodes.wentNotReady(0);
    expect(since.count).toBe(2);
    expect(since.nodes).toBe(2);
    expect(since.first.map((t) => [t.node, t.status])).toEqual([
      ["a", "Unknown"],
      ["b", "missing"],
    ]);
    expect(nodes.wentNotReady(Date.now() + 60_000).count).toBe(0);

    nodes.see("MODIFIED", node("a", "True"));
    nodes.see("DELETED", node("a", "True"));
    expect(nodes.readyCount).toBe(0);
    expect(nodes.names()).toEqual(["b"]);
    expect(nodes.wentNotReady(0).count).toBe(2);
  });
});

describe("PodRunningTimes", () => {
  it("records the first time each pod of the prefix was Running and Ready", () => {
    const pods = new PodRunningTimes("p-", 3);
    pods.see("ADDED", pod("p-0", "Pending", "False"));
    pods.see("MODIFIED", pod("p-0", "Running", "False"));
    expect(pods.running).toBe(0);
    pods.see("MODIFIED", pod("p-0", "Running", "True"));
    const first = pods.runningAt[0];
    pods.see("MODIFIED", pod("p-0", "Running", "True"));
    pods.see("ADDED", pod("p-2", "Running", "True"));
    pods.see("ADDED", pod("p-3", "Running", "True"));
    pods.see("ADDED", pod("other-1", "Running", "True"));
    pods.see("DELETED", pod("p-1", "Running", "True"));
    expect(pods.running).toBe(2);
    expect(pods.runningAt[0]).toBe(first);
    expect(Number.isNaN(pods.runningAt[1])).toBe(true);

    pods.createdAt[0] = (first ?? 0) - 5;
    expect(pods.latencies()).toEqual([5]);
  });
});

describe("inPool", () => {
  it("keeps at most `concurrency` tasks in flight and runs every index once", async () => {
    let inFlight = 0;
    let most = 0;
    const ran: number[] = [];
    await inPool(50, 4, async (i) => {
      inFlight++;
      most = Math.max(most, inFlight);
      await new Promise((r) => setTimeout(r, 1));
      ran.push(i);
      inFlight--;
    });
    expect(most).toBe(4);
    expect(ran.sort((a, b) => a - b)).toEqual(Array.from({ length: 50 }, (_, i) => i));
  });

  it("rejects with the first failure and starts nothing after it", async () => {
    const started: number[] = [];
    const run = inPool(100, 2, async (i) => {
      started.push(i);
      await new Promise((r) => setTimeout(r, 1));
      if (i === 5) throw new Error("five");
    });
    await expect(run).rejects.toThrow("five");
    expect(Math.max(...started)).toBeLessThanOrEqual(6);
  });
});

describe("process usage from /proc", () => {
  it("reads this process's CPU seconds growing with work, and its memory", () => {
    const before = cpuSeconds(process.pid);
    // 250 ms of CPU by Node's own account, however busy the machine is.
    const start = process.cpuUsage();
    const used = () => {
      const u = process.cpuUsage(start);
      return (u.user + u.system) / 1e6;
    };
    while (used() < 0.25);
    expect(cpuSeconds(process.pid) - before).toBeGreaterThanOrEqual(0.2);
    const { rssMiB, peakRssMiB } = memoryMiB(process.pid);
    expect(rssMiB).toBeGreaterThan(10);
    expect(peakRssMiB).toBeGreaterThanOrEqual(rssMiB);
  });
});
