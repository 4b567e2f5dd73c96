/**
 * Profiles a running devicelet through its inspector, for finding where a bench's time and garbage
 * go: a CPU profile over the whole run, and V8's sampling heap profiler in two windows, the first
 * leaving out what the young generation's collections freed (what reached the old generation, the
 * garbage that full collections and a growing heap pay for), the second with everything (all
 * allocation). Start devicelet with its inspector on loopback, e.g.
 * `BENCH_DEVICELET_NODE_FLAGS=--inspect=127.0.0.1:9339 hack/npm run bench -- scale`, then:
 *
 *   node bench/profile.ts 9339 /tmp/hold 60
 *
 * writes /tmp/hold.cpuprofile (120 s), /tmp/hold-old.heapprofile and /tmp/hold-all.heapprofile
 * (60 s each; open them in Chrome's DevTools), and prints the busiest functions and the
 * functions that allocated most in each window. A fourth argument picks the windows: `all` alone
 * catches a burst's allocation from its start (`node bench/profile.ts 9339 /tmp/burst 45 all`,
 * run as devicelet's inspector comes up).
 */
import { writeFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface CpuProfile {
  nodes: { id: number; callFrame: CallFrame }[];
  startTime: number;
  endTime: number;
  samples: number[];
}
interface HeapNode {
  callFrame: CallFrame;
  selfSize: number;
  children: HeapNode[];
}

/** One inspector session over its WebSocket: `call` sends a method and resolves with its result. */
async function connect(
  port: number,
): Promise<{ call: (method: string, params?: object) => Promise<unknown>; close: () => void }> {
  const targets = (await (await fetch(`http://127.0.0.1:${port}/json/list`)).json()) as {
    webSocketDebuggerUrl: string;
  }[];
  const url = targets[0]?.webSocketDebuggerUrl;
  if (url === undefined) throw new Error(`no inspector target on port ${port}`);
  const ws = new WebSocket(url);
  await new Promise((resolve, reject) => {
    ws.addEventListener("open", resolve, { once: true });
    ws.addEventListener("error", () => reject(new Error(`cannot reach ${url}`)), { once: true });
  });
  let next = 0;
  const pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  ws.addEventListener("message", (event) => {
    const m = JSON.parse(String(event.data)) as {
      id?: number;
      result?: unknown;
      error?: { message: string };
    };
    const waiter = m.id === undefined ? undefined : pending.get(m.id);
    if (!waiter || m.id === undefined) return;
    pending.delete(m.id);
    if (m.error) waiter.reject(new Error(m.error.message));
    else waiter.resolve(m.result);
  });
  const call = (method: string, params: object = {}) =>
    new Promise<unknown>((resolve, reject) => {
      const id = ++next;
      pending.set(id, { resolve, reject });
      ws.send(JSON.stringify({ id, method, params }));
    });
  return { call, close: () => ws.close() };
}

const frameName = (f: CallFrame) =>
  `${f.functionName || "(anonymous)"} ${f.url.replace(/^.*\/(dist|node_modules)\//, "$1/")}:${f.lineNumber + 1}`;

/** Milliseconds per function from a CPU profile's samples, busiest first; `(idle)` apart. */
export function cpuSelfTimes(profile: CpuProfile): {
  busyMs: number;
  idleMs: number;
  top: [string, number][];
} {
  const frames = new Map(profile.nodes.map((n) => [n.id, n.callFrame]));
  const msPerSample = (profile.endTime - profile.startTime) / 1000 / Math.max(1, profile.samples.length);
  const byName = new Map<string, number>();
  for (const id of profile.samples) {
    const frame = frames.get(id);
    if (frame) byName.set(frameName(frame), (byName.get(frameName(frame)) ?? 0) + msPerSample);
  }
  const idleMs = byName.get(frameName({ functionName: "(idle)", url: "", lineNumber: -1 })) ?? 0;
  const total = [...byName.values()].reduce((a, b) => a + b, 0);
  const top = [...byName].filter(([name]) => !name.startsWith("(idle)")).sort((a, b) => b[1] - a[1]);
  return { busyMs: total - idleMs, idleMs, top };
}

/** Bytes sampled per allocating function of a heap profile, most first, and their sum. */
export function heapSelfSizes(head: HeapNode): { bytes: number; top: [string, number][] } {
  const byName = new Map<string, number>();
  let bytes = 0;
  const stack = [head];
  for (let node = stack.pop(); node; node = stack.pop()) {
    if (node.selfSize > 0) {
      bytes += node.selfSize;
      byName.set(frameName(node.callFrame), (byName.get(frameName(node.callFrame)) ?? 0) + node.selfSize);
    }
    stack.push(...node.children);
  }
  return { bytes, top: [...byName].sort((a, b) => b[1] - a[1]) };
}

async function main(): Promise<void> {
  const [port, prefix, seconds = "60", windowList = "old,all"] = process.argv.slice(2);
  const windows = windowList.split(",");
  if (
    port === undefined ||
    prefix === undefined ||
    !(Number(seconds) > 0) ||
    !windows.every((w) => w === "old" || w === "all")
  ) {
    throw new Error(
      "usage: node bench/profile.ts <inspector port> <output prefix> [seconds per heap window] [windows: old,all (the default), old or all]",
    );
  }
  const { call, close } = await connect(Number(port));
  const windowMs = Number(seconds) * 1000;
  await call("Profiler.enable");
  await call("HeapProfiler.enable");
  await call("Profiler.setSamplingInterval", { interval: 1000 });
  await call("Profiler.start");
  const heap = async (name: string, includeYoung: boolean) => {
    await call("HeapProfiler.startSampling", {
      samplingInterval: 8192,
      includeObjectsCollectedByMajorGC: true,
      includeObjectsCollectedByMinorGC: includeYoung,
    });
    await sleep(windowMs);
    const { profile } = (await call("HeapProfiler.stopSampling")) as { profile: { head: HeapNode } };
    writeFileSync(`${prefix}-${name}.heapprofile`, JSON.stringify(profile));
    const { bytes, top } = heapSelfSizes(profile.head);
    const mib = (b: number) => (b / 2 ** 20).toFixed(1).padStart(8);
    console.log(`heap, ${name} (${seconds} s): ${mib(bytes).trim()} MiB sampled`);
    for (const [name, b] of top.slice(0, 12)) console.log(`${mib(b)} MiB  ${name}`);
  };
  for (const window of windows) await heap(window, window === "all");
  const { profile } = (await call("Profiler.stop")) as { profile: CpuProfile };
  close();
  writeFileSync(`${prefix}.cpuprofile`, JSON.stringify(profile));
  const { busyMs, idleMs, top } = cpuSelfTimes(profile);
  console.log(`cpu: ${(busyMs / 1000).toFixed(1)} s busy, ${(idleMs / 1000).toFixed(1)} s idle`);
  for (const [name, ms] of top.slice(0, 20)) console.log(`${ms.toFixed(0).padStart(8)} ms  ${name}`);
}

if (import.meta.main) await main();
