/**
 * The kubelet API's serving certificate against the harness control plane, as devicelet's own
 * least-privilege user: a CertificateSigningRequest to the real `kubernetes.io/kubelet-serving`
 * signer (the controller-manager signs with the harness CA), approved by devicelet itself
 * (`approve: true`, the chart's approver role) or by an admin with kubectl, kept in a
 * Secret and reused after a restart; and a certificate from a Secret that someone else updates.
 */
import { execFileSync } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { mkdtempSync, readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { Writable } from "node:stream";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Clock } from "../../src/base/clock.ts";
import { createKubeClient, type KubeClient } from "../../src/kube/index.ts";
import { servingCertificates } from "../../src/kubelet/tls.ts";
import { eventually } from "../support/eventually.ts";
import { getJson, kubectl } from "../support/kubectl.ts";
import { deviceletKubeconfig, testenvDir, uniqueName } from "../support/testenv.ts";

const logger = pino({ level: process.env.DEVICELET_TEST_LOG ?? "silent" });
const caPem = () => readFileSync(path.join(testenvDir, "pki/ca.crt"), "utf8");
const STORE = "devicelet-kubelet-serving"; // the name the ClusterRole lets devicelet update
const namespaces: string[] = [];
const aborts: AbortController[] = [];
let kube: KubeClient;

/** Real time, timers 60 times faster: a 60 s re-read happens in a second. */
const fastClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms / 60),
  clearTimeout: (h) => {
    clearTimeout(h as ReturnType<typeof setTimeout>);
  },
};

async function namespace(prefix: string): Promise<string> {
  const ns = uniqueName(prefix);
  await kubectl(["create", "namespace", ns]);
  namespaces.push(ns);
  return ns;
}

const signal = () => {
  const c = new AbortController();
  aborts.push(c);
  return c.signal;
};

interface CsrList {
  items: { metadata: { name: string }; status?: { conditions?: { type: string; reason?: string }[] } }[];
}
const csrsFor = (ns: string) =>
  getJson<CsrList>(["csr", "-l", `devicelet.dev/serving-secret-namespace=${ns}`]);

beforeAll(() => {
  kube = createKubeClient({ kubeconfigPath: deviceletKubeconfig(), qps: 50, burst: 100, logger });
});

afterAll(async () => {
  for (const c of aborts) c.abort();
  for (const ns of namespaces) {
    await kubectl([
      "delete",
      "csr",
      "-l",
      `devicelet.dev/serving-secret-namespace=${ns}`,
      "--ignore-not-found",
    ]);
    await kubectl(["delete", "namespace", ns, "--wait=false"]);
  }
  await kube.close();
});

