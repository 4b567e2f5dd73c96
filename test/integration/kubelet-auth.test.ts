/**
 * Authentication and authorization of the kubelet API against the harness control plane: the real
 * kubelet API server (server.ts) for one node on loopback, with a serving certificate from the
 * real kubelet-serving signer (tls.ts), the client CA from devicelet's kubeconfig, and every
 * request checked by auth.ts through real TokenReviews and SubjectAccessReviews as devicelet's
 * least-privilege user. The node has no device and no pods: an allowed request gets whatever the
 * route answers for that (an empty pod list, a 404 for a pod's logs), never a 401 or 403. Callers:
 * nobody, a ServiceAccount without rights, one bound to nodes/{proxy,log,stats,metrics} get, the
 * API server's own kubelet client certificate, and a certificate from another CA.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import https from "node:https";
import os from "node:os";
import path from "node:path";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createKubeClient, type KubeClient } from "../../src/kube/index.ts";
import type { PodLifecycleProvider } from "../../src/provider/index.ts";
import { kubeletAuthenticator } from "../../src/kubelet/auth.ts";
import { KubeletServer } from "../../src/kubelet/server.ts";
import { loadClientCA, servingCertificates } from "../../src/kubelet/tls.ts";
import { apply, kubectl } from "../support/kubectl.ts";
import { deviceletKubeconfig, testenvDir, uniqueName } from "../support/testenv.ts";

const logger = pino({ level: process.env.DEVICELET_TEST_LOG ?? "silent" });
const ns = uniqueName("kubelet-auth");
const nodeName = uniqueName("auth-node");
const pki = (f: string) => path.join(testenvDir, "pki", f);
const abort = new AbortController();
let kube: KubeClient;
let server: KubeletServer;
let port = 0;
let caPem = "";
const tokens = { none: "", reader: "" };
let strangerCert = { cert: "", key: "" };

const paths = [
  "/pods",
  "/healthz",
  "/stats/summary",
  "/metrics/resource",
  `/containerLogs/${ns}/app/main?tailLines=10`,
  `/exec/${ns}/app/main?command=ls&output=1`,
];

interface Caller {
  readonly token?: string;
  readonly cert?: { readonly cert: string; readonly key: string };
}

/** One request to the test server: status and body. A new connection each time (no agent). */
function call(p: string, caller: Caller, method = "GET"): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: "127.0.0.1",
        port,
        path: p,
        method,
        ca: caPem, // the serving certificate must chain to the cluster CA and name 127.0.0.1
        agent: false,
        ...(caller.cert ?? {}),
        headers: caller.token ? { authorization: `Bearer ${caller.token}` } : {},
      },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => (body += c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: statusMessage(body) }));
      },
    );
    req.on("error", reject);
    req.end();
  });
}

/** The message of a metav1.Status body; other bodies as they are. */
function statusMessage(body: string): string {
  try {
    const status = JSON.parse(body) as { kind?: string; message?: string };
    return status.kind === "Status" ? (status.message ?? "") : body;
  } catch {
    return body;
  }
}

/** What an allowed request may get from a node with no device and no pods. */
const ALLOWED = new Map<string, number>([
  ["/pods", 200],
  ["/healthz", 200],
  ["/stats/summary", 200],
  ["/metrics/resource", 200],
  [`/containerLogs/${ns}/app/main?tailLines=10`, 404], // no such pod
  [`/exec/${ns}/app/main?command=ls&output=1`, 400], // a plain GET, not an upgrade
]);

