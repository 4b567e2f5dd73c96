/**
 * What integration tests need to know about the harness control plane that the vitest global
 * setup brought up (test/global-setup.ts): kubeconfig paths, and unique names so tests sharing one
 * control plane never see each other's objects.
 */
import { randomBytes } from "node:crypto";
import path from "node:path";

export const testenvDir =
  process.env.DEVICELET_TESTENV_DIR ?? path.resolve(import.meta.dirname, "../../.testenv");

/** cluster-admin; for test set-up and assertions only. */
export const adminKubeconfig = () => path.join(testenvDir, "kubeconfig");
/** devicelet's own least-privilege identity; what devicelet under test must run with. */
export const deviceletKubeconfig = () => path.join(testenvDir, "devicelet.kubeconfig");

/** A DNS-1123 name unique to this test run: `prefix-<8 hex>`. */
export const uniqueName = (prefix: string) => `${prefix}-${randomBytes(4).toString("hex")}`;
