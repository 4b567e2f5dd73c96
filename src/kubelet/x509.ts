/**
 * What every serving-certificate source (`tls.ts`, `tls-csr.ts`) shares: the types, reading a
 * PEM certificate chain and key with node:crypto's `X509Certificate`, comparing subject alternative
 * names, the kubelet's rotation deadline, {@link CertificateHolder} (the current certificate
 * and its change listeners) and two abort-signal helpers of their loops.
 */
import { X509Certificate, createPrivateKey } from "node:crypto";
import { ipAddressBytes } from "./csr.ts";

/** A serving certificate as the https server takes it. Immutable; a rotation makes a new one. */
export interface ServingCertificate {
  /** PEM chain: the leaf first, then any intermediates. */
  readonly cert: string;
  /** PEM private key of the leaf. */
  readonly key: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
}

export interface ServingCertificateSource {
  /** Obtains the first certificate and keeps it fresh (rotation) until `signal` aborts. Resolves once a first one is available. */
  start(signal: AbortSignal): Promise<void>;
  current(): ServingCertificate | undefined;
  onChange(listener: (cert: ServingCertificate) => void): void;
}

/**
 * Parses and checks a certificate chain and its key: at least one certificate, a key that parses
 * and belongs to the first (leaf) certificate. Throws with a message naming what is wrong.
 */
export function parseServingCertificate(cert: string, key: string): ServingCertificate {
  const chain = splitPemCertificates(cert);
  const leafPem = chain[0];
  if (!leafPem) throw new Error("no PEM certificate found");
  const leaf = new X509Certificate(leafPem);
  const privateKey = createPrivateKey(key);
  if (!leaf.checkPrivateKey(privateKey)) throw new Error("the private key does not match the certificate");
  return { cert, key, notBefore: new Date(leaf.validFrom), notAfter: new Date(leaf.validTo) };
}

/** Each `-----BEGIN CERTIFICATE-----` block of a PEM bundle, in order. */
export function splitPemCertificates(pem: string): string[] {
  return pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
}

/** The DNS names and IP addresses (canonical text) of a certificate's subjectAltName. */
export function subjectAltNames(certPem: string): { dnsNames: string[]; ipAddresses: string[] } {
  const leaf = new X509Certificate(splitPemCertificates(certPem)[0] ?? certPem);
  const dnsNames: string[] = [];
  const ipAddresses: string[] = [];
  // Node.js lists them as `DNS:a, IP Address:1.2.3.4`, quoting (JSON style) a value with a comma.
  for (const entry of leaf.subjectAltName?.match(/(?:[^,"]|"(?:[^"\\]|\\.)*")+/g) ?? []) {
    const [kind = "", ...rest] = entry.trim().split(":");
    let value = rest.join(":");
    if (value.startsWith('"')) value = JSON.parse(value) as string;
    if (kind === "DNS") dnsNames.push(value);
    else if (kind === "IP Address") ipAddresses.push(canonicalIp(value));
  }
  return { dnsNames, ipAddresses };
}

/** One spelling per address (`2001:DB8:0:0:0:0:0:1` and `2001:db8::1` compare equal). */
export function canonicalIp(ip: string): string {
  try {
    return ipAddressBytes(ip).toString("hex");
  } catch {
    return ip;
  }
}

/** Whether a certificate names exactly these DNS names and IP addresses (order and case of IPs aside). */
export function sansMatch(
  certPem: string,
  wanted: { readonly dnsNames: readonly string[]; readonly ipAddresses: readonly string[] },
): boolean {
  const have = subjectAltNames(certPem);
  const same = (a: readonly string[], b: readonly string[]) => {
    const x = new Set(a);
    const y = new Set(b);
    return x.size === y.size && [...x].every((v) => y.has(v));
  };
  return same(have.dnsNames, wanted.dnsNames) && same(have.ipAddresses, wanted.ipAddresses.map(canonicalIp));
}

/**
 * When to ask for the next certificate, as the kubelet's certificate manager does: at a random
 * point between 70 % and 90 % of the certificate's lifetime, so a fleet does not renew at once and
 * a failed renewal still has time to be retried before expiry. `random` in [0, 1).
 */
export function rotationDeadline(cert: ServingCertificate, random: () => number = Math.random): number {
  const start = cert.notBefore.getTime();
  const lifetime = cert.notAfter.getTime() - start;
  return start + lifetime * (0.7 + 0.2 * random());
}

/** The current certificate of a source and the listeners told when it changes. */
export class CertificateHolder {
  #current: ServingCertificate | undefined;
  readonly #listeners: ((cert: ServingCertificate) => void)[] = [];
  #firstResolve: (() => void) | undefined;
  /** Resolves when the first certificate is set. */
  readonly first: Promise<void>;

  constructor() {
    this.first = new Promise<void>((resolve) => (this.#firstResolve = resolve));
  }

  current(): ServingCertificate | undefined {
    return this.#current;
  }

  onChange(listener: (cert: ServingCertificate) => void): void {
    this.#listeners.push(listener);
  }

  /** Takes `cert` and tells the listeners, unless its content is the current one's. True when it was new. */
  set(cert: ServingCertificate): boolean {
    const previous = this.#current;
    if (previous?.cert === cert.cert && previous.key === cert.key) return false;
    this.#current = cert;
    this.#firstResolve?.();
    for (const listener of this.#listeners) listener(cert);
    return true;
  }
}

/** `signal.aborted`, read through a call so the type checker does not keep it narrowed across awaits. */
export function stopped(signal: AbortSignal): boolean {
  return signal.aborted;
}

/** Resolves once `signal` aborts (at once when it already has). */
export function whenAborted(signal: AbortSignal): Promise<void> {
  return new Promise<void>((resolve) => {
    if (signal.aborted) resolve();
    else signal.addEventListener("abort", () => resolve(), { once: true });
  });
}
