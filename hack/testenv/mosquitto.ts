/**
 * Mosquitto for tests: installed from Debian's packages when missing, started on free loopback
 * ports with a generated configuration (a plain and a TLS listener, persistence on), and stopped by
 * its process id. Each test file starts its own broker; restart() keeps the persistence folder so
 * retained messages and sessions survive it, as they would in production.
 *
 *   const broker = await startMosquitto({ dir: ".testenv/mosquitto-abc" });
 *   // broker.url = mqtt://127.0.0.1:PORT, broker.tlsUrl = mqtts://127.0.0.1:PORT, broker.ca = PEM text
 *   await broker.restart(); await broker.stop(); await broker.start();
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import net from "node:net";
import {
  freePort,
  startDaemon,
  stopDaemon,
  waitFor,
  type Daemon,
} from "../../src/testing/controlplane/process.ts";
import { ensurePki } from "../../src/testing/controlplane/pki.ts";

const candidates = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"];

/** Installs one of Debian's packages (`apt-get`, as root), refreshing the package lists once if needed. */
export function installDebianPackage(name: string): void {
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  const install = () =>
    execFileSync("apt-get", ["-o", "DPkg::Lock::Timeout=300", "install", "-y", "-qq", name], {
      stdio: "inherit",
      env,
    });
  try {
    install();
  } catch {
    execFileSync("apt-get", ["update", "-qq"], { stdio: "inherit", env });
    install();
  }
}

/** Path of the mosquitto binary, installing Debian's package first when there is none. */
export function ensureMosquitto(log: (m: string) => void = (m) => console.error(`[mosquitto] ${m}`)): string {
  const found = candidates.find((c) => existsSync(c));
  if (found) return found;
  log("mosquitto is missing; installing it from Debian's packages (apt-get)");
  installDebianPackage("mosquitto");
  const installed = candidates.find((c) => existsSync(c));
  if (!installed) throw new Error("mosquitto is still missing after apt-get install mosquitto");
  return installed;
}

export interface Broker {
  readonly url: string;
  readonly tlsUrl: string;
  /** CA certificate (PEM) that signed the TLS listener's certificate. */
  readonly ca: string;
  readonly port: number;
  readonly tlsPort: number;
  /** The broker's process id while it runs (0 when stopped). */
  pid(): number;
  /** Stops the process (SIGTERM, as a service manager would); retained messages are saved. */
  stop(): Promise<void>;
  /** After stop(): starts again on the same ports with the same persistence folder. No-op while running. */
  start(): Promise<void>;
  /** Stops and starts again on the same ports with the same persistence folder. */
  restart(): Promise<void>;
}

export async function startMosquitto(options: {
  dir: string;
  pkiDir?: string;
  /** `max_packet_size`: the broker refuses (and disconnects the sender of) larger packets. */
  maxPacketSize?: number;
  /** How long each listener may take to take connections; default 15 s. */
  readyTimeoutMs?: number;
}): Promise<Broker> {
  const binary = ensureMosquitto();
  const dir = path.resolve(options.dir);
  mkdirSync(path.join(dir, "data"), { recursive: true });
  const pki = ensurePki(options.pkiDir ?? path.join(dir, "pki"), []);
  const [port, tlsPort] = [await freePort(), await freePort()];
  const conf = path.join(dir, "mosquitto.conf");
  writeFileSync(
    conf,
    [
      // As root, mosquitto drops to the `mosquitto` user, which cannot read our key or write our
      // persistence folder; this broker is ours alone and listens on loopback only.
      ...(process.getuid?.() === 0 ? ["user root"] : []),
      "per_listener_settings false",
      "allow_anonymous true",
      "persistence true",
      `persistence_location ${path.join(dir, "data")}/`,
      "autosave_interval 1",
      "max_queued_messages 10000",
      ...(options.maxPacketSize === undefined ? [] : [`max_packet_size ${options.maxPacketSize}`]),
      "log_dest stdout",
      "log_type error",
      "log_type warning",
      `listener ${port} 127.0.0.1`,
      `listener ${tlsPort} 127.0.0.1`,
      `cafile ${pki.caCert}`,
      `certfile ${pki.cert("broker").cert}`,
      `keyfile ${pki.cert("broker").key}`,
      "",
    ].join("\n"),
  );
  const logFile = path.join(dir, "mosquitto.log");
  let daemon: Daemon | undefined;
  const readyMs = options.readyTimeoutMs ?? 15_000;
  const stop = async () => {
    if (daemon) await stopDaemon(daemon);
    daemon = undefined;
  };
  const start = async () => {
    daemon = startDaemon("mosquitto", binary, ["-c", conf], logFile);
    try {
      await waitFor(`mosquitto on ${port}`, () => canConnect(port), readyMs, logFile);
      await waitFor(`mosquitto TLS on ${tlsPort}`, () => canConnect(tlsPort), readyMs, logFile);
    } catch (err) {
      // Nobody holds a broker that failed to start: stop it here, or it outlives the test run.
      await stop();
      throw err;
    }
  };
  await start();
  return {
    url: `mqtt://127.0.0.1:${port}`,
    tlsUrl: `mqtts://127.0.0.1:${tlsPort}`,
    ca: readFileSync(pki.caCert, "utf8"),
    port,
    tlsPort,
    pid: () => daemon?.pid ?? 0,
    stop,
    start: async () => {
      if (!daemon) await start();
    },
    restart: async () => {
      await stop();
      await start();
    },
  };
}

/** Whether something accepts TCP connections on the loopback port (a broker that is up). */
export function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: "127.0.0.1" });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}
