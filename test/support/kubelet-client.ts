/**
 * Calling `devicelet run`'s kubelet API the way the API server does, for integration tests: a
 * serving certificate for 127.0.0.1 signed by the harness CA, and GETs with the API server's own
 * kubelet client certificate.
 */
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import https from "node:https";
import path from "node:path";
import { getJson } from "./kubectl.ts";
import { testenvDir } from "./testenv.ts";

const pki = (f: string) => path.join(testenvDir, "pki", f);

/** A serving certificate for 127.0.0.1 signed by the harness CA, as cert-manager would issue one, in `dir`. */
export function servingCertificate(dir: string): { certFile: string; keyFile: string } {
  const f = (name: string) => path.join(dir, name);
  const openssl = (args: string[]) => execFileSync("openssl", args, { stdio: ["ignore", "ignore", "pipe"] });
  openssl(
    [
      "req",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:P-256",
      "-nodes",
      "-subj",
      "/CN=devicelet",
    ].concat(["-keyout", f("tls.key"), "-out", f("tls.csr")]),
  );
  writeFileSync(
    f("tls.ext"),
    "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n",
  );
  openssl(
    ["x509", "-req", "-in", f("tls.csr"), "-CA", pki("ca.crt"), "-CAkey", pki("ca.key")].concat([
      "-CAcreateserial",
      "-CAserial",
      f("ca.srl"),
      "-out",
      f("tls.crt"),
      "-days",
      "1",
      "-extfile",
      f("tls.ext"),
    ]),
  );
  return { certFile: f("tls.crt"), keyFile: f("tls.key") };
}

/** Each node's kubelet port, as its status advertises it (0 until it does), by node name. */
export async function kubeletPorts(nodeSelector: string): Promise<Map<string, number>> {
  const nodes = await getJson<{
    items: {
      metadata: { name: string };
      status: { daemonEndpoints?: { kubeletEndpoint?: { Port?: number } } };
    }[];
  }>(["nodes", "-l", nodeSelector]);
  return new Map(
    nodes.items.map((n) => [n.metadata.name, n.status.daemonEndpoints?.kubeletEndpoint?.Port ?? 0]),
  );
}

export interface KubeletAnswer {
  readonly status: number;
  readonly type: string;
  readonly body: string;
}

/** GET on a kubelet port of 127.0.0.1, as the API server calls it (its client certificate) unless `anonymous`. */
export function kubeletGet(
  port: number,
  urlPath: string,
  o: { readonly anonymous?: boolean } = {},
): Promise<KubeletAnswer> {
  const client = o.anonymous
    ? {}
    : {
        cert: readFileSync(pki("apiserver-kubelet-client.crt"), "utf8"),
        key: readFileSync(pki("apiserver-kubelet-client.key"), "utf8"),
      };
  const ca = readFileSync(pki("ca.crt"), "utf8");
  return new Promise((resolve, reject) => {
    const req = https.request(
      { host: "127.0.0.1", port, path: urlPath, ca, agent: false, ...client },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (d: string) => (body += d));
        res.on("end", () =>
          resolve({ status: res.statusCode ?? 0, type: String(res.headers["content-type"]), body }),
        );
      },
    );
    req.on("error", reject);
    req.end();
  });
}
