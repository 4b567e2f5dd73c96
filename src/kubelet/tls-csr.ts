/**
 * The `csr` serving-certificate source: a certificate from the cluster's own CA through the
 * `kubernetes.io/kubelet-serving` signer, as a kubelet with `serverTLSBootstrap: true` gets one
 * (docs/kubelet-api.md, "Serving certificate").
 *
 * - A fresh ECDSA P-256 key and a PKCS#10 request (`csr.ts`) with `O=system:nodes`,
 *   `CN=system:node:<name>` and the wanted IP and DNS names go into a CertificateSigningRequest.
 * - Someone approves it: a human (`kubectl certificate approve <name>`, logged), an approver
 *   controller, or devicelet itself with `approve: true` (needs the approver RBAC).
 * - The controller-manager signs it; the certificate and key are kept in the `store` Secret, so a
 *   restart reuses them instead of asking a human again.
 * - Rotation as the kubelet's certificate manager does it: at a random point between 70 % and 90 %
 *   of the lifetime a new request is made; the old certificate keeps serving until the new one is
 *   issued. A denied or failed request is logged, recorded as a Warning Event on the CSR, and
 *   retried with backoff.
 */
import { generateKeyPairSync } from "node:crypto";
import { hostname } from "node:os";
import type { Logger } from "pino";
import { retryDelay } from "../base/backoff.ts";
import { sleepOn, type Clock } from "../base/clock.ts";
import {
  isAlreadyExists,
  isConflict,
  type CertificateSigningRequest,
  type KubeClient,
  type Secret,
} from "../kube/index.ts";
import { certificateRequest } from "./csr.ts";
import {
  CertificateHolder,
  parseServingCertificate,
  rotationDeadline,
  sansMatch,
  stopped,
  whenAborted,
  type ServingCertificate,
  type ServingCertificateSource,
} from "./x509.ts";

export const KUBELET_SERVING_SIGNER = "kubernetes.io/kubelet-serving";
/**
 * Labels on our CSRs naming the Secret their certificate goes to (`kubectl get csr -l`): this one
 * the name, this one with `-namespace` its namespace.
 */
export const SERVING_SECRET_LABEL = "devicelet.dev/serving-secret";
const DAY_MS = 86_400_000;
/** The least time between two requests when a new certificate is due at once. */
const MIN_ROTATION_GAP_MS = 60_000;
/** How often the approve line is logged again while a CSR waits for a human. */
const REMIND_MS = 10 * 60_000;

export interface CsrSourceOptions {
  readonly kube: KubeClient;
  readonly logger: Logger;
  readonly clock: Clock;
  readonly random?: () => number;
  readonly ipAddresses: readonly string[];
  readonly dnsNames: readonly string[];
  readonly approve: boolean;
  /** Asked lifetime; the signer may cut it (minimum 600). Default: the signer's own. */
  readonly expirationSeconds?: number;
  readonly store: { readonly namespace: string; readonly name: string };
  /**
   * The name after `system:node:` in the subject. Default `devicelet-<$DEVICELET_POD_NAME or host
   * name>`: one certificate serves every device node of this process.
   */
  readonly commonName?: string;
}

export function csrCertificates(o: CsrSourceOptions): ServingCertificateSource {
  return new CsrCertificates(o);
}

class CsrCertificates implements ServingCertificateSource {
  readonly #holder = new CertificateHolder();
  readonly #o: CsrSourceOptions;
  readonly #log: Logger;
  readonly #random: () => number;

  constructor(o: CsrSourceOptions) {
    if (o.ipAddresses.length + o.dnsNames.length === 0)
      throw new Error("a kubelet serving certificate needs at least one IP address or DNS name");
    this.#o = o;
    this.#random = o.random ?? Math.random;
    this.#log = o.logger.child({ tls: "csr", secret: `${o.store.namespace}/${o.store.name}` });
  }

  current = () => this.#holder.current();
  onChange = (listener: (cert: ServingCertificate) => void) => this.#holder.onChange(listener);

