/**
 * `npm run testenv -- up|down|status`: the harness control plane for a developer's shell.
 * `up` leaves `.testenv/env` to source (KUBECONFIG and a PATH with kubectl); both are idempotent.
 */
import path from "node:path";
import { down, running, up } from "../../src/testing/controlplane/controlplane.ts";

const dir = process.env.DEVICELET_TESTENV_DIR ?? path.resolve(import.meta.dirname, "../../.testenv");
const command = process.argv[2];

switch (command) {
  case "up": {
    const state = await up({ dir });
    console.log(`API server ${state.server}\n  source ${path.join(dir, "env")}\n  kubectl get nodes`);
    break;
  }
  case "down":
    await down({ dir });
    break;
  case "status": {
    const state = await running(dir);
    console.log(state ? `running at ${state.server}` : "not running");
    process.exitCode = state ? 0 : 1;
    break;
  }
  default:
    console.error("usage: npm run testenv -- up | down | status");
    process.exitCode = 2;
}
