/**
 * The serving-certificate sources with an injected clock: a small in-memory API (Secrets, CSRs and
 * a signer that signs with openssl under a throwaway CA) stands in for the API server; the real
 * signer and approval flow are covered by test/integration/kubelet-tls.test.ts.
 */
import { execFileSync } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import { afterAll, afterEach, describe, expect, it, vi } from "vitest";
import { FakeClock } from "../base/fake-clock.ts";
import type { CertificateSigningRequest, EventInput, KubeClient, Secret } from "../kube/index.ts";
import {
  FILES_POLL_MS,
  SECRET_POLL_MS,
  loadClientCA,
  servingCertificates,
  type ServingCertificate,
} from "./tls.ts";
import { subjectAltNames } from "./x509.ts";

const logger = pino({ level: "silent" });
const dir = mkdtempSync(join(tmpdir(), "devicelet-tls-"));
const file = (name: string) => join(dir, name);
const openssl = (args: string[]) => execFileSync("openssl", args, { stdio: ["ignore", "pipe", "pipe"] });
openssl([
  "req",
  "-x509",
  "-newkey",
  "ec",
  "-pkeyopt",
  "ec_paramgen_curve:P-256",
  "-nodes",
  "-keyout",
  file("ca.key"),
  "-out",
  file("ca.crt"),
  "-days",
  "2",
  "-subj",
  "/CN=tls-test-ca",
]);
const caPem = readFileSync(file("ca.crt"), "utf8");
// `openssl ca` rather than `openssl x509 -req`: it takes start and end dates, so certificates are
// valid from the fake clock's time.
mkdirSync(file("issued"));
writeFileSync(file("index.txt"), "");
writeFileSync(file("serial"), "1000\n");
const caConfig = file("ca.cnf");
writeFileSync(
  caConfig,
  [
    "[ca]",
    "default_ca = test",
    "[test]",
    `database = ${file("index.txt")}`,
    `new_certs_dir = ${file("issued")}`,
    `certificate = ${file("ca.crt")}`,
    `private_key = ${file("ca.key")}`,
    `serial = ${file("serial")}`,
    "default_md = sha256",
    "policy = any",
    "copy_extensions = copy",
    "unique_subject = no",
    "[any]",
    "organizationName = optional",
    "commonName = supplied",
    "",
  ].join("\n"),
);
let serial = 0;

/** A self-signed certificate and key, as a `files` or `secret` source would find them. */
function selfSigned(cn: string): { cert: string; key: string } {
  const stem = file(`self-${++serial}`);
  openssl([
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
    "-keyout",
    `${stem}.key`,
    "-out",
    `${stem}.crt`,
    "-days",
    "1",
    "-subj",
    `/CN=${cn}`,
  ]);
  return { cert: readFileSync(`${stem}.crt`, "utf8"), key: readFileSync(`${stem}.key`, "utf8") };
}

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** Secrets, CSRs and Events in memory; `sign` plays the controller-manager's signer. */
class FakeApi {
  readonly secrets = new Map<string, Secret>();
  readonly csrs = new Map<string, CertificateSigningRequest>();
  readonly events: EventInput[] = [];
  /** What approving does: sign (the default) or deny. */
  onApprove: "sign" | "deny" = "sign";
  /** Lifetime of the certificates `sign` issues. */
  lifetimeMs = 86_400_000;
  #rv = 1;

  readonly clock: FakeClock;

  constructor(clock: FakeClock) {
    this.clock = clock;
  }

  /** Signs with `openssl ca`, valid from the fake clock's now for one day, as a signer would. */
  sign(name: string) {
    const csr = this.csrs.get(name);
    if (!csr?.spec) throw new Error(`no CSR ${name}`);
    const stem = file(`csr-${name}-${++serial}`);
    writeFileSync(`${stem}.csr`, Buffer.from(csr.spec.request, "base64"));
    const at = (ms: number) => new Date(ms).toISOString().replace(/[-:T]|\.\d+/g, "");
    openssl([
      "ca",
      "-batch",
      "-config",
      caConfig,
      "-notext",
      "-in",
      `${stem}.csr`,
      "-out",
      `${stem}.crt`,
      "-startdate",
      at(this.clock.now()),
      "-enddate",
      at(this.clock.now() + this.lifetimeMs),
    ]);
    csr.status = { ...csr.status, certificate: readFileSync(`${stem}.crt`).toString("base64") };
  }