  async start(signal: AbortSignal): Promise<void> {
    const stored = await this.#loadStored(signal);
    if (stored) this.#holder.set(stored);
    void this.#rotate(signal);
    await Promise.race([this.#holder.first, whenAborted(signal)]);
  }

  /** Forever: wait for the current certificate's rotation deadline (none: now), then get a new one. */
  async #rotate(signal: AbortSignal) {
    let fresh = false;
    while (!signal.aborted) {
      const current = this.#holder.current();
      if (current) {
        const deadline = rotationDeadline(current, this.#random);
        let wait = deadline - this.#o.clock.now();
        // A certificate due the moment it is issued (a skewed clock, a signer that cuts the
        // lifetime to minutes) must not turn into a loop of requests.
        if (fresh && wait < MIN_ROTATION_GAP_MS) {
          this.#log.warn(
            { notBefore: current.notBefore, notAfter: current.notAfter },
            "new serving certificate is already due for rotation; check the clock and the signer's duration",
          );
          wait = MIN_ROTATION_GAP_MS;
        }
        this.#log.info(
          { notAfter: current.notAfter, rotateAt: new Date(deadline) },
          "serving certificate rotation scheduled",
        );
        // Timers hold at most 2^31 - 1 ms (about 24.8 days, a longer one fires at once): a
        // year-long certificate is waited for in steps of a day.
        for (let end = this.#o.clock.now() + wait; !stopped(signal) && this.#o.clock.now() < end;)
          await sleepOn(this.#o.clock, Math.min(end - this.#o.clock.now(), DAY_MS), signal);
        if (stopped(signal)) return;
      }
      const issued = await this.#obtain(signal);
      if (!issued) return;
      this.#holder.set(issued);
      fresh = true;
      this.#log.info({ notAfter: issued.notAfter }, "serving certificate issued");
      await this.#store(issued, signal);
    }
  }

  /** The stored certificate when it is still usable: key matches, same names, not expired. */
  async #loadStored(signal: AbortSignal): Promise<ServingCertificate | undefined> {
    const { namespace, name } = this.#o.store;
    let secret: Secret | undefined;
    try {
      secret = await this.#o.kube.getSecret(namespace, name, { signal });
    } catch (err) {
      this.#log.warn({ err }, "cannot read the stored serving certificate; asking for a new one");
      return undefined;
    }
    const crt = secret?.data?.["tls.crt"];
    const key = secret?.data?.["tls.key"];
    if (!crt || !key) return undefined;
    try {
      const cert = parseServingCertificate(
        Buffer.from(crt, "base64").toString("utf8"),
        Buffer.from(key, "base64").toString("utf8"),
      );
      if (!sansMatch(cert.cert, this.#o)) {
        this.#log.info("stored serving certificate names other addresses; asking for a new one");
        return undefined;
      }
      if (cert.notAfter.getTime() <= this.#o.clock.now()) {
        this.#log.info(
          { notAfter: cert.notAfter },
          "stored serving certificate expired; asking for a new one",
        );
        return undefined;
      }
      this.#log.info({ notAfter: cert.notAfter }, "reusing the stored serving certificate");
      return cert;
    } catch (err) {
      this.#log.warn({ err }, "stored serving certificate unusable; asking for a new one");
      return undefined;
    }
  }

  /** A new certificate, retrying denied, failed and lost requests with backoff; undefined once aborted. */
  async #obtain(signal: AbortSignal): Promise<ServingCertificate | undefined> {
    for (let failures = 1; !signal.aborted; failures++) {
      try {
        return await this.#request(signal);
      } catch (err) {
        if (stopped(signal)) return undefined;
        const wait = retryDelay({ failures, baseMs: 5_000, maxMs: 300_000, random: this.#random });
        this.#log.error(
          { err, retryInMs: Math.round(wait) },
          "no serving certificate yet; asking again later",
        );
        await sleepOn(this.#o.clock, wait, signal);
      }
    }
    return undefined;
  }

  async #request(signal: AbortSignal): Promise<ServingCertificate | undefined> {
    const { kube } = this.#o;
    const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const commonName = `system:node:${this.#o.commonName ?? defaultName()}`;
    const pem = certificateRequest({
      key: privateKey,
      commonName,
      organization: ["system:nodes"],
      dnsNames: this.#o.dnsNames,
      ipAddresses: this.#o.ipAddresses,
    });
    const created = await kube.createCertificateSigningRequest(
      {
        metadata: {
          generateName: "devicelet-serving-",
          labels: {
            "app.kubernetes.io/managed-by": "devicelet",
            ...labelIfValid(SERVING_SECRET_LABEL, this.#o.store.name),
            ...labelIfValid(`${SERVING_SECRET_LABEL}-namespace`, this.#o.store.namespace),
          },
        },
        spec: {
          request: Buffer.from(pem).toString("base64"),
          signerName: KUBELET_SERVING_SIGNER,
          // What the kubelet asks for with an ECDSA key; key encipherment is for RSA only.
          usages: ["digital signature", "server auth"],
          ...(this.#o.expirationSeconds ? { expirationSeconds: this.#o.expirationSeconds } : {}),
        },
      },
      { signal },
    );
    const name = created.metadata?.name ?? "";
    const log = this.#log.child({ csr: name });
    const approveLine = `kubectl certificate approve ${name}`;
    if (this.#o.approve) {
      log.info(
        { commonName, ipAddresses: this.#o.ipAddresses, dnsNames: this.#o.dnsNames },
        "serving certificate requested; approving it (csrApprove)",
      );
      try {
        await kube.approveCertificateSigningRequest(
          name,
          {
            reason: "DeviceletSelfApproved",
            message: "approved by devicelet for its own kubelet API (csrApprove)",
          },
          { signal },
        );
      } catch (err) {
        if (signal.aborted) return undefined;
        log.error(
          { err },
          `cannot approve our own CSR (csrApprove needs the chart's kubeletApi.tls.csr.approve grant); approve it by hand: ${approveLine}`,
        );
      }
    } else {
      log.warn(
        { commonName, ipAddresses: this.#o.ipAddresses, dnsNames: this.#o.dnsNames },
        `serving certificate requested; the kubelet API starts once it is approved: ${approveLine}`,
      );
    }

    let lastReminder = this.#o.clock.now();
    for (let polls = 1; !signal.aborted; polls++) {
      const csr = await kube.getCertificateSigningRequest(name, { signal });
      if (!csr) throw new Error(`CertificateSigningRequest ${name} vanished before it was issued`);
      const refused = csr.status?.conditions?.find(
        (c) => (c.type === "Denied" || c.type === "Failed") && c.status === "True",
      );
      if (refused) {
        const message =
          `CertificateSigningRequest ${name} ${refused.type.toLowerCase()}: ${refused.reason ?? ""} ${refused.message ?? ""}`.trim();
        await this.#warn(csr, `ServingCertificate${refused.type}`, message, signal);
        throw new Error(message);
      }
      const issued = csr.status?.certificate;
      if (issued) {
        const certPem = Buffer.from(issued, "base64").toString("utf8");
        const keyPem = privateKey.export({ type: "pkcs8", format: "pem" }).toString();
        return parseServingCertificate(certPem, keyPem);
      }
      if (this.#o.clock.now() - lastReminder >= REMIND_MS) {
        lastReminder = this.#o.clock.now();
        log.warn(`serving certificate still waits for approval: ${approveLine}`);
      }
      await sleepOn(
        this.#o.clock,
        retryDelay({ failures: polls, baseMs: 500, maxMs: 10_000, random: this.#random }),
        signal,
      );
    }
    return undefined;
  }

  async #warn(csr: CertificateSigningRequest, reason: string, message: string, signal: AbortSignal) {
    try {
      await this.#o.kube.createEvent(
        {
          involvedObject: {
            apiVersion: "certificates.k8s.io/v1",
            kind: "CertificateSigningRequest",
            name: csr.metadata?.name ?? "",
            uid: csr.metadata?.uid ?? "",
          },
          type: "Warning",
          reason,
          message,
        },
        { signal },
      );
    } catch (err) {
      this.#log.debug({ err }, "cannot record the Warning Event");
    }
  }

  /** Keeps the certificate and key in the store Secret (create, else replace); failures only cost a new CSR at restart. */
  async #store(cert: ServingCertificate, signal: AbortSignal) {
    const { namespace, name } = this.#o.store;
    const data = {
      "tls.crt": Buffer.from(cert.cert).toString("base64"),
      "tls.key": Buffer.from(cert.key).toString("base64"),
    };
    const body: Secret = {
      metadata: { name, namespace, labels: { "app.kubernetes.io/managed-by": "devicelet" } },
      type: "kubernetes.io/tls",
      data,
    };
    for (let attempt = 0; attempt < 3 && !signal.aborted; attempt++) {
      try {
        const existing = await this.#o.kube.getSecret(namespace, name, { signal });
        if (existing?.metadata?.resourceVersion) {
          await this.#o.kube.replaceSecret(
            // A Secret's type cannot change; one made by hand keeps its own.
            { ...existing, type: existing.type ?? "kubernetes.io/tls", data },
            { signal },
          );
        } else {
          await this.#o.kube.createSecret(body, { signal });
        }
        return;
      } catch (err) {
        if (isConflict(err) || isAlreadyExists(err)) continue;
        if (!stopped(signal))
          this.#log.warn(
            { err },
            "cannot keep the serving certificate in its Secret; a restart will request a new one",
          );
        return;
      }
    }
  }
}

function defaultName(): string {
  const base = process.env.DEVICELET_POD_NAME || hostname();
  return `devicelet-${base.toLowerCase()}`;
}

/** `{ key: value }` when `value` is a valid label value (a Secret name may be longer than one can be). */
function labelIfValid(key: string, value: string): Record<string, string> {
  return /^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$/.test(value) ? { [key]: value } : {};
}
