/**
 * Brings the harness control plane up once per test run for the `integration` project, reusing one
 * that `npm run testenv -- up` left running (and then leaving it running), and takes down only what
 * this run started.
 */
import { down, running, up } from "../src/testing/controlplane/controlplane.ts";
import { testenvDir } from "./support/testenv.ts";

export default async function setup(): Promise<() => Promise<void>> {
  if (await running(testenvDir)) {
    console.error(`[testenv] reusing the control plane recorded in ${testenvDir}`);
    await up({ dir: testenvDir }); // refreshes RBAC from manifests/, starts nothing
    return async () => {};
  }
  await up({ dir: testenvDir });
  return async () => {
    await down({ dir: testenvDir });
  };
}
