/**
 * bench/profile.ts against a real Node.js process with its inspector on loopback: the profiles it
 * writes hold that process's work, the old-generation window holds what the process keeps and not
 * what it throws away young, and the summaries name the functions that did it.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { cpuSelfTimes, heapSelfSizes } from "./profile.ts";

const dir = mkdtempSync(path.join(os.tmpdir(), "devicelet-bench-profile-"));
const started: ChildProcess[] = [];
afterAll(() => {
  for (const child of started) if (child.exitCode === null) child.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
});

/**
 * Throws away small objects young (`churn`) and keeps arrays long enough to be promoted (`keep`).
 * Run without the JIT, which would inline both into the timer's callback and take their names off
 * the samples.
 */
const target = `
const kept = [];
function churn() { const t = []; for (let i = 0; i < 3000; i++) t.push({ i, s: "x" + i }); return t.length; }
function keep() { const a = []; for (let i = 0; i < 2000; i++) a.push({ i }); kept.push(a); if (kept.length > 300) kept.shift(); }
setInterval(() => { for (let k = 0; k < 3; k++) churn(); keep(); }, 2);
setTimeout(() => process.exit(0), 60_000);
`;

/** Starts the target with its inspector on a free loopback port; resolves with that port. */
function startTarget(): Promise<number> {
  const child = spawn(process.execPath, ["--jitless", "--inspect=127.0.0.1:0", "-e", target], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  started.push(child);
  return new Promise((resolve, reject) => {
    let text = "";
    child.stderr.on("data", (chunk: Buffer) => {
      text += chunk.toString();
      const port = /ws:\/\/127\.0\.0\.1:(\d+)\//.exec(text)?.[1];
      if (port) resolve(Number(port));
    });
    child.on("exit", (code) => reject(new Error(`target exited (${code}): ${text}`)));
  });
}

function run(args: string[]): Promise<{ code: number | null; out: string }> {
  const child = spawn(process.execPath, [path.join(import.meta.dirname, "profile.ts"), ...args], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  started.push(child);
  let out = "";
  child.stdout.on("data", (c: Buffer) => (out += c.toString()));
  child.stderr.on("data", (c: Buffer) => (out += c.toString()));
  return new Promise((resolve) => child.on("exit", (code) => resolve({ code, out })));
}

describe("bench/profile.ts", () => {
  it("profiles a running process: its CPU, what it allocates, and what reaches the old generation", async () => {
    const port = await startTarget();
    const prefix = path.join(dir, "target");
    const { code, out } = await run([String(port), prefix, "2"]);
    expect(code, out).toBe(0);

    const read = (file: string): unknown => JSON.parse(readFileSync(file, "utf8"));
    const cpu = cpuSelfTimes(read(`${prefix}.cpuprofile`) as Parameters<typeof cpuSelfTimes>[0]);
    expect(cpu.busyMs).toBeGreaterThan(500);
    expect(cpu.top.slice(0, 5).map(([name]) => name.split(" ")[0])).toContain("churn");

    type Heap = { head: Parameters<typeof heapSelfSizes>[0] };
    const all = heapSelfSizes((read(`${prefix}-all.heapprofile`) as Heap).head);
    const old = heapSelfSizes((read(`${prefix}-old.heapprofile`) as Heap).head);
    const bytesOf = (top: [string, number][], fn: string) =>
      top.filter(([name]) => name.startsWith(`${fn} `)).reduce((sum, [, b]) => sum + b, 0);
    // Both windows are as long, over the same steady work: the share of each function's
    // allocation that reached the old generation is old / all.
    const promoted = (fn: string) => bytesOf(old.top, fn) / bytesOf(all.top, fn);
    expect(bytesOf(all.top, "churn")).toBeGreaterThan(5 * bytesOf(all.top, "keep"));
    expect(promoted("keep")).toBeGreaterThan(0.5);
    expect(promoted("churn")).toBeLessThan(0.1);
    expect(all.bytes).toBeGreaterThan(old.bytes);
    expect(out).toMatch(/cpu: [\d.]+ s busy/);
    expect(out).toMatch(/heap, old \(2 s\): [\d.]+ MiB sampled/);
  });

  it("takes the windows it is told: all allocation alone, from the start", async () => {
    const port = await startTarget();
    const prefix = path.join(dir, "all-only");
    const { code, out } = await run([String(port), prefix, "1", "all"]);
    expect(code, out).toBe(0);
    expect(out).toMatch(/heap, all \(1 s\): [\d.]+ MiB sampled/);
    expect(out).not.toContain("heap, old");
    expect(existsSync(`${prefix}-all.heapprofile`)).toBe(true);
    expect(existsSync(`${prefix}-old.heapprofile`)).toBe(false);
    const bad = await run([String(port), prefix, "1", "young"]);
    expect(bad.code).not.toBe(0);
    expect(bad.out).toContain("[windows: old,all (the default), old or all]");
  });

  it("says how to call it when the arguments are missing", async () => {
    const { code, out } = await run([]);
    expect(code).not.toBe(0);
    expect(out).toContain("usage: node bench/profile.ts <inspector port> <output prefix>");
  });
});
