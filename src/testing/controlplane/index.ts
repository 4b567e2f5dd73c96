/**
 * A real Kubernetes control plane for provider authors' tests, the one devicelet's own tests run
 * against (controlplane.ts): etcd, kube-apiserver, kube-controller-manager and kube-scheduler on
 * loopback, built once by hack/control-plane/build.sh (Go needed for the first build; cached by
 * version under ~/.cache/devicelet), with the Helm chart's RBAC granted to a `devicelet` user
 * (rbac.ts; Helm is built the same way).
 *
 *   const cp = await startControlPlane({ dir: ".testenv" });  // reuses a healthy one recorded in dir
 *   cp.adminKubeconfig;      // cluster-admin: for set-up and assertions
 *   cp.deviceletKubeconfig;  // devicelet's least-privilege identity: what an engine under test uses
 *   if (!cp.reused) await stopControlPlane({ dir: ".testenv" });
 *
 * The processes are detached: they outlive the test process until stopControlPlane, so a second
 * run (or a second test file) reuses them. Only the processes recorded in `dir` are ever signalled.
 */
import path from "node:path";
import { down, running, up } from "./controlplane.ts";

export interface ControlPlane {
  /** The folder its state, logs, PKI and kubeconfigs live in (absolute). */
  readonly dir: string;
  /** `https://127.0.0.1:<port>`. */
  readonly server: string;
  /** cluster-admin (group system:masters). */
  readonly adminKubeconfig: string;
  /**
   * User `devicelet`, granted the Helm chart's RBAC (the state-namespace Role's rules in every
   * namespace) and its kubelet-serving approver (self-approved serving certificates, as a dev
   * cluster may allow): see rbac.ts.
   */
  readonly deviceletKubeconfig: string;
  /** Folder holding kubectl and the control-plane binaries. */
  readonly binDir: string;
  /** True when one was already running in `dir` (then whoever started it stops it). */
  readonly reused: boolean;
}

/** `$DEVICELET_TESTENV_DIR`, else `.testenv` under the working directory: where devicelet's tests keep theirs. */
export const defaultControlPlaneDir = (): string =>
  path.resolve(process.env.DEVICELET_TESTENV_DIR ?? ".testenv");

/**
 * Starts the control plane recorded in `dir`, or reuses it when every recorded process is alive
 * and the API server is ready (re-applying the chart's RBAC). Resolves once the API server,
 * controller-manager and scheduler are healthy and the default ServiceAccount exists. A cold
 * binary cache means a build of several minutes; a warm start takes seconds.
 */
export async function startControlPlane(options: {
  readonly dir: string;
  readonly log?: (message: string) => void;
}): Promise<ControlPlane> {
  const dir = path.resolve(options.dir);
  const reused = (await running(dir)) !== undefined;
  const state = await up({ dir, ...(options.log ? { log: options.log } : {}) });
  return {
    dir,
    server: state.server,
    adminKubeconfig: path.join(dir, "kubeconfig"),
    deviceletKubeconfig: path.join(dir, "devicelet.kubeconfig"),
    binDir: state.binDir,
    reused,
  };
}

/** Stops exactly the processes recorded in `dir`; resolves false when there were none. Safe to call twice. */
export async function stopControlPlane(options: {
  readonly dir: string;
  readonly log?: (message: string) => void;
}): Promise<boolean> {
  return down({ dir: options.dir, ...(options.log ? { log: options.log } : {}) });
}
