/**
 * Brings the harness control plane up once per test run for the `integration` project, reusing one
 * that `npm run testenv -- up` left running (and then leaving it running), and takes down only what
 * this run started. Also builds metrics-server (cached by version) for the kubelet API lab, once,
 * here: a cold build takes minutes, more than a test hook may, and two test files must not build it
 * into the same folder at once.
 */
import { execFileSync } from "node:child_process";
import path from "node:path";
import { down, running, up } from "../src/testing/controlplane/controlplane.ts";
import { testenvDir } from "./support/testenv.ts";

export default async function setup(): Promise<() => Promise<void>> {
  execFileSync("bash", [path.resolve(import.meta.dirname, "../hack/control-plane/build-metrics-server.sh")], {
    stdio: ["ignore", "ignore", "inherit"],
  });
  if (await running(testenvDir)) {
    console.error(`[testenv] reusing the control plane recorded in ${testenvDir}`);
    await up({ dir: testenvDir }); // re-applies the chart's RBAC (hack: helm), starts nothing
    return async () => {};
  }
  await up({ dir: testenvDir });
  return async () => {
    await down({ dir: testenvDir });
  };
}
