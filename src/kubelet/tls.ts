/**
 * The kubelet API's serving certificate (docs/kubelet-api.md, "Serving certificate"), from one of
 * three sources, each kept fresh until its signal aborts:
 * - `files`: a PEM chain and key on disk (a mounted Secret, a file cert-manager's csi driver
 *   writes), re-read when their modification time changes;
 * - `secret`: a `kubernetes.io/tls` Secret (e.g. issued by cert-manager), re-read every minute;
 * - `csr`: a CertificateSigningRequest to the `kubernetes.io/kubelet-serving` signer, rotated at
 *   70–90 % of its lifetime like the kubelet's (`tls-csr.ts`).
 *
 *   const source = servingCertificates({ source: "secret", namespace, name, kube, logger });
 *   await source.start(signal);                       // the first certificate is there
 *   const server = https.createServer({ ...source.current(), requestCert: true, rejectUnauthorized: false, ca: loadClientCA({}) });
 *   source.onChange((c) => server.setSecureContext({ cert: c.cert, key: c.key, ca }));
 *
 * A source never hands out a certificate whose key does not match it; a bad update is logged and
 * the previous certificate kept.
 */
import { existsSync, readFileSync, statSync } from "node:fs";
import type { Logger } from "pino";
import { retryDelay } from "../base/backoff.ts";
import { sleepOn, systemClock, type Clock } from "../base/clock.ts";
import { kubeconfigClusterCA, type KubeClient } from "../kube/index.ts";
import { csrCertificates } from "./tls-csr.ts";
import {
  CertificateHolder,
  parseServingCertificate,
  stopped,
  whenAborted,
  type ServingCertificate,
  type ServingCertificateSource,
} from "./x509.ts";

export type { ServingCertificate, ServingCertificateSource } from "./x509.ts";

export type ServingCertificateOptions =
  | { readonly source: "files"; readonly certFile: string; readonly keyFile: string }
  | { readonly source: "secret"; readonly namespace: string; readonly name: string }
  | {
      readonly source: "csr";
      readonly ipAddresses: readonly string[];
      readonly dnsNames: readonly string[];
      readonly approve: boolean;
      readonly expirationSeconds?: number;
      /** Secret where the issued certificate and key are kept across restarts. */
      readonly store: { readonly namespace: string; readonly name: string };
    };

interface Common {
  readonly kube: KubeClient;
  readonly logger: Logger;
  readonly clock?: Clock;
  /** Jitter source in [0, 1) (rotation deadline, backoff); default `Math.random`. Tests pin it. */
  readonly random?: () => number;
}

/** How often a `files` source looks at the files' modification times. */
export const FILES_POLL_MS = 30_000;
/** How often a `secret` source re-reads its Secret. */
export const SECRET_POLL_MS = 60_000;

export function servingCertificates(o: ServingCertificateOptions & Common): ServingCertificateSource {
  const clock = o.clock ?? systemClock;
  switch (o.source) {
    case "files":
      return new FileCertificates(o.certFile, o.keyFile, o.logger.child({ tls: "files" }), clock);
    case "secret":
      return new SecretCertificates(o, clock);
    case "csr":
      return csrCertificates({ ...o, clock });
  }
}

/** The in-cluster service account's CA bundle: what the API server's serving and client certificates chain to. */
const SERVICE_ACCOUNT_CA = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

/**
 * PEM of the CA that client certificates must chain to: the file given, else the in-cluster
 * service-account ca.crt (unless a kubeconfig is named: then its cluster is the one that calls),
 * else the kubeconfig cluster's CA. Throws when there is none.
 */
export function loadClientCA(o: { file?: string; kubeconfigPath?: string }): string {
  if (o.file) return readFileSync(o.file, "utf8");
  if (!o.kubeconfigPath && existsSync(SERVICE_ACCOUNT_CA)) return readFileSync(SERVICE_ACCOUNT_CA, "utf8");
  const ca = kubeconfigClusterCA(o.kubeconfigPath);
  if (!ca)
    throw new Error(
      "no client CA for the kubelet API: set kubelet.clientCAFile (the kubeconfig names no certificate-authority)",
    );
  return ca;
}

/** PEM files on disk, polled for a changed modification time (or size) every {@link FILES_POLL_MS}. */
class FileCertificates implements ServingCertificateSource {
  readonly #holder = new CertificateHolder();
  readonly #certFile: string;
  readonly #keyFile: string;
  readonly #log: Logger;
  readonly #clock: Clock;
  #stamp = "";

