/**
 * Certificates for the emulator and for the devices that authenticate to it, made with the openssl
 * command line in a temporary directory (Node.js cannot issue X.509 certificates); nothing is
 * written outside the directory, which is removed.
 *
 * - {@link makePki}: a throwaway CA and a serving certificate naming `127.0.0.1`, `localhost` and
 *   the hub's host name, so clients that trust `ca` verify the server fully.
 * - {@link makeDeviceCertificate}: a device's client certificate (CN = the device id), self-signed
 *   or issued by a CA of {@link makeCertificateAuthority}, with its thumbprints as IoT Hub's
 *   registry takes them: upper-case hex SHA-1 or SHA-256 of the DER certificate.
 *
 *   const ca = makeCertificateAuthority("fleet CA");
 *   const device = makeDeviceCertificate({ deviceId: "dev-1", issuer: ca });
 *   emulator.addDevice("dev-1", { x509: { primaryThumbprint: device.thumbprint } }); // or certificateAuthority
 */
import { execFileSync } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

const EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];

export interface EmulatorPki {
  /** PEM of the CA that signed `cert`: what a client passes as `ca`. */
  readonly ca: string;
  readonly cert: string;
  readonly key: string;
}

export function makePki(hostName: string): EmulatorPki {
  return withOpenssl((p, openssl) => {
    openssl(
      ["req", "-x509", ...EC_KEY, "-keyout", p("ca.key"), "-out", p("ca.crt"), "-days", "2"].concat([
        "-subj",
        "/CN=devicelet IoT Hub emulator CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
      ]),
    );
    openssl([
      "req",
      ...EC_KEY,
      "-keyout",
      p("server.key"),
      "-out",
      p("server.csr"),
      "-subj",
      `/CN=${hostName}`,
    ]);
    writeFileSync(
      p("server.ext"),
      `subjectAltName=DNS:${hostName},DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n`,
    );
    openssl(
      ["x509", "-req", "-in", p("server.csr"), "-CA", p("ca.crt"), "-CAkey", p("ca.key")].concat([
        "-CAcreateserial",
        "-out",
        p("server.crt"),
        "-days",
        "2",
        "-extfile",
        p("server.ext"),
      ]),
    );
    return {
      ca: readFileSync(p("ca.crt"), "utf8"),
      cert: readFileSync(p("server.crt"), "utf8"),
      key: readFileSync(p("server.key"), "utf8"),
    };
  });
}

/** A certificate and its key, PEM. */
export interface CertificateAndKey {
  readonly cert: string;
  readonly key: string;
}

export interface DeviceCertificate extends CertificateAndKey {
  /** SHA-1 of the DER certificate, upper-case hex without separators (what the portal shows). */
  readonly thumbprint: string;
  /** SHA-256 of the DER certificate, the same notation. */
  readonly thumbprint256: string;
}

/** A CA (EC P-256, `basicConstraints CA:TRUE`) that can issue device certificates; valid 2 days. */
export function makeCertificateAuthority(commonName: string): CertificateAndKey {
  return withOpenssl((p, openssl) => {
    openssl(
      ["req", "-x509", ...EC_KEY, "-keyout", p("ca.key"), "-out", p("ca.crt"), "-days", "2"].concat([
        "-subj",
        `/CN=${commonName}`,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
      ]),
    );
    return { cert: readFileSync(p("ca.crt"), "utf8"), key: readFileSync(p("ca.key"), "utf8") };
  });
}

/**
 * A device's client certificate with CN = `deviceId` (EC P-256, `clientAuth`). Self-signed unless
 * `issuer` is given. `days` (default 2) sets how long it is valid from now; a negative number makes
 * one that ended that many days ago (openssl 3.0 has no start date option: its window then runs
 * from now back to the end, and no clock is inside it), which the hub refuses as expired.
 */
export function makeDeviceCertificate(o: {
  deviceId: string;
  issuer?: CertificateAndKey;
  days?: number;
}): DeviceCertificate {
  const days = String(o.days ?? 2);
  return withOpenssl((p, openssl) => {
    writeFileSync(p("device.ext"), "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n");
    openssl([
      "req",
      ...EC_KEY,
      "-keyout",
      p("device.key"),
      "-out",
      p("device.csr"),
      "-subj",
      `/CN=${o.deviceId}`,
    ]);
    let signer = ["-signkey", p("device.key")];
    if (o.issuer !== undefined) {
      writeFileSync(p("issuer.crt"), o.issuer.cert);
      writeFileSync(p("issuer.key"), o.issuer.key);
      signer = ["-CA", p("issuer.crt"), "-CAkey", p("issuer.key"), "-CAcreateserial"];
    }
    openssl(
      ["x509", "-req", "-in", p("device.csr"), ...signer, "-out", p("device.crt"), "-days", days].concat([
        "-extfile",
        p("device.ext"),
      ]),
    );
    const cert = readFileSync(p("device.crt"), "utf8");
    const x509 = new X509Certificate(cert);
    return {
      cert,
      key: readFileSync(p("device.key"), "utf8"),
      thumbprint: x509.fingerprint.replaceAll(":", ""),
      thumbprint256: x509.fingerprint256.replaceAll(":", ""),
    };
  });
}

function withOpenssl<T>(work: (p: (file: string) => string, openssl: (args: string[]) => void) => T): T {
  const dir = mkdtempSync(path.join(tmpdir(), "iothub-emulator-"));
  try {
    return work(
      (file) => path.join(dir, file),
      (args) => {
        execFileSync("openssl", args, { stdio: ["ignore", "ignore", "pipe"] });
      },
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
