/**
 * kubectl from the harness control plane, for test set-up and assertions. Tests assert on what the
 * API server holds, read through the real kubectl, so nothing of devicelet's own client is trusted
 * to check itself.
 */
import { execFile } from "node:child_process";
import path from "node:path";
import { promisify } from "node:util";
import { readState } from "../../src/testing/controlplane/controlplane.ts";
import { adminKubeconfig, testenvDir } from "./testenv.ts";

const run = promisify(execFile);

export function kubectlPath(): string {
  const state = readState(testenvDir);
  if (!state) throw new Error(`no harness control plane recorded in ${testenvDir}`);
  return path.join(state.binDir, "kubectl");
}

/** Runs kubectl as cluster-admin; resolves with stdout, rejects with stderr in the message. */
export async function kubectl(
  args: readonly string[],
  options: { input?: string; kubeconfig?: string } = {},
) {
  const child = run(kubectlPath(), [`--kubeconfig=${options.kubeconfig ?? adminKubeconfig()}`, ...args], {
    maxBuffer: 64 * 1024 * 1024,
  });
  if (options.input !== undefined) {
    child.child.stdin?.end(options.input);
  }
  try {
    const { stdout } = await child;
    const [verb, kind, name] = args;
    if (verb === "create" && kind === "namespace" && name !== undefined)
      await defaultServiceAccount(name, options);
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; stdout?: string; message: string };
    throw Object.assign(new Error(`kubectl ${args.join(" ")}: ${e.stderr || e.message}`), {
      stdout: e.stdout ?? "",
    });
  }
}

/**
 * Waits for a new namespace's `default` ServiceAccount: the controller-manager makes it a moment
 * after the namespace, and until then the API server refuses every pod there ("serviceaccount
 * \"default\" not found"), which a loaded machine showed as a failing test.
 */
async function defaultServiceAccount(namespace: string, options: { kubeconfig?: string }) {
  const deadline = Date.now() + 60_000;
  for (;;) {
    try {
      await run(kubectlPath(), [
        `--kubeconfig=${options.kubeconfig ?? adminKubeconfig()}`,
        "get",
        "serviceaccount",
        "default",
        "-n",
        namespace,
      ]);
      return;
    } catch (err) {
      if (Date.now() > deadline)
        throw new Error(`namespace ${namespace}: no default ServiceAccount after 60 s`, { cause: err });
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
}

/** `kubectl get -o json` parsed. */
export async function getJson<T = unknown>(args: readonly string[]): Promise<T> {
  return JSON.parse(await kubectl(["get", ...args, "-o", "json"])) as T;
}

export const apply = (manifest: string) => kubectl(["apply", "-f", "-"], { input: manifest });
