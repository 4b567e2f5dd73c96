/**
 * The harness kube-apiserver's command line and audit policy, shared by `up` and `startApiServer`
 * (controlplane.ts) so an API server restarted after an outage runs exactly as the first one did.
 */
import path from "node:path";
import type { Pki } from "./pki.ts";

// Every request of devicelet and of the tools it is measured against (KWOK) is logged, reads
// included, so tests and benchmarks can count API calls per pod; the control plane's own
// components are left out to keep the log small. Watches are logged only for devicelet's own
// identities (the harness user, and a ServiceAccount such as the chart's), so the RBAC tests see
// every verb devicelet uses.
export const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  # The scheduler's bindings: when a pod was bound, by the API server's clock (the benchmarks).
  - level: Metadata
    users: [system:kube-scheduler]
    verbs: [create]
    resources: [{ group: "", resources: [pods/binding] }]
  - level: None
    users: [system:kube-controller-manager, system:kube-scheduler, system:apiserver]
  - level: None
    userGroups: [system:serviceaccounts:kube-system, system:nodes]
  - level: Metadata
    users: [devicelet]
    verbs: [watch]
  - level: Metadata
    userGroups: [system:serviceaccounts]
    verbs: [watch]
  - level: None
    verbs: [watch]
  - level: Metadata
`;

/**
 * kube-apiserver's command line, one function for `up` and `startApiServer` so a restarted API
 * server runs with exactly the flags and port of the first one. `address` is where it listens and
 * what it advertises: 127.0.0.1, or the documentation-range address of a control plane run in a
 * network namespace (etcd stays on that namespace's own loopback).
 */
export function apiServerArgs(o: {
  dir: string;
  pki: Pki;
  etcdPort: number;
  port: number;
  address?: string;
}): string[] {
  const { dir, pki } = o;
  const address = o.address ?? "127.0.0.1";
  return [
    `--etcd-servers=http://127.0.0.1:${o.etcdPort}`,
    `--bind-address=${address}`,
    `--advertise-address=${address}`,
    `--secure-port=${o.port}`,
    `--tls-cert-file=${pki.cert("apiserver").cert}`,
    `--tls-private-key-file=${pki.cert("apiserver").key}`,
    `--client-ca-file=${pki.caCert}`,
    `--kubelet-client-certificate=${pki.cert("apiserver-kubelet-client").cert}`,
    `--kubelet-client-key=${pki.cert("apiserver-kubelet-client").key}`,
    `--kubelet-certificate-authority=${pki.caCert}`,
    `--service-account-key-file=${path.join(pki.dir, "sa.pub")}`,
    `--service-account-signing-key-file=${path.join(pki.dir, "sa.key")}`,
    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
    "--service-cluster-ip-range=10.0.0.0/24",
    "--authorization-mode=Node,RBAC",
    "--enable-admission-plugins=NodeRestriction",
    "--allow-privileged=true",
    // The aggregation layer (metrics-server behind `kubectl top`): the API server authenticates
    // the caller, then proxies to the extension API server with the front-proxy client
    // certificate and the caller's identity in these headers. Routing to the endpoint address
    // rather than the Service's cluster IP, since the harness runs no kube-proxy.
    `--requestheader-client-ca-file=${pki.frontProxyCaCert}`,
    "--requestheader-allowed-names=front-proxy-client",
    "--requestheader-extra-headers-prefix=X-Remote-Extra-",
    "--requestheader-group-headers=X-Remote-Group",
    "--requestheader-username-headers=X-Remote-User",
    `--proxy-client-cert-file=${pki.cert("front-proxy-client").cert}`,
    `--proxy-client-key-file=${pki.cert("front-proxy-client").key}`,
    "--enable-aggregator-routing=true",
    // Endpoints cannot hold loopback addresses; with nothing to reconcile, turn it off.
    "--endpoint-reconciler-type=none",
    // Benchmarks push thousands of writes; the defaults (400/200) throttle the harness, not devicelet.
    "--max-requests-inflight=1000",
    "--max-mutating-requests-inflight=500",
    `--audit-policy-file=${path.join(dir, "audit-policy.yaml")}`,
    `--audit-log-path=${path.join(dir, "audit.log")}`,
    "--audit-log-maxsize=500",
    "--audit-log-maxbackup=1",
    "--audit-log-mode=batch",
    "--audit-log-batch-max-wait=1s",
    "--audit-log-batch-buffer-size=100000",
  ];
}
