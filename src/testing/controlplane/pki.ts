/**
 * The harness PKI, made with the openssl command line (Node.js cannot issue X.509 certificates):
 * one CA, serving certificates for the API server and the Mosquitto TLS listener, client
 * certificates for each control-plane identity, and the service-account key pair.
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
  cert(stem: string): { cert: string; key: string };
}

export function ensurePki(dir: string, clients: readonly ClientIdentity[]): Pki {
  mkdirSync(dir, { recursive: true });
  const p = (f: string) => path.join(dir, f);
  const caCert = p("ca.crt");
  const caKey = p("ca.key");
  if (!existsSync(caCert)) {
    openssl(
      ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"].concat([
        "-keyout",
        caKey,
        "-out",
        caCert,
        "-days",
        "3650",
        "-subj",
        "/CN=devicelet-testenv-ca",
      ]),
    );
  }
  const issue = (stem: string, subject: string, extensions: string) => {
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
      ["x509", "-req", "-in", p(`${stem}.csr`), "-CA", caCert, "-CAkey", caKey, "-CAcreateserial"].concat([
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
      "IP:10.0.0.1",
      "DNS:kubernetes",
      "DNS:kubernetes.default",
      "DNS:kubernetes.default.svc",
    ]),
  );
  issue("broker", "/CN=mosquitto", serverExt(loopback));
  for (const c of clients) {
    const subject = `${c.organization ? `/O=${c.organization}` : ""}/CN=${c.commonName}`;
    issue(
      c.stem,
      subject,
      "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
    );
  }
  if (!existsSync(p("sa.key"))) {
    openssl(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", p("sa.key")]);
    openssl(["pkey", "-in", p("sa.key"), "-pubout", "-out", p("sa.pub")]);
  }
  return { dir, caCert, caKey, cert: (stem) => ({ cert: p(`${stem}.crt`), key: p(`${stem}.key`) }) };
}