beforeAll(async () => {
  caPem = readFileSync(pki("ca.crt"), "utf8");
  await kubectl(["create", "namespace", ns]);
  await kubectl(["create", "serviceaccount", "norights", "-n", ns]);
  await kubectl(["create", "serviceaccount", "reader", "-n", ns]);
  await apply(`apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: { name: ${ns}-kubelet-reader }
rules:
  - apiGroups: [""]
    resources: [nodes/proxy, nodes/log, nodes/stats, nodes/metrics]
    verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: { name: ${ns}-kubelet-reader }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: ${ns}-kubelet-reader }
subjects: [{ kind: ServiceAccount, name: reader, namespace: ${ns} }]
`);
  tokens.none = (await kubectl(["create", "token", "norights", "-n", ns])).trim();
  tokens.reader = (await kubectl(["create", "token", "reader", "-n", ns])).trim();

  // The API server's identity, but signed by a CA the kubelet API does not trust.
  const dir = mkdtempSync(path.join(os.tmpdir(), "devicelet-stranger-"));
  const f = (n: string) => path.join(dir, n);
  const openssl = (args: string[]) => execFileSync("openssl", args, { stdio: "ignore" });
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  openssl([
    "req",
    "-x509",
    ...ec,
    "-keyout",
    f("ca.key"),
    "-out",
    f("ca.crt"),
    "-days",
    "1",
    "-subj",
    "/CN=stranger-ca",
  ]);
  openssl([
    "req",
    ...ec,
    "-keyout",
    f("c.key"),
    "-out",
    f("c.csr"),
    "-subj",
    "/O=system:masters/CN=kube-apiserver-kubelet-client",
  ]);
  writeFileSync(f("c.ext"), "extendedKeyUsage=clientAuth\n");
  openssl([
    "x509",
    "-req",
    "-in",
    f("c.csr"),
    "-CA",
    f("ca.crt"),
    "-CAkey",
    f("ca.key"),
    "-CAcreateserial",
    "-days",
    "1",
    "-extfile",
    f("c.ext"),
    "-out",
    f("c.crt"),
  ]);
  strangerCert = { cert: readFileSync(f("c.crt"), "utf8"), key: readFileSync(f("c.key"), "utf8") };

  kube = createKubeClient({ kubeconfigPath: deviceletKubeconfig(), qps: 50, burst: 100, logger });
  const certificates = servingCertificates({
    source: "csr",
    ipAddresses: ["127.0.0.1"],
    dnsNames: [],
    approve: true,
    store: { namespace: ns, name: "devicelet-kubelet-serving" },
    kube,
    logger,
  });
  await certificates.start(abort.signal);
  server = new KubeletServer({
    ports: { bindAddress: "127.0.0.1", port: 0, portCount: 1 },
    certificates,
    clientCA: loadClientCA({ kubeconfigPath: deviceletKubeconfig() }),
    authenticator: kubeletAuthenticator({ kube, logger }),
    backend: {
      providerOf: () => ({ name: "none" }) as unknown as PodLifecycleProvider,
      deviceOf: () => undefined,
      podsOn: () => [],
      pod: () => undefined,
      nodeStartTime: () => new Date(),
    },
    logger,
  });
  server.start(abort.signal);
  port = await server.ports.assign(nodeName);
});

afterAll(async () => {
  abort.abort();
  await server.close();
  await kube.close();
  await kubectl([
    "delete",
    "csr",
    "-l",
    `devicelet.dev/serving-secret-namespace=${ns}`,
    "--ignore-not-found",
  ]);
  await kubectl(["delete", "clusterrolebinding,clusterrole", `${ns}-kubelet-reader`, "--ignore-not-found"]);
  await kubectl(["delete", "namespace", ns, "--wait=false"]);
});

describe.each(paths)("GET %s", (p) => {
  it("answers 401 without credentials", async () => {
    expect(await call(p, {})).toEqual({ status: 401, body: "Unauthorized" });
  });

  it("answers 403 to a ServiceAccount token without rights", async () => {
    const { status, body } = await call(p, { token: tokens.none });
    expect(status).toBe(403);
    expect(body).toMatch(
      new RegExp(
        `^Forbidden \\(user=system:serviceaccount:${ns}:norights, verb=get, resource=nodes, subresource\\(s\\)=\\[`,
      ),
    );
  });

  it("serves a token granted get on nodes/proxy, log, stats and metrics", async () => {
    expect((await call(p, { token: tokens.reader })).status).toBe(ALLOWED.get(p));
  });

  it("serves the API server's kubelet client certificate", async () => {
    const cert = {
      cert: readFileSync(pki("apiserver-kubelet-client.crt"), "utf8"),
      key: readFileSync(pki("apiserver-kubelet-client.key"), "utf8"),
    };
    expect((await call(p, { cert })).status).toBe(ALLOWED.get(p));
  });

  it("answers 401 to a client certificate from another CA", async () => {
    expect(await call(p, { cert: strangerCert })).toEqual({ status: 401, body: "Unauthorized" });
  });
});

describe("verbs", () => {
  it("needs create on nodes/proxy for a POST to /exec, which get alone does not give", async () => {
    const p = `/exec/${ns}/app/main?command=ls&output=1`;
    expect(await call(p, { token: tokens.reader }, "POST")).toEqual({
      status: 403,
      body: `Forbidden (user=system:serviceaccount:${ns}:reader, verb=create, resource=nodes, subresource(s)=[proxy])`,
    });
    const cert = {
      cert: readFileSync(pki("apiserver-kubelet-client.crt"), "utf8"),
      key: readFileSync(pki("apiserver-kubelet-client.key"), "utf8"),
    };
    expect((await call(p, { cert }, "POST")).status).toBe(400); // allowed; not an upgrade
  });

  it("says which subresources it tried for /pods", async () => {
    const { body } = await call("/pods", { token: tokens.none });
    expect(body).toBe(
      `Forbidden (user=system:serviceaccount:${ns}:norights, verb=get, resource=nodes, subresource(s)=[pods proxy])`,
    );
  });
});
