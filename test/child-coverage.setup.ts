/**
 * Setup file of the integration project: with coverage on, every child process a test spawns with
 * this worker's environment (the devicelet CLI, the reference agent) writes its raw V8 coverage
 * when it exits. Set here, in the worker after it started, so the worker itself (whose coverage
 * vitest takes over the inspector) writes none.
 */
import { inject } from "vitest";

const dir = inject("childCoverageDir");
if (dir) process.env.NODE_V8_COVERAGE = dir;
