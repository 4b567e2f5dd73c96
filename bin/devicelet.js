#!/usr/bin/env node
// The devicelet command. Runs the compiled CLI from dist/ when it has been built, and otherwise the
// TypeScript sources directly (Node.js >= 22.18 strips types by itself).
import { existsSync } from "node:fs";

const built = new URL("../dist/src/cli/main.js", import.meta.url);
const { main } = await import(
  existsSync(built) ? built.href : new URL("../src/cli/main.ts", import.meta.url).href
);
process.exitCode = await main(process.argv.slice(2));