  constructor(certFile: string, keyFile: string, log: Logger, clock: Clock) {
    this.#certFile = certFile;
    this.#keyFile = keyFile;
    this.#log = log;
    this.#clock = clock;
  }

  current = () => this.#holder.current();
  onChange = (listener: (cert: ServingCertificate) => void) => this.#holder.onChange(listener);

  start(signal: AbortSignal): Promise<void> {
    try {
      // The first read must succeed: a missing or broken file at start is a configuration error.
      this.#read(true);
    } catch (err) {
      return Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
    void this.#poll(signal);
    return Promise.resolve();
  }

  async #poll(signal: AbortSignal) {
    while (!signal.aborted) {
      await sleepOn(this.#clock, FILES_POLL_MS, signal);
      if (stopped(signal)) return;
      try {
        this.#read(false);
      } catch (err) {
        this.#log.error(
          { err, certFile: this.#certFile },
          "serving certificate files unreadable; keeping the current one",
        );
      }
    }
  }

  #read(first: boolean) {
    const stamp = [this.#certFile, this.#keyFile]
      .map((f) => {
        const s = statSync(f);
        return `${s.mtimeMs}:${s.size}`;
      })
      .join("/");
    if (!first && stamp === this.#stamp) return;
    const cert = parseServingCertificate(
      readFileSync(this.#certFile, "utf8"),
      readFileSync(this.#keyFile, "utf8"),
    );
    this.#stamp = stamp;
    if (this.#holder.set(cert))
      this.#log.info({ certFile: this.#certFile, notAfter: cert.notAfter }, "serving certificate loaded");
  }
}

interface SecretSourceOptions extends Common {
  readonly namespace: string;
  readonly name: string;
}

/**
 * A `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`), read with `get` on that one name. Re-read
 * every {@link SECRET_POLL_MS}, sooner when the certificate expires before then; a Secret that is
 * missing or broken is retried with backoff (start waits for the first good one).
 */
class SecretCertificates implements ServingCertificateSource {
  readonly #holder = new CertificateHolder();
  readonly #log: Logger;
  readonly #o: SecretSourceOptions;
  readonly #clock: Clock;

  constructor(o: SecretSourceOptions, clock: Clock) {
    this.#o = o;
    this.#clock = clock;
    this.#log = o.logger.child({ tls: "secret", secret: `${o.namespace}/${o.name}` });
  }

  current = () => this.#holder.current();
  onChange = (listener: (cert: ServingCertificate) => void) => this.#holder.onChange(listener);

  async start(signal: AbortSignal): Promise<void> {
    void this.#loop(signal);
    await Promise.race([this.#holder.first, whenAborted(signal)]);
  }

  async #loop(signal: AbortSignal) {
    let failures = 0;
    while (!signal.aborted) {
      let wait = SECRET_POLL_MS;
      try {
        const cert = await this.#read(signal);
        failures = 0;
        if (this.#holder.set(cert))
          this.#log.info({ notAfter: cert.notAfter }, "serving certificate loaded from Secret");
        // Expired or about to: look again sooner, cert-manager renews in place.
        const left = cert.notAfter.getTime() - this.#clock.now();
        if (left < SECRET_POLL_MS) wait = Math.max(5_000, left / 2);
      } catch (err) {
        if (stopped(signal)) return;
        failures++;
        wait = retryDelay({
          failures,
          baseMs: 2_000,
          maxMs: SECRET_POLL_MS,
          ...(this.#o.random ? { random: this.#o.random } : {}),
        });
        const level = this.#holder.current() ? "warn" : "error";
        this.#log[level](
          { err, retryInMs: Math.round(wait) },
          this.#holder.current()
            ? "cannot re-read the serving certificate Secret; keeping the current certificate"
            : "cannot read the serving certificate Secret; the kubelet API waits for it",
        );
      }
      await sleepOn(this.#clock, wait, signal);
    }
  }

  async #read(signal: AbortSignal): Promise<ServingCertificate> {
    const secret = await this.#o.kube.getSecret(this.#o.namespace, this.#o.name, { signal });
    if (!secret) throw new Error(`Secret ${this.#o.namespace}/${this.#o.name} not found`);
    const crt = secret.data?.["tls.crt"];
    const key = secret.data?.["tls.key"];
    if (!crt || !key)
      throw new Error(`Secret ${this.#o.namespace}/${this.#o.name} has no tls.crt and tls.key`);
    return parseServingCertificate(
      Buffer.from(crt, "base64").toString("utf8"),
      Buffer.from(key, "base64").toString("utf8"),
    );
  }
}
