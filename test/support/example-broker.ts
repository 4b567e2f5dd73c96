/**
 * Mosquitto started with exactly the configuration shipped in examples/mosquitto/ (mosquitto.conf,
 * acl, monitor.acl), copied to a temporary folder with only the certificate and data paths and the
 * ports substituted (each substitution must match, so a changed example fails loudly here). The
 * harness PKI issues the broker's certificate and one client certificate per identity, CN = the
 * identity (`_devicelet` for devicelet, the device id for a device).
 *
 *   const broker = await startExampleBroker("acl", { identities: ["_devicelet", "dev-a"] });
 *   broker.tlsUrl;               // mqtts://127.0.0.1:PORT (mutual TLS; the ACL of examples/mosquitto/acl)
 *   broker.url;                  // mqtt://127.0.0.1:PORT (the plain listener; monitor.acl)
 *   broker.identity("dev-a");    // { cert, key } files
 *   await broker.stop();
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { canConnect, ensureMosquitto } from "../../hack/testenv/mosquitto.ts";
import { ensurePki } from "../../src/testing/controlplane/pki.ts";
import { freePort, startDaemon, stopDaemon, waitFor } from "../../src/testing/controlplane/process.ts";

const exampleDir = path.resolve(import.meta.dirname, "../../examples/mosquitto");

/** The folder the example's paths name. */
const EXAMPLE_ETC = "/etc/mosquitto/devicelet/";
const EXAMPLE_DATA = "/var/lib/mosquitto/";

export interface ExampleBroker {
  /** The mutual-TLS listener. */
  readonly tlsUrl: string;
  /** The plain loopback listener (examples/mosquitto/monitor.acl); log in as {@link monitor}. */
  readonly url: string;
  readonly caFile: string;
  readonly monitor: { readonly username: string; readonly password: string };
  /** Certificate and key files of an identity given to startExampleBroker. */
  identity(name: string): { readonly cert: string; readonly key: string };
  readonly logFile: string;
  stop(): Promise<void>;
}

/** Replaces `from` with `to` in `text`, and throws when `from` is not there. */
const substitute = (text: string, from: string, to: string, file: string): string => {
  if (!text.includes(from))
    throw new Error(`examples/mosquitto/${file} no longer contains ${JSON.stringify(from)}`);
  return text.replaceAll(from, to);
};

export async function startExampleBroker(
  name: string,
  options: { readonly identities: readonly string[] },
): Promise<ExampleBroker> {
  const dir = mkdtempSync(path.join(os.tmpdir(), `devicelet-example-mosquitto-${name}-`));
  mkdirSync(path.join(dir, "data"));
  // The PKI in the configuration folder itself: ca.crt, broker.crt, broker.key where the example expects them.
  const pki = ensurePki(
    dir,
    options.identities.map((id) => ({ stem: id, commonName: id })),
  );
  const [port, tlsPort] = [await freePort(), await freePort()];
  let conf = readFileSync(path.join(exampleDir, "mosquitto.conf"), "utf8");
  conf = substitute(conf, "listener 1883 127.0.0.1", `listener ${port} 127.0.0.1`, "mosquitto.conf");
  conf = substitute(conf, "listener 8883\n", `listener ${tlsPort} 127.0.0.1\n`, "mosquitto.conf");
  conf = substitute(conf, EXAMPLE_ETC, `${dir}/`, "mosquitto.conf");
  conf = substitute(conf, EXAMPLE_DATA, `${path.join(dir, "data")}/`, "mosquitto.conf");
  // As root, mosquitto would drop to the `mosquitto` user, which cannot read these files.
  const header = [...(process.getuid?.() === 0 ? ["user root"] : []), "log_dest stdout", ""];
  writeFileSync(path.join(dir, "mosquitto.conf"), header.join("\n") + conf);
  for (const file of ["acl", "monitor.acl"])
    writeFileSync(path.join(dir, file), readFileSync(path.join(exampleDir, file), "utf8"));
  const monitor = { username: "monitor", password: `monitor-${process.pid}` };
  execFileSync(
    "mosquitto_passwd",
    ["-b", "-c", path.join(dir, "monitor.passwd"), monitor.username, monitor.password],
    {
      stdio: ["ignore", "ignore", "pipe"],
    },
  );
  const logFile = path.join(dir, "mosquitto.log");
  const daemon = startDaemon(
    "mosquitto",
    ensureMosquitto(),
    ["-c", path.join(dir, "mosquitto.conf")],
    logFile,
  );
  try {
    await waitFor(`mosquitto on ${port}`, () => canConnect(port), 15_000, logFile);
    await waitFor(`mosquitto TLS on ${tlsPort}`, () => canConnect(tlsPort), 15_000, logFile);
  } catch (err) {
    await stopDaemon(daemon);
    throw err;
  }
  return {
    tlsUrl: `mqtts://127.0.0.1:${tlsPort}`,
    url: `mqtt://127.0.0.1:${port}`,
    caFile: pki.caCert,
    monitor,
    identity: (id) => {
      if (!options.identities.includes(id)) throw new Error(`no certificate for ${id}`);
      return pki.cert(id);
    },
    logFile,
    stop: () => stopDaemon(daemon),
  };
}
