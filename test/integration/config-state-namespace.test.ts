/**
 * `devicelet run` refuses a state namespace that does not exist on the API server: exit code 2 and
 * a message naming the key and the namespace, before any node is registered. The same file with an
 * existing namespace starts (the check does not refuse what it should accept).
 */
import { execFile } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { stringify } from "yaml";
import { runDevicelet } from "../support/devicelet.ts";
import { getJson, kubectl } from "../support/kubectl.ts";
import { deviceletKubeconfig, uniqueName } from "../support/testenv.ts";

const repoRoot = path.resolve(import.meta.dirname, "../..");

/** Runs `devicelet run` to its end; resolves with its exit code and output. */
const runToExit = (config: Record<string, unknown>) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "devicelet-state-ns-"));
  const file = path.join(dir, "config.yaml");
  writeFileSync(
    file,
    stringify({
      health: { port: 0, bindAddress: "127.0.0.1" },
      metrics: { port: 0, bindAddress: "127.0.0.1" },
      ...config,
    }),
  );
  return new Promise<{ code: number | null; stderr: string; stdout: string }>((resolve) => {
    execFile(
      process.execPath,
      [path.join(repoRoot, "bin/devicelet.js"), "run", "--config", file],
      { timeout: 60_000, env: { ...process.env, POD_NAMESPACE: "" } },
      (err, stdout, stderr) => {
        resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, stdout, stderr });
      },
    );
  });
};

describe("state namespace checked at start", () => {
  it("exits 2 naming state.namespace and the namespace when it does not exist", async () => {
    const id = uniqueName("nons");
    const missing = uniqueName("no-such-ns");
    const result = await runToExit({
      kubeconfig: deviceletKubeconfig(),
      nodes: { extraLabels: { "devicelet.dev/test": id } },
      state: { namespace: missing },
      provider: { type: "mock", config: { devices: { count: 1, idPrefix: `${id}-` } } },
    });
    expect(result.code).toBe(2);
    expect(result.stderr).toContain("/state/namespace:");
    expect(result.stderr).toContain(`namespace "${missing}"`);
    expect(result.stderr).toContain("does not exist");
    // Refused before registering anything.
    const nodes = await getJson<{ items: unknown[] }>(["nodes", "-l", `devicelet.dev/test=${id}`]);
    expect(nodes.items).toHaveLength(0);
  });

  it("starts when the namespace exists", async () => {
    const id = uniqueName("yesns");
    const ns = uniqueName("state-ns");
    await kubectl(["create", "namespace", ns]);
    const d = await runDevicelet({
      id,
      expectNodes: 1,
      waitForRunning: true,
      config: () => ({
        state: { namespace: ns },
        provider: { type: "mock", config: { devices: { count: 1, idPrefix: `${id}-` } } },
      }),
    });
    expect(await d.stop()).toBe(0);
  });
});
