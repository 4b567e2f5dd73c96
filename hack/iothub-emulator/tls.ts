/**
 * A throwaway certificate authority and a serving certificate for the emulator, made with the
 * openssl command line in a temporary directory (Node.js cannot issue X.509 certificates). The
 * serving certificate names `127.0.0.1`, `localhost` and the hub's host name, so clients that
 * trust `ca` verify the server fully; nothing is written outside the directory, which is removed.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

export interface EmulatorPki {
  /** PEM of the CA that signed `cert`: what a client passes as `ca`. */
  readonly ca: string;
  readonly cert: string;
  readonly key: string;
}

export function makePki(hostName: string): EmulatorPki {
  const dir = mkdtempSync(path.join(tmpdir(), "iothub-emulator-"));
  const p = (f: string) => path.join(dir, f);
  const openssl = (args: string[]) => execFileSync("openssl", args, { stdio: ["ignore", "ignore", "pipe"] });
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  try {
    openssl(
      ["req", "-x509", ...ec, "-keyout", p("ca.key"), "-out", p("ca.crt"), "-days", "2"].concat([
        "-subj",
        "/CN=devicelet IoT Hub emulator CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
      ]),
    );
    openssl(["req", ...ec, "-keyout", p("server.key"), "-out", p("server.csr"), "-subj", `/CN=${hostName}`]);
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
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