describe("csr source", () => {
  let ns: string;
  const options = () =>
    ({
      source: "csr",
      ipAddresses: ["127.0.0.1", "192.0.2.10"],
      dnsNames: ["devicelet.test"],
      approve: true,
      store: { namespace: ns, name: STORE },
      kube,
      logger,
    }) as const;

  it("gets a certificate from the cluster CA naming its addresses, approving its own request", async () => {
    ns = await namespace("kubelet-tls");
    const source = servingCertificates(options());
    await source.start(signal());
    const cert = source.current();
    if (!cert) throw new Error("no certificate after start");

    const leaf = new X509Certificate(cert.cert);
    const ca = new X509Certificate(caPem());
    expect(leaf.checkIssued(ca)).toBe(true);
    expect(leaf.verify(ca.publicKey)).toBe(true);
    expect(leaf.subjectAltName?.split(", ").sort()).toEqual([
      "DNS:devicelet.test",
      "IP Address:127.0.0.1",
      "IP Address:192.0.2.10",
    ]);
    expect(leaf.subject).toMatch(/^O=system:nodes\nCN=system:node:devicelet-/);
    expect(leaf.keyUsage).toContain("1.3.6.1.5.5.7.3.1"); // serverAuth
    expect(cert.notAfter.getTime()).toBeGreaterThan(Date.now());

    const csrs = await csrsFor(ns);
    expect(csrs.items).toHaveLength(1);
    expect(csrs.items[0]?.status?.conditions?.map((c) => [c.type, c.reason])).toContainEqual([
      "Approved",
      "DeviceletSelfApproved",
    ]);
    const secret = await getJson<{ type: string; data: Record<string, string> }>(["secret", "-n", ns, STORE]);
    expect(secret.type).toBe("kubernetes.io/tls");
    expect(Buffer.from(secret.data["tls.crt"] ?? "", "base64").toString()).toBe(cert.cert);
  });

  it("reuses the stored certificate after a restart instead of asking again", async () => {
    const stored = await getJson<{ data: Record<string, string> }>(["secret", "-n", ns, STORE]);
    const restarted = servingCertificates(options());
    await restarted.start(signal());
    expect(restarted.current()?.cert).toBe(Buffer.from(stored.data["tls.crt"] ?? "", "base64").toString());
    expect((await csrsFor(ns)).items).toHaveLength(1);
  });

  it("without approve logs the kubectl line and starts once an admin ran it", async () => {
    const ns2 = await namespace("kubelet-tls-manual");
    const lines: string[] = [];
    const capture = pino(
      { level: "info" },
      new Writable({
        write(chunk: Buffer, _enc, done) {
          lines.push(chunk.toString());
          done();
        },
      }),
    );
    const source = servingCertificates({
      ...options(),
      approve: false,
      store: { namespace: ns2, name: STORE },
      logger: capture,
    });
    let started = false;
    const starting = source.start(signal()).then(() => (started = true));
    const name = await eventually(async () => {
      const [csr] = (await csrsFor(ns2)).items;
      if (!csr) throw new Error("no CSR yet");
      return csr.metadata.name;
    });
    expect(lines.join("")).toContain(`kubectl certificate approve ${name}`);
    expect(started).toBe(false);
    await kubectl(["certificate", "approve", name]);
    await starting;
    const leaf = new X509Certificate(source.current()?.cert ?? "");
    expect(leaf.checkIssued(new X509Certificate(caPem()))).toBe(true);
  });
});

describe("secret source", () => {
  it("serves the Secret's certificate and picks up an update of it", async () => {
    const ns = await namespace("kubelet-tls-secret");
    const dir = mkdtempSync(path.join(os.tmpdir(), "devicelet-tls-secret-"));
    const issue = (cn: string) => {
      const [crt, key] = [path.join(dir, `${cn}.crt`), path.join(dir, `${cn}.key`)];
      execFileSync(
        "openssl",
        [
          "req",
          "-x509",
          "-newkey",
          "ec",
          "-pkeyopt",
          "ec_paramgen_curve:P-256",
          "-nodes",
          "-keyout",
          key,
          "-out",
          crt,
          "-days",
          "1",
          "-subj",
          `/CN=${cn}`,
          "-addext",
          "subjectAltName=IP:127.0.0.1",
        ],
        { stdio: "ignore" },
      );
      return { crt, key, pem: readFileSync(crt, "utf8") };
    };
    const put = async (c: { crt: string; key: string }) => {
      const manifest = await kubectl([
        "create",
        "secret",
        "tls",
        "web-tls",
        "-n",
        ns,
        `--cert=${c.crt}`,
        `--key=${c.key}`,
        "--dry-run=client",
        "-o",
        "yaml",
      ]);
      await kubectl(["apply", "-f", "-"], { input: manifest });
    };
    const one = issue("one");
    await put(one);
    const source = servingCertificates({
      source: "secret",
      namespace: ns,
      name: "web-tls",
      kube,
      logger,
      clock: fastClock,
    });
    await source.start(signal());
    expect(source.current()?.cert).toBe(one.pem);

    const changed: string[] = [];
    source.onChange((c) => changed.push(c.cert));
    const two = issue("two");
    await put(two);
    await eventually(() => expect(source.current()?.cert).toBe(two.pem), { timeoutMs: 20_000 });
    expect(changed).toEqual([two.pem]);
  });
});
