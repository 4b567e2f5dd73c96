/**
 * The harness PKI, made with the openssl command line (Node.js cannot issue X.509 certificates):
 * one CA, serving certificates for the API server and the Mosquitto TLS listener, client
 * certificates for each control-plane identity, the service-account key pair, and a separate
 * front-proxy CA with the client certificate the API server's aggregation layer presents to
 * extension API servers (metrics-server), as kubeadm sets it up.
 * Files already present are kept, so a second `up` reuses them.
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";

export interface ClientIdentity {
  /** File stem: `<stem>.crt`, `<stem>.key`. */
  readonly stem: string;
  readonly commonName: string;
  readonly organization?: string;
}

const openssl = (args: string[]) => execFileSync("openssl", args, { stdio: ["ignore", "ignore", "pipe"] });

export interface Pki {
  readonly dir: string;
  readonly caCert: string;
  readonly caKey: string;
  /** The CA of the aggregation layer's client certificate (`front-proxy-client`). */
  readonly frontProxyCaCert: string;
  cert(stem: string): { cert: string; key: string };
}

/**
 * `apiServerIps`: extra IP SANs of the API server's certificate (the address of a control plane
 * run in a network namespace); only applied when that certificate is first made.
 */
export function ensurePki(
  dir: string,
  clients: readonly ClientIdentity[],
  options: { readonly apiServerIps?: readonly string[] } = {},
): Pki {
  mkdirSync(dir, { recursive: true });
  const p = (f: string) => path.join(dir, f);
  const caCert = p("ca.crt");
  const caKey = p("ca.key");
  const selfSigned = (cert: string, key: string, commonName: string) => {
    if (existsSync(cert)) return;
    openssl(
      ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"].concat([
        "-keyout",
        key,
        "-out",
        cert,
        "-days",
        "3650",
        "-subj",
        `/CN=${commonName}`,
      ]),
    );
  };
  selfSigned(caCert, caKey, "devicelet-testenv-ca");
  const issue = (stem: string, subject: string, extensions: string, ca = { cert: caCert, key: caKey }) => {
    if (existsSync(p(`${stem}.crt`))) return;
    openssl(
      ["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"].concat([
        "-keyout",
        p(`${stem}.key`),
        "-out",
        p(`${stem}.csr`),
        "-subj",
        subject,
      ]),
    );
    writeFileSync(p(`${stem}.ext`), extensions);
    openssl(
      ["x509", "-req", "-in", p(`${stem}.csr`), "-CA", ca.cert, "-CAkey", ca.key, "-CAcreateserial"].concat([
        "-out",
        p(`${stem}.crt`),
        "-days",
        "3650",
        "-extfile",
        p(`${stem}.ext`),
      ]),
    );
  };
  const serverExt = (names: string[]) =>
    `basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=${names.join(",")}\n`;
  const loopback = ["IP:127.0.0.1", "IP:::1", "DNS:localhost"];
  issue(
    "apiserver",
    "/CN=kube-apiserver",
    serverExt([
      ...loopback,
      ...(options.apiServerIps ?? []).map((ip) => `IP:${ip}`),
      "IP:10.0.0.1",
      "DNS:kubernetes",
      "DNS:kubernetes.default",
      "DNS:kubernetes.default.svc",
    ]),
  );
  issue("broker", "/CN=mosquitto", serverExt(loopback));
  const clientExt =
    "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n";
  for (const c of clients) {
    const subject = `${c.organization ? `/O=${c.organization}` : ""}/CN=${c.commonName}`;
    issue(c.stem, subject, clientExt);
  }
  // The aggregation layer: its own CA, so a certificate of the cluster CA cannot pose as the
  // front proxy and assert any user in X-Remote-User (the reason kubeadm keeps them apart).
  const frontProxyCa = { cert: p("front-proxy-ca.crt"), key: p("front-proxy-ca.key") };
  selfSigned(frontProxyCa.cert, frontProxyCa.key, "devicelet-testenv-front-proxy-ca");
  issue("front-proxy-client", "/CN=front-proxy-client", clientExt, frontProxyCa);
  if (!existsSync(p("sa.key"))) {
    openssl(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", p("sa.key")]);
    openssl(["pkey", "-in", p("sa.key"), "-pubout", "-out", p("sa.pub")]);
  }
  return {
    dir,
    caCert,
    caKey,
    frontProxyCaCert: frontProxyCa.cert,
    cert: (stem) => ({ cert: p(`${stem}.crt`), key: p(`${stem}.key`) }),
  };
}
