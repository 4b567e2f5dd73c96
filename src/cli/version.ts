/**
 * devicelet's version, read once from package.json. Its own module so the commands (`run.ts`
 * reports it to the engine) and the entry point (`main.ts`) both import it, not each other.
 */
import { readFileSync } from "node:fs";

// From src/cli/ or, once built, from dist/src/cli/.
const packageJsonUrl = new URL(
  import.meta.url.includes("/dist/") ? "../../../package.json" : "../../package.json",
  import.meta.url,
);
const packageJson = JSON.parse(readFileSync(packageJsonUrl, "utf8")) as { version: string };
export const version = packageJson.version;
