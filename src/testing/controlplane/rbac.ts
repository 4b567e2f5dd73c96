/**
 * The RBAC the harness user `devicelet` runs with: exactly the Helm chart's
 * (charts/devicelet/templates/rbac.yaml), rendered by a real Helm (hack/control-plane/build-helm.sh,
 * cached by version), so every test exercises what a release grants and a verb missing from the
 * chart fails the suite.
 *
 * - The ClusterRole and the kube-node-lease Role are applied as rendered, bound to the user
 *   instead of the chart's ServiceAccount.
 * - The state-namespace Role's rules (ConfigMap writes, the leader Lease, the serving-certificate
 *   Secret, the namespace check) become the ClusterRole `<name>-state`, granted in every
 *   namespace: each test picks its own state namespace. The chart test
 *   (test/integration/chart-rbac.test.ts) proves the scoping with a real release.
 * - The chart's opt-in kubelet-serving approver is granted too: the harness is a dev cluster, where
 *   devicelet may approve its own serving CSR (`kubelet.tls.csrApprove`).
 *
 * The release is rendered as `devicelet`, so the names restricted by `resourceNames` are the
 * config's defaults: the leader Lease `devicelet`, the certificate Secret `devicelet-kubelet-serving`.
 *
 *   const manifest = harnessRbac({ packageRoot, user: "devicelet" });   // kubectl apply -f -
 */
import { execFileSync } from "node:child_process";
import path from "node:path";
import { parseAllDocuments, stringify } from "yaml";

interface RbacObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  rules?: unknown[];
  roleRef?: { apiGroup: string; kind: string; name: string };
  subjects?: unknown[];
}

/** The namespace the chart is rendered for; only the state Role lands there, and it is rewritten. */
const RELEASE_NAMESPACE = "devicelet-system";

/** The path of the cached Helm binary, building it first when the cache is cold. */
export function helmBinary(packageRoot: string): string {
  const out = execFileSync("bash", [path.join(packageRoot, "hack/control-plane/build-helm.sh")], {
    stdio: ["ignore", "pipe", "inherit"],
    encoding: "utf8",
  });
  return out.trim().split("\n").at(-1) ?? "";
}

/**
 * `helm template` of the chart's RBAC objects (rbac.yaml, and the approver when `approve`), as a
 * release named `devicelet` in `namespace`. `set` adds `--set` values.
 */
export function renderChartRbac(o: {
  readonly packageRoot: string;
  readonly namespace: string;
  readonly approve?: boolean;
  readonly set?: readonly string[];
}): RbacObject[] {
  const args = [
    "template",
    "devicelet",
    path.join(o.packageRoot, "charts/devicelet"),
    `--namespace=${o.namespace}`,
    "--show-only=templates/rbac.yaml",
    ...(o.approve
      ? ["--show-only=templates/kubelet-serving-approver.yaml", "--set=kubeletApi.tls.csr.approve=true"]
      : []),
    ...(o.set ?? []).map((s) => `--set=${s}`),
  ];
  const out = execFileSync(helmBinary(o.packageRoot), args, { encoding: "utf8" });
  return parseAllDocuments(out)
    .map((d) => d.toJS() as RbacObject | null)
    .filter((d): d is RbacObject => d !== null);
}

/** The chart's RBAC, rewritten for the harness user as the module doc says; YAML for `kubectl apply -f -`. */
export function harnessRbac(o: { readonly packageRoot: string; readonly user: string }): string {
  const subjects = [{ apiGroup: "rbac.authorization.k8s.io", kind: "User", name: o.user }];
  const objects = renderChartRbac({
    packageRoot: o.packageRoot,
    namespace: RELEASE_NAMESPACE,
    approve: true,
  });
  const out = objects.map((object): RbacObject => {
    const { kind, metadata } = object;
    const inState = metadata.namespace === RELEASE_NAMESPACE;
    if (kind === "ClusterRoleBinding" || (kind === "RoleBinding" && !inState)) return { ...object, subjects };
    if (kind === "Role" && inState)
      return {
        ...object,
        kind: "ClusterRole",
        metadata: { name: `${metadata.name}-state`, ...(metadata.labels ? { labels: metadata.labels } : {}) },
      };
    if (kind === "RoleBinding" && inState) {
      const name = `${object.roleRef?.name ?? metadata.name}-state`;
      return {
        apiVersion: object.apiVersion,
        kind: "ClusterRoleBinding",
        metadata: { name, ...(metadata.labels ? { labels: metadata.labels } : {}) },
        roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name },
        subjects,
      };
    }
    return object;
  });
  if (!out.some((o) => o.kind === "ClusterRole"))
    throw new Error("helm rendered no ClusterRole from charts/devicelet (rbac.create off?)");
  return out.map((o) => stringify(o)).join("---\n");
}
