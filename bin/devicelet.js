#!/usr/bin/env node
// The devicelet command. In a source checkout it runs the TypeScript sources directly (Node.js strips
// the types), so what runs is always what was last edited; an installed package, which ships only
// dist/, runs the compiled JavaScript.
import { existsSync } from "node:fs";

const source = new URL("../src/cli/main.ts", import.meta.url);
const built = new URL("../dist/src/cli/main.js", import.meta.url);
const canRunSource = existsSync(source) && Boolean(process.features.typescript);
const { main } = await import(canRunSource ? source.href : built.href);
process.exitCode = await main(process.argv.slice(2));
