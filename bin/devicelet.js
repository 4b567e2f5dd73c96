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
//
// Memory outside the heap. Sockets, TLS and Node's buffers allocate with the C library's malloc.
// glibc raises its threshold for giving memory back to the system after each large block freed
// (up to 32 MiB), so what a burst allocated stays: after 5,000 pods the process's malloc heaps had
// grown 15 MiB, kept for good, while the JavaScript heap gave back 10 (`npm run bench --
// throughput`, /proc/<pid>/smaps before the first pod and after the settle). With the thresholds
// fixed at 64 KiB, blocks that large are mapped on their own and returned when freed: the settled
// RSS per pod went from 1.4 to 2.1 KiB to -0.1 to 0.7, the peak from 170-177 to 158-162 MiB, at
// the same CPU and pods per second. So the long-running commands also start again with
// MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ set, on glibc, unless the caller set any
// MALLOC_ variable or GLIBC_TUNABLES (the image sets them itself, so it starts once).
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { getHeapStatistics } from "node:v8";

const HEAP_FLAGS = ["--max-semi-space-size=8", "--heap-growing-percent=50"];
const MALLOC_ENV = { MALLOC_MMAP_THRESHOLD_: "65536", MALLOC_TRIM_THRESHOLD_: "65536" };
const LONG_RUNNING = new Set(["run", "agent", "simulate"]);
const userFlags = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? "").split(/\s+/)];
const heapTuned = userFlags.some((f) =>
  /^--(max[-_]semi[-_]space[-_]size|max[-_]heap[-_]size|heap[-_]growing[-_]percent)\b/.test(f),
);
const wantHeapFlags = !heapTuned && getHeapStatistics().heap_size_limit >= 2 * 1024 ** 3;
const mallocTuned =
  Object.keys(process.env).some((name) => name.startsWith("MALLOC_")) || "GLIBC_TUNABLES" in process.env;
const wantMallocEnv = !mallocTuned && process.platform === "linux" && glibc();
if (
  LONG_RUNNING.has(process.argv[2] ?? "") &&
  typeof process.execve === "function" &&
  (wantHeapFlags || wantMallocEnv)
) {
  process.execve(
    process.execPath,
    [
      process.execPath,
      ...(wantHeapFlags ? HEAP_FLAGS : []),
      ...process.execArgv,
      fileURLToPath(import.meta.url),
      ...process.argv.slice(2),
    ],
    wantMallocEnv ? { ...process.env, ...MALLOC_ENV } : process.env,
  );
}

/** Whether this Node.js runs on glibc, whose malloc reads MALLOC_ENV (musl's does not). */
function glibc() {
  process.report.excludeNetwork = true;
  return Boolean(process.report.getReport().header.glibcVersionRuntime);
}

const source = new URL("../src/cli/main.ts", import.meta.url);
const built = new URL("../dist/src/cli/main.js", import.meta.url);
const canRunSource = existsSync(source) && Boolean(process.features.typescript);
const { main } = await import(canRunSource ? source.href : built.href);
process.exitCode = await main(process.argv.slice(2));
