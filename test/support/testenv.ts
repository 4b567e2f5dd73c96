/**
 * What integration tests need to know about the harness control plane that the vitest global
 * setup brought up (test/global-setup.ts): kubeconfig paths, and unique names so tests sharing one
 * control plane never see each other's objects.
 */
import { randomBytes } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { parse, stringify } from "yaml";

export const testenvDir =
  process.env.DEVICELET_TESTENV_DIR ?? path.resolve(import.meta.dirname, "../../.testenv");

/** cluster-admin; for test set-up and assertions only. */
export const adminKubeconfig = () => path.join(testenvDir, "kubeconfig");
/** devicelet's own least-privilege identity; what devicelet under test must run with. */
export const deviceletKubeconfig = () => path.join(testenvDir, "devicelet.kubeconfig");

/** A DNS-1123 name unique to this test run: `prefix-<8 hex>`. */
export const uniqueName = (prefix: string) => `${prefix}-${randomBytes(4).toString("hex")}`;

/**
 * Writes `file`, a kubeconfig (mode 0600) for the harness cluster that authenticates as
 * `token` (a ServiceAccount's, from `kubectl create token`), so a test runs with exactly the
 * rights a chart grants.
 */
export function writeTokenKubeconfig(file: string, user: string, token: string): void {
  const admin = parse(readFileSync(adminKubeconfig(), "utf8")) as { clusters: { cluster: unknown }[] };
  const cluster = admin.clusters[0]?.cluster;
  if (!cluster) throw new Error("no cluster in the admin kubeconfig");
  writeFileSync(
    file,
    stringify({
      apiVersion: "v1",
      kind: "Config",
      clusters: [{ name: "testenv", cluster }],
      users: [{ name: user, user: { token } }],
      contexts: [{ name: "chart", context: { cluster: "testenv", user } }],
      "current-context": "chart",
    }),
    { mode: 0o600 },
  );
}
