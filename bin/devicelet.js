#!/usr/bin/env node
// The devicelet command. In a source checkout it runs the TypeScript sources directly (Node.js strips
// the types), so what runs is always what was last edited; an installed package, which ships only
// dist/, runs the compiled JavaScript.
//
// Heap sizing. V8 sizes its heap from the memory the process may use. With no memory limit on a
// large machine (a heap limit of 2 GiB or more) it picks 64 MiB semi-spaces (128 MiB of young
// generation, committed as soon as allocation picks up) and lets the old generation grow to up to
// four times what is live before a full collection: devicelet peaked at 400-450 MiB resident for
// about 75 MiB of live objects (`npm run bench -- throughput`, 5,000 pods). So the long-running
// commands start again in the same process (`process.execve`, same pid) with 8 MiB semi-spaces
// and 1.5x growth: a 250 MiB peak for the same CPU there, and at 1,000 nodes and 10,000 pods
// (`npm run bench -- scale`) a 262 MiB peak where 16 MiB semi-spaces gave 289 MiB, with no more
// CPU (0.0061 against 0.0078 CPU seconds per node per minute). Under a memory limit (a container's cgroup,
// such as the chart's 512Mi) Node.js gives V8 that limit and V8 already sizes the heap small, so
// nothing changes; nor when the caller set any of these flags (command line or NODE_OPTIONS).
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { getHeapStatistics } from "node:v8";

const HEAP_FLAGS = ["--max-semi-space-size=8", "--heap-growing-percent=50"];
const LONG_RUNNING = new Set(["run", "agent", "simulate"]);
const userFlags = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? "").split(/\s+/)];
const tuned = userFlags.some((f) =>
  /^--(max[-_]semi[-_]space[-_]size|max[-_]heap[-_]size|heap[-_]growing[-_]percent)\b/.test(f),
);
if (
  !tuned &&
  LONG_RUNNING.has(process.argv[2] ?? "") &&
  typeof process.execve === "function" &&
  getHeapStatistics().heap_size_limit >= 2 * 1024 ** 3
) {
  process.execve(process.execPath, [
    process.execPath,
    ...HEAP_FLAGS,
    ...process.execArgv,
    fileURLToPath(import.meta.url),
    ...process.argv.slice(2),
  ]);
}

const source = new URL("../src/cli/main.ts", import.meta.url);
const built = new URL("../dist/src/cli/main.js", import.meta.url);
const canRunSource = existsSync(source) && Boolean(process.features.typescript);
const { main } = await import(canRunSource ? source.href : built.href);
process.exitCode = await main(process.argv.slice(2));
