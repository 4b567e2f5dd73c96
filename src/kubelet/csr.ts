/**
 * PKCS#10 certificate signing requests (RFC 2986) for the kubelet API's serving certificate, built
 * by hand in DER (`der.ts`) because Node.js can sign but not write a CSR. The request is shaped so
 * the `kubernetes.io/kubelet-serving` signer accepts it (docs/kubelet-api.md, "Serving
 * certificate"): subject `O=system:nodes, CN=system:node:<name>`, the DNS and IP subject alternative
 * names in an extensionRequest attribute, and an ECDSA P-256 / SHA-256 self-signature.
 *
 *   const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
 *   const pem = certificateRequest({ key: privateKey, commonName: "system:node:devicelet-a",
 *     organization: ["system:nodes"], dnsNames: [], ipAddresses: ["192.0.2.10"] });
 */
import { createPublicKey, sign, type KeyObject } from "node:crypto";
import { isIPv4, isIPv6 } from "node:net";
import { bitString, contextTag, integer, octetString, oid, sequence, set, utf8String } from "./der.ts";

const OID = {
  commonName: "2.5.4.3",
  organization: "2.5.4.10",
  extensionRequest: "1.2.840.113549.1.9.14",
  subjectAltName: "2.5.29.17",
  ecdsaWithSha256: "1.2.840.10045.4.3.2",
} as const;

export interface CertificateRequestOptions {
  /** An EC P-256 private key; the request carries its public half and is signed with it. */
  readonly key: KeyObject;
  readonly commonName: string;
  readonly organization: readonly string[];
  readonly dnsNames: readonly string[];
  readonly ipAddresses: readonly string[];
}

/** The CSR as PEM (`-----BEGIN CERTIFICATE REQUEST-----`). Throws on a bad IP address or key type. */
export function certificateRequest(o: CertificateRequestOptions): string {
  if (o.key.asymmetricKeyType !== "ec") throw new TypeError("the CSR key must be an EC key");
  // Name ::= SEQUENCE OF RelativeDistinguishedName, one attribute per RDN, O before CN as Go's
  // pkix.Name writes it (the kubelet's own requests look the same).
  const rdn = (type: string, value: string) => set(sequence(oid(type), utf8String(value)));
  const subject = sequence(
    ...o.organization.map((org) => rdn(OID.organization, org)),
    rdn(OID.commonName, o.commonName),
  );
  const spki = createPublicKey(o.key).export({ type: "spki", format: "der" });
  // GeneralName: dNSName [2] IA5String, iPAddress [7] OCTET STRING (RFC 5280 §4.2.1.6), IMPLICIT.
  const names = [
    ...o.dnsNames.map((dns) => contextTag(2, Buffer.from(dns, "ascii"), false)),
    ...o.ipAddresses.map((ip) => contextTag(7, ipAddressBytes(ip), false)),
  ];
  const extensions = sequence(sequence(oid(OID.subjectAltName), octetString(sequence(...names))));
  // attributes [0] IMPLICIT SET OF Attribute; extensionRequest's value is a SET of Extensions (RFC 2985 §5.4.2).
  const attributes = contextTag(0, sequence(oid(OID.extensionRequest), set(extensions)), true);
  const info = sequence(integer(0), subject, spki, attributes);
  // ECDSA signatures in DER (Ecdsa-Sig-Value), which is node:crypto's default encoding for EC keys.
  const signature = sign("sha256", info, o.key);
  const der = sequence(info, sequence(oid(OID.ecdsaWithSha256)), bitString(signature));
  const body = der.toString("base64").replace(/.{1,64}/g, "$&\n");
  return `-----BEGIN CERTIFICATE REQUEST-----\n${body}-----END CERTIFICATE REQUEST-----\n`;
}

/** An IPv4 (4 bytes) or IPv6 (16 bytes) address in network order, as an iPAddress SAN holds it. */
export function ipAddressBytes(ip: string): Buffer {
  if (isIPv4(ip)) return Buffer.from(ip.split(".").map(Number));
  if (!isIPv6(ip)) throw new TypeError(`not an IP address: ${ip}`);
  let text = ip.replace(/%.*$/, "");
  // An embedded IPv4 tail (::ffff:192.0.2.1) becomes two hextets.
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4?.[1]) {
    const [a = 0, b = 0, c = 0, d = 0] = v4[1].split(".").map(Number);
    text = `${text.slice(0, -v4[1].length)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head = "", tail] = text.split("::");
  const left = head === "" ? [] : head.split(":");
  const right = tail === undefined || tail === "" ? [] : tail.split(":");
  const zeros = tail === undefined ? [] : Array<string>(8 - left.length - right.length).fill("0");
  const hextets = [...left, ...zeros, ...right];
  const out = Buffer.alloc(16);
  hextets.forEach((h, i) => out.writeUInt16BE(parseInt(h, 16), i * 2));
  return out;
}
