/** kubectl of the harness control plane as a small async runner, for scripts (demo, benchmarks). */
import { execFile } from "node:child_process";
import path from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

export function kubectlRunner(dir: string, binDir: string) {
  return async (args: readonly string[], input?: string): Promise<string> => {
    const child = run(
      path.join(binDir, "kubectl"),
      [`--kubeconfig=${path.join(dir, "kubeconfig")}`, ...args],
      {
        maxBuffer: 256 * 1024 * 1024,
      },
    );
    if (input !== undefined) child.child.stdin?.end(input);
    return (await child).stdout;
  };
}