  deny(name: string) {
    const csr = this.csrs.get(name);
    if (csr)
      csr.status = { conditions: [{ type: "Denied", status: "True", reason: "NotOurs", message: "no" }] };
  }

  readonly kube = {
    getSecret: (ns: string, name: string) =>
      Promise.resolve(structuredClone(this.secrets.get(`${ns}/${name}`))),
    createSecret: (s: Secret) => {
      const key = `${s.metadata?.namespace ?? ""}/${s.metadata?.name ?? ""}`;
      if (this.secrets.has(key)) return Promise.reject(new Error("AlreadyExists"));
      this.secrets.set(key, { ...s, metadata: { ...s.metadata, resourceVersion: String(this.#rv++) } });
      return Promise.resolve(s);
    },
    replaceSecret: (s: Secret) => {
      const key = `${s.metadata?.namespace ?? ""}/${s.metadata?.name ?? ""}`;
      this.secrets.set(key, { ...s, metadata: { ...s.metadata, resourceVersion: String(this.#rv++) } });
      return Promise.resolve(s);
    },
    createCertificateSigningRequest: (csr: CertificateSigningRequest) => {
      const name = `${csr.metadata?.generateName ?? ""}${this.csrs.size + 1}`;
      const stored = { ...structuredClone(csr), metadata: { ...csr.metadata, name, uid: `uid-${name}` } };
      this.csrs.set(name, stored);
      return Promise.resolve(structuredClone(stored));
    },
    getCertificateSigningRequest: (name: string) => Promise.resolve(structuredClone(this.csrs.get(name))),
    approveCertificateSigningRequest: (name: string) => {
      if (this.onApprove === "sign") this.sign(name);
      else this.deny(name);
      return Promise.resolve(structuredClone(this.csrs.get(name)));
    },
    createEvent: (e: EventInput) => {
      this.events.push(e);
      return Promise.resolve({});
    },
  } as unknown as KubeClient;

  /** `sources.put("ns", "name", pem)`: a kubernetes.io/tls Secret as cert-manager writes it. */
  putTls(namespace: string, name: string, pem: { cert: string; key: string }) {
    this.secrets.set(`${namespace}/${name}`, {
      metadata: { namespace, name, resourceVersion: String(this.#rv++) },
      type: "kubernetes.io/tls",
      data: {
        "tls.crt": Buffer.from(pem.cert).toString("base64"),
        "tls.key": Buffer.from(pem.key).toString("base64"),
      },
    });
  }
}

const aborts: AbortController[] = [];
const signal = () => {
  const c = new AbortController();
  aborts.push(c);
  return c.signal;
};
afterEach(() => {
  for (const c of aborts.splice(0)) c.abort();
});

const csrOptions = {
  source: "csr",
  ipAddresses: ["192.0.2.10"],
  dnsNames: [],
  approve: true,
  store: { namespace: "state", name: "serving" },
} as const;

describe("csr source", () => {
  it("gets a certificate for its IP addresses, keeps it in the store Secret and rotates at the drawn point of 70–90 % of its lifetime", async () => {
    const clock = new FakeClock(Date.now());
    const api = new FakeApi(clock);
    // random 0.5: the rotation deadline is at 80 % of the lifetime.
    const source = servingCertificates({ ...csrOptions, kube: api.kube, logger, clock, random: () => 0.5 });
    const changes: ServingCertificate[] = [];
    source.onChange((c) => changes.push(c));
    await source.start(signal());
    await clock.settle();

    const first = source.current();
    expect(first).toBeDefined();
    if (!first) return;
    expect(api.csrs.size).toBe(1);
    const [csr] = api.csrs.values();
    expect(csr?.spec).toMatchObject({
      signerName: "kubernetes.io/kubelet-serving",
      usages: ["digital signature", "server auth"],
    });
    expect(new X509Certificate(first.cert).checkIssued(new X509Certificate(caPem))).toBe(true);
    expect(subjectAltNames(first.cert).ipAddresses).toEqual(["c000020a"]);
    expect(Buffer.from(api.secrets.get("state/serving")?.data?.["tls.crt"] ?? "", "base64").toString()).toBe(
      first.cert,
    );

    const lifetime = first.notAfter.getTime() - first.notBefore.getTime();
    await clock.advanceAsync(first.notBefore.getTime() + 0.79 * lifetime - clock.now());
    expect(api.csrs.size).toBe(1);
    await clock.advanceAsync(0.02 * lifetime);
    expect(api.csrs.size).toBe(2);
    const second = source.current();
    expect(second?.cert).not.toBe(first.cert);
    expect(changes.map((c) => c.cert)).toEqual([first.cert, second?.cert]);
    expect(Buffer.from(api.secrets.get("state/serving")?.data?.["tls.crt"] ?? "", "base64").toString()).toBe(
      second?.cert,
    );
  });

  it("waits for a year-long certificate's rotation in steps a timer can hold", async () => {
    const clock = new FakeClock(Date.now());
    const api = new FakeApi(clock);
    api.lifetimeMs = 365 * 86_400_000;
    const delays: number[] = [];
    const setTimeout = clock.setTimeout.bind(clock);
    clock.setTimeout = (fn, ms) => {
      delays.push(ms);
      return setTimeout(fn, ms);
    };
    await servingCertificates({ ...csrOptions, kube: api.kube, logger, clock, random: () => 0.5 }).start(
      signal(),
    );
    await clock.advanceAsync(30 * 86_400_000);
    expect(api.csrs.size).toBe(1);
    expect(Math.max(...delays)).toBeLessThanOrEqual(2 ** 31 - 1);
    await clock.advanceAsync(0.8 * 365 * 86_400_000 - 30 * 86_400_000 + 60_000);
    expect(api.csrs.size).toBe(2);
  });

  it("reuses the stored certificate after a restart and asks again when it names other addresses or expired", async () => {
    const clock = new FakeClock(Date.now());
    const api = new FakeApi(clock);
    await servingCertificates({ ...csrOptions, kube: api.kube, logger, clock }).start(signal());
    await clock.settle();
    const stored = api.secrets.get("state/serving");
    expect(api.csrs.size).toBe(1);

    const again = servingCertificates({ ...csrOptions, kube: api.kube, logger, clock });
    await again.start(signal());
    expect(api.csrs.size).toBe(1);
    expect(again.current()?.cert).toBe(Buffer.from(stored?.data?.["tls.crt"] ?? "", "base64").toString());

    const moved = servingCertificates({
      ...csrOptions,
      ipAddresses: ["192.0.2.11"],
      kube: api.kube,
      logger,
      clock,
    });
    await moved.start(signal());
    expect(api.csrs.size).toBe(2);
    expect(subjectAltNames(moved.current()?.cert ?? "").ipAddresses).toEqual(["c000020b"]);

    await clock.settle();
    const late = new FakeClock(Date.now() + 2 * 86_400_000);
    await servingCertificates({
      ...csrOptions,
      ipAddresses: ["192.0.2.11"],
      kube: api.kube,
      logger,
      clock: late,
    }).start(signal());
    expect(api.csrs.size).toBe(3);
  });

  it("records a denied request as a Warning and asks again after a backoff", async () => {
    const clock = new FakeClock(Date.now());
    const api = new FakeApi(clock);
    api.onApprove = "deny";
    const source = servingCertificates({ ...csrOptions, kube: api.kube, logger, clock, random: () => 0.5 });
    let started = false;
    void source.start(signal()).then(() => (started = true));
    await clock.settle();
    expect(api.csrs.size).toBe(1);
    expect(api.events).toMatchObject([
      {
        type: "Warning",
        reason: "ServingCertificateDenied",
        involvedObject: { kind: "CertificateSigningRequest" },
      },
    ]);
    expect(started).toBe(false);
    api.onApprove = "sign";
    await clock.advanceAsync(4_000);
    expect(api.csrs.size).toBe(1);
    await clock.advanceAsync(1_500);
    expect(api.csrs.size).toBe(2);
    expect(started).toBe(true);
  });

  it("without approve waits for someone else to approve", async () => {
    const clock = new FakeClock(Date.now());
    const api = new FakeApi(clock);
    // A fixed jitter. With Math.random a poll waits up to 1.2 × its 10 s cap, so in about one run
    // in thirty the poll after the fake minute fell past the 10 s advance below, and no poll saw
    // the certificate.
    const source = servingCertificates({
      ...csrOptions,
      approve: false,
      kube: api.kube,
      logger,
      clock,
      random: () => 0.5,
    });
    let started = false;
    void source.start(signal()).then(() => (started = true));
    // The request is in before the clock moves, so the fake minute is spent polling for it.
    await vi.waitFor(() => expect(api.csrs.size).toBe(1), { timeout: 10_000 });
    await clock.advanceAsync(60_000);
    expect([api.csrs.size, started]).toEqual([1, false]);
    const [name = ""] = api.csrs.keys();
    api.sign(name);
    await clock.advanceAsync(10_000);
    await vi.waitFor(() => expect(started).toBe(true), { timeout: 10_000 });
    expect(source.current()).toBeDefined();
  });
});

describe("files source", () => {
  it("loads the files and picks up new ones when their modification time changes", async () => {
    const clock = new FakeClock();
    const one = selfSigned("one");
    writeFileSync(file("tls.crt"), one.cert);
    writeFileSync(file("tls.key"), one.key);
    const source = servingCertificates({
      source: "files",
      certFile: file("tls.crt"),
      keyFile: file("tls.key"),
      kube: {} as KubeClient,
      logger,
      clock,
    });
    const changes: string[] = [];
    source.onChange((c) => changes.push(c.cert));
    await source.start(signal());
    expect(source.current()?.cert).toBe(one.cert);

    const two = selfSigned("two");
    writeFileSync(file("tls.crt"), two.cert);
    writeFileSync(file("tls.key"), "not a key");
    await clock.advanceAsync(FILES_POLL_MS);
    expect(source.current()?.cert).toBe(one.cert); // a half-written pair is not taken
    writeFileSync(file("tls.key"), two.key);
    await clock.advanceAsync(FILES_POLL_MS);
    expect(source.current()?.cert).toBe(two.cert);
    expect(changes).toEqual([one.cert, two.cert]);
  });

  it("refuses a key that does not belong to the certificate", async () => {
    writeFileSync(file("a.crt"), selfSigned("a").cert);
    writeFileSync(file("a.key"), selfSigned("b").key);
    const source = servingCertificates({
      source: "files",
      certFile: file("a.crt"),
      keyFile: file("a.key"),
      kube: {} as KubeClient,
      logger,
    });
    await expect(source.start(signal())).rejects.toThrow(/does not match/);
  });
});

describe("secret source", () => {
  it("waits for a missing Secret, then follows its updates", async () => {
    const clock = new FakeClock(Date.now());
    const api = new FakeApi(clock);
    const source = servingCertificates({
      source: "secret",
      namespace: "ns",
      name: "web-tls",
      kube: api.kube,
      logger,
      clock,
      random: () => 0.5,
    });
    let started = false;
    void source.start(signal()).then(() => (started = true));
    await clock.advanceAsync(10_000);
    expect(started).toBe(false);
    const one = selfSigned("one");
    api.putTls("ns", "web-tls", one);
    await clock.advanceAsync(SECRET_POLL_MS);
    expect(started).toBe(true);
    expect(source.current()?.cert).toBe(one.cert);

    const two = selfSigned("two");
    api.putTls("ns", "web-tls", two);
    await clock.advanceAsync(SECRET_POLL_MS);
    expect(source.current()?.cert).toBe(two.cert);
  });
});

describe("loadClientCA", () => {
  const kubeconfig = (cluster: string) => {
    const f = file(`kubeconfig-${++serial}`);
    writeFileSync(
      f,
      [
        "apiVersion: v1",
        "kind: Config",
        "clusters:",
        "- name: c",
        "  cluster:",
        "    server: https://192.0.2.1:6443",
        `    ${cluster}`,
        "users: [{ name: u, user: { token: t } }]",
        "contexts: [{ name: x, context: { cluster: c, user: u } }]",
        "current-context: x",
        "",
      ].join("\n"),
    );
    return f;
  };

  it("takes the file given, else the kubeconfig cluster's CA (inline or a file)", () => {
    expect(loadClientCA({ file: file("ca.crt") })).toBe(caPem);
    const inline = kubeconfig(`certificate-authority-data: ${Buffer.from(caPem).toString("base64")}`);
    expect(loadClientCA({ kubeconfigPath: inline })).toBe(caPem);
    expect(loadClientCA({ kubeconfigPath: kubeconfig(`certificate-authority: ${file("ca.crt")}`) })).toBe(
      caPem,
    );
  });

  it("refuses a kubeconfig that names no CA, rather than trust any client certificate", () => {
    expect(() => loadClientCA({ kubeconfigPath: kubeconfig("insecure-skip-tls-verify: true") })).toThrow(
      /clientCAFile/,
    );
  });
});
