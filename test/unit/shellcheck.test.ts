/**
 * Every shell script of the project passes shellcheck: the scripts under hack/ (by `.sh` name or a
 * shell shebang) and .ci/run. shellcheck comes from Debian's packages, installed when missing.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { installDebianPackage } from "../../hack/testenv/mosquitto.ts";

const root = path.resolve(import.meta.dirname, "../..");

function shellScripts(): string[] {
  const underHack = readdirSync(path.join(root, "hack"), { recursive: true, encoding: "utf8" })
    .map((file) => path.join("hack", file))
    .filter((file) => {
      if (file.endsWith(".sh")) return true;
      if (/\.\w+$/.test(file)) return false;
      try {
        return /^#!.*\b(bash|sh)\b/.test(readFileSync(path.join(root, file), "utf8").split("\n", 1)[0] ?? "");
      } catch {
        return false; // a folder
      }
    });
  return [...underHack.sort(), ".ci/run"];
}

/** shellcheck's path, installing Debian's package when it is missing (as root); else undefined. */
function shellcheck(): string | undefined {
  const which = () => spawnSync("sh", ["-c", "command -v shellcheck"], { encoding: "utf8" }).stdout.trim();
  if (which()) return which();
  if (process.getuid?.() !== 0) return undefined;
  installDebianPackage("shellcheck");
  return which() || undefined;
}

const binary = shellcheck();

const title = binary
  ? "pass shellcheck"
  : "pass shellcheck (skipped: shellcheck is missing and only root can install it from Debian's packages)";

describe("shell scripts", () => {
  it.skipIf(!binary)(title, () => {
    const scripts = shellScripts();
    expect(scripts).toEqual(
      expect.arrayContaining(["hack/kind.sh", "hack/image/build.sh", "hack/npm", ".ci/run"]),
    );
    // -x -P SCRIPTDIR: follow `. "$here/versions.sh"` to the file beside the script.
    const findings = spawnSync(binary ?? "", ["-x", "-P", "SCRIPTDIR", "--format=gcc", ...scripts], {
      cwd: root,
      encoding: "utf8",
    });
    expect(findings.stdout + findings.stderr).toBe("");
    expect(findings.status).toBe(0);
    expect(execFileSync(binary ?? "", ["--version"], { encoding: "utf8" })).toMatch(/version: \d/);
  });
});
