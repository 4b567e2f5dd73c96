import { spawnSync } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { certificateRequest, ipAddressBytes } from "./csr.ts";
import { integer, oid, tlv } from "./der.ts";

const dir = mkdtempSync(join(tmpdir(), "devicelet-csr-"));
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/**
 * `openssl req -verify -text` on a PEM request: its text, or a throw when openssl cannot parse it or
 * the self-signature does not verify (openssl 3.0 says so on stderr but still exits 0).
 */
function opensslReq(pem: string): string {
  const file = join(dir, `r${Math.random().toString(16).slice(2)}.pem`);
  writeFileSync(file, pem);
  const run = spawnSync("openssl", ["req", "-noout", "-text", "-verify", "-in", file], { encoding: "utf8" });
  if (run.status !== 0 || !/verify OK/.test(run.stderr)) throw new Error(`openssl req: ${run.stderr}`);
  return run.stdout;
}

describe("certificateRequest", () => {
  const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });

  it("writes a PKCS#10 request that openssl parses and whose self-signature verifies", () => {
    const pem = certificateRequest({
      key: privateKey,
      commonName: "system:node:devicelet-host",
      organization: ["system:nodes"],
      dnsNames: ["devicelet.example"],
      ipAddresses: ["192.0.2.10", "2001:db8::1"],
    });
    expect(pem).toMatch(
      /^-----BEGIN CERTIFICATE REQUEST-----\n[\s\S]+\n-----END CERTIFICATE REQUEST-----\n$/,
    );
    const text = opensslReq(pem);
    // What the kubernetes.io/kubelet-serving signer checks: O exactly system:nodes, the CN prefix,
    // at least one DNS or IP name and no email or URI names.
    expect(text).toContain("Subject: O = system:nodes, CN = system:node:devicelet-host");
    expect(text).toMatch(
      /Subject Alternative Name: *\n *DNS:devicelet\.example, IP Address:192\.0\.2\.10, IP Address:2001:DB8:0:0:0:0:0:1\n/,
    );
    expect(text).toContain("Signature Algorithm: ecdsa-with-SHA256");
    expect(text).toContain("NIST CURVE: P-256");
  });

  it("is refused by openssl when the signature does not match (the check can fail)", () => {
    const pem = certificateRequest({
      key: privateKey,
      commonName: "system:node:x",
      organization: ["system:nodes"],
      dnsNames: [],
      ipAddresses: ["192.0.2.1"],
    });
    const der = Buffer.from(pem.replace(/-----[^-]+-----|\n/g, ""), "base64");
    der[der.length - 3] = (der[der.length - 3] ?? 0) ^ 0xff; // flip signature bits
    const broken = `-----BEGIN CERTIFICATE REQUEST-----\n${der.toString("base64").replace(/.{1,64}/g, "$&\n")}-----END CERTIFICATE REQUEST-----\n`;
    expect(() => opensslReq(broken)).toThrow();
  });

  it("refuses keys that are not EC and text that is not an IP address", () => {
    const { privateKey: rsa } = generateKeyPairSync("rsa", { modulusLength: 1024 });
    const base = { commonName: "system:node:x", organization: ["system:nodes"], dnsNames: [] };
    expect(() => certificateRequest({ ...base, key: rsa, ipAddresses: ["192.0.2.1"] })).toThrow(/EC key/);
    expect(() => certificateRequest({ ...base, key: privateKey, ipAddresses: ["not-an-ip"] })).toThrow(
      /not an IP address/,
    );
  });
});

describe("ipAddressBytes", () => {
  it("writes IPv4 as four bytes and IPv6 as sixteen, compressed forms and IPv4 tails included", () => {
    expect(ipAddressBytes("192.0.2.10").toString("hex")).toBe("c000020a");
    expect(ipAddressBytes("2001:db8::1").toString("hex")).toBe("20010db8000000000000000000000001");
    expect(ipAddressBytes("::").toString("hex")).toBe("0".repeat(32));
    expect(ipAddressBytes("::ffff:192.0.2.1").toString("hex")).toBe("00000000000000000000ffffc0000201");
    expect(ipAddressBytes("fe80::1%eth0").toString("hex")).toBe("fe800000000000000000000000000001");
  });
});

describe("der", () => {
  it("encodes object identifiers, integers and long lengths as X.690 says", () => {
    // rsadsi 1.2.840.113549: the textbook example of multi-byte arcs.
    expect(oid("1.2.840.113549").toString("hex")).toBe("06062a864886f70d");
    expect(oid("2.5.29.17").toString("hex")).toBe("0603551d11");
    expect(integer(0).toString("hex")).toBe("020100");
    expect(integer(128).toString("hex")).toBe("02020080");
    expect(tlv(0x04, Buffer.alloc(200)).subarray(0, 3).toString("hex")).toBe("0481c8");
    expect(tlv(0x04, Buffer.alloc(300)).subarray(0, 4).toString("hex")).toBe("0482012c");
    expect(() => oid("3.1")).toThrow();
  });
});
